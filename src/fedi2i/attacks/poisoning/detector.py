"""Server-side monitor that scores every centre's update each round and flags persistent outliers.

It only watches (a ``RoundMonitor`` of :class:`fedi2i.fl.server.Aggregator`): aggregation is untouched,
so it can run beside any rule, FedAvg included, without breaking the federation.

Per round, for every update ``d_k`` and the coordinate-wise median ``m`` of all updates, three features,
all on a log scale so that they are relative (the updates shrink over rounds): ``log |d_k|`` (size),
``log |d_k - m|`` (distance to the robust centre) and ``log(1 - cos(d_k, m))`` (angle to it).
Each feature is turned into a robust z-score across the round's centres, ``(x - median) / (1.4826 MAD)``,
so a centre is compared with the spread the honest centres themselves show (scanner differences included).
The MAD is floored (``scale_floor``, in log units: 0.25 means differences below a factor exp(3 * 0.25) = 2.1
are never flagged at z = 3) because with four centres it can be near zero by chance, which would turn
ordinary differences into huge z-scores. Every z counts one way only: larger, further, less aligned
(a smaller update weighs less in any mean and cannot drag the model far). The round score is the
largest of the three; the running score is their exponentially weighted mean over the rounds so far
(bias-corrected, so round 0 counts fully and later rounds weigh more), so one odd round among many is
not enough. A centre is flagged while its running score exceeds ``threshold``.

Only the trained weights are scored by default: BatchNorm running statistics in an update record the
centre's own image statistics, i.e. exactly the scanner differences that must not be flagged, and late
in training (small learning rate) they dominate the update and made an honest centre look like an
outlier on the realistic heads.

Like the median, it needs an honest majority: when half the centres are malicious and their updates look
alike (same kind of corrupted data), nothing in the geometry of the updates tells which half is honest.

This is the standard robust-statistics recipe written out by hand, since it runs inside the round on
torch vectors and needs per-round state; scikit-learn is used for the ROC in summary.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedi2i.attacks.poisoning.settings import DetectorSettings
from fedi2i.fl.client import ClientUpdate
from fedi2i.fl.params import ParamSpec
from fedi2i.fl.strategies import FedMedian

FEATURES = ("size", "dist", "angle")
MAD_TO_STD = 1.4826  # MAD of a normal distribution times this is its standard deviation


def update_features(deltas: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """log size, log distance to the coordinate-wise median and log(1 - cosine) to it, per centre."""
    ids = sorted(deltas)
    x = torch.stack([deltas[c].float() for c in ids])
    med = FedMedian().aggregate(x, torch.ones(len(ids))) if len(ids) >= 3 else x.mean(0)
    norms = x.norm(dim=1).clamp_min(1e-12)
    dists = (x - med).norm(dim=1).clamp_min(1e-12)
    cos = F.cosine_similarity(x, med.unsqueeze(0).expand_as(x), dim=1, eps=1e-12)
    return {c: {"size": math.log(float(norms[i])), "dist": math.log(float(dists[i])),
                "angle": math.log(max(1.0 - float(cos[i]), 0.0) + 1e-6), "cos": float(cos[i])}
            for i, c in enumerate(ids)}


def weight_mask(model: torch.nn.Module) -> torch.Tensor:
    """Entries of the flat update vector that are trainable weights (not BatchNorm running statistics)."""
    spec = ParamSpec.from_module(model)
    trainable = {name for name, _ in model.named_parameters()}
    return torch.cat([torch.full((size,), name in trainable, dtype=torch.bool)
                      for name, size in zip(spec.names, spec.sizes)])


def robust_z(values: dict[str, float], floor: float) -> dict[str, float]:
    """(x - median) / max(1.4826 * MAD, floor) across centres."""
    x = np.array([values[c] for c in sorted(values)], dtype=np.float64)
    med = float(np.median(x))
    scale = max(MAD_TO_STD * float(np.median(np.abs(x - med))), floor)
    return {c: (values[c] - med) / scale for c in sorted(values)}


def round_scores(features: dict[str, dict[str, float]], floor: float) -> dict[str, dict[str, float]]:
    """Per centre: the z-score of each feature (larger is more suspicious) and their maximum."""
    z = {f: robust_z({c: features[c][f] for c in features}, floor) for f in FEATURES}
    return {c: {**{f"z_{f}": z[f][c] for f in FEATURES}, "score": max(z[f][c] for f in FEATURES)}
            for c in features}


@dataclass
class UpdateDetector:
    """The monitor: call it with ``(round, global_vector, {cid: ClientUpdate})`` every round."""

    settings: DetectorSettings = field(default_factory=DetectorSettings)
    include: torch.Tensor | None = None  # boolean mask of the update entries to score (None: all)
    running: dict[str, float] = field(default_factory=dict)
    _ewma: dict[str, float] = field(default_factory=dict)
    _weight: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, round_index: int, global_vector: torch.Tensor, updates: dict[str, ClientUpdate]) -> None:
        if len(updates) < 3:  # no majority to compare against: nothing to say this round
            self.history.append({"round": round_index, "skipped": f"{len(updates)} update(s)"})
            return
        mask = self.include
        features = update_features({c: u.delta if mask is None else u.delta[mask] for c, u in updates.items()})
        scores = round_scores(features, self.settings.scale_floor)
        a = self.settings.alpha
        for c, s in scores.items():
            self._ewma[c] = (1 - a) * self._ewma.get(c, 0.0) + a * s["score"]
            self._weight[c] = (1 - a) * self._weight.get(c, 0.0) + a
            self.running[c] = self._ewma[c] / self._weight[c]
        self.history.append({
            "round": round_index,
            "clients": {c: {**features[c], **scores[c], "running": self.running[c],
                            "flagged": self.running[c] > self.settings.threshold} for c in sorted(scores)}})

    def flagged(self) -> list[str]:
        """Centres whose running score is above the threshold now."""
        return sorted(c for c, s in self.running.items() if s > self.settings.threshold)

    def running_series(self) -> dict[str, list[float]]:
        """Running score of each centre after every scored round (for ROC over rounds and figures)."""
        series: dict[str, list[float]] = {}
        for entry in self.history:
            for c, v in entry.get("clients", {}).items():
                series.setdefault(c, []).append(v["running"])
        return series

    def summary(self) -> dict[str, Any]:
        """Final verdicts: flagged centres, first round each was flagged, running scores per round."""
        first: dict[str, int | None] = {c: None for c in self.running}
        for entry in self.history:
            for c, v in entry.get("clients", {}).items():
                if v["flagged"] and first[c] is None:
                    first[c] = entry["round"]
        return {"flagged": self.flagged(), "first_flag_round": first,
                "final_score": dict(sorted(self.running.items())), "running": self.running_series(),
                "rounds": [e["round"] for e in self.history if "clients" in e],
                "threshold": self.settings.threshold}
