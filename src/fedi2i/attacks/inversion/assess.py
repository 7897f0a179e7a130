"""Judge one attack: recovered anatomy with its interval, the objective gap, and the budget curve.

The evaluation step of a cell (it reads true images; the attack has returned). Reconstructions are matched to
the true batch by the Hungarian algorithm on whole-slice SSIM (``matching.score``, the study's numbers), then

* each matched pair is scored inside the head mask against the other-patient reference (``anatomy.py``):
  margins with a 95 % interval clustered by patient, and the re-identification rank;
* the true batch and the reconstruction are put through the same exact replay and compared with the
  observed update (``gap.py``): a large gap means the search stopped short;
* the snapshots the attack kept at budget checkpoints are scored the same way (point margins and update
  distance), so the report can tell whether the attack was still improving when it stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fedi2i.attacks.inversion.anatomy import MODALITIES, Candidates, ItemScores, score_item, summarise_items
from fedi2i.attacks.inversion.base import CT_BOX, Reconstruction, Snapshot
from fedi2i.attacks.inversion.gap import ObjectiveGap, UpdateDistance
from fedi2i.attacks.inversion.i2i import pyramid
from fedi2i.attacks.inversion.matching import score
from fedi2i.attacks.inversion.observation import Observation
from fedi2i.attacks.inversion.settings import InversionSettings
from fedi2i.data.slices import SliceSet

CHECKPOINT_FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2)  # of the planned iterations; the end is the final result
IMPROVING = 0.10  # the update distance fell by at least this fraction over the last half of the budget


def planned_iterations(method: str, settings: InversionSettings, image_size: int) -> int:
    """Iterations a run of ``method`` will make with ``settings`` (every restart)."""
    if method == "dlg":
        return settings.dlg.iterations
    if method == "ig":
        return settings.ig.iterations * settings.ig.restarts
    s = settings.i2i
    return (len(pyramid(image_size, s.levels)) * s.level_iterations + s.iterations) * s.restarts


def checkpoints(total: int) -> list[int]:
    """Iterations at which the budget curve reads the attack (before the end, which is the final result)."""
    return sorted({max(1, round(total * f)) for f in CHECKPOINT_FRACTIONS if round(total * f) < total})


def _rows(cands: Candidates, batch: SliceSet) -> list[int]:
    """Candidate row of each true slice (by patient and slice index)."""
    where = {(p, int(z)): i for i, (p, z) in enumerate(zip(cands.patient, cands.slice_index))}
    try:
        return [where[(p, int(z))] for p, z in zip(batch.patient, batch.slice_index)]
    except KeyError as exc:
        raise ValueError(f"true slice {exc} is not among the centre's slices") from None


def score_pairs(cands: Candidates, rows: Sequence[int], mr: torch.Tensor, ct: torch.Tensor,
                pairs: Sequence[tuple[int, int]], mr_box: tuple[float, float]) -> list[ItemScores]:
    """Score reconstruction ``j`` against true item ``i`` for every matched pair ``(i, j)``."""
    mr_np = mr[:, 0].double().clamp(*mr_box).numpy()
    ct_np = ct[:, 0].double().clamp(*CT_BOX).numpy()
    return [score_item(cands, rows[i], mr_np[j], ct_np[j], mr_box) for i, j in pairs]


def _point_margin(items: Sequence[ItemScores]) -> dict[str, float]:
    out = {m: float(np.mean([it.margin(m, "ssim") for it in items])) for m in MODALITIES}
    out["best"] = max(out[m] for m in MODALITIES)
    return out


def budget_curve(snapshots: Sequence[Snapshot], final: Reconstruction, cands: Candidates, rows: Sequence[int],
                 pairs: Sequence[tuple[int, int]], distance: UpdateDistance | None, mr_box: tuple[float, float],
                 final_items: Sequence[ItemScores], final_distance: float | None) -> dict[str, Any]:
    """In-mask SSIM margin (best modality, points) and update distance at each checkpoint, then at the end.

    Matched pairs are the final ones (an attack's images keep their slot while it runs). ``still_improving``:
    the update distance fell by ``IMPROVING`` or more over the last half of the iterations.
    """
    points = []
    for snap in sorted(snapshots, key=lambda s: s.iteration):
        items = score_pairs(cands, rows, snap.mr, snap.ct, pairs, mr_box)
        points.append({"iteration": snap.iteration, "seconds": snap.seconds, **_point_margin(items),
                       "distance": distance(snap.mr.clamp(*mr_box), snap.ct.clamp(*CT_BOX)) if distance else None})
    points.append({"iteration": final.iterations, "seconds": final.seconds, **_point_margin(final_items),
                   "distance": final_distance})
    half = [p for p in points if p["iteration"] <= final.iterations / 2]
    improving = None
    if half and half[-1]["distance"] is not None and final_distance is not None:
        improving = final_distance <= (1 - IMPROVING) * half[-1]["distance"]
    return {"points": points, "still_improving": improving, "improving_threshold": IMPROVING}


def assess(obs: Observation, recon: Reconstruction, batch: SliceSet, centre: SliceSet,
           update_batch: tuple[torch.Tensor, torch.Tensor] | None, settings: InversionSettings,
           seed: int = 0) -> dict[str, Any]:
    """Everything the audit reports about one attack on one update.

    ``batch``: the target client's true slices (the ones scored); ``centre``: that centre's training slices
    (where the references and the re-identification candidates come from); ``update_batch``: every true
    image behind the update in client order (MRI, CT), for the objective gap (None where unknown, e.g. an
    ordinary run where the batches were not recorded).
    """
    box = settings.mr_box
    raw = score(batch.mr, batch.ct, recon.mr, recon.ct)
    pairs = list(zip(raw["truth_index"], raw["assignment"]))
    cands = Candidates.from_slices(centre)
    rows = _rows(cands, batch)
    items = score_pairs(cands, rows, recon.mr, recon.ct, pairs, box)
    anatomy = summarise_items(items, seed=seed)
    distance = UpdateDistance(obs) if update_batch is not None else None
    gap = None
    if distance is not None and update_batch is not None:
        gap = ObjectiveGap(distance(recon.mr, recon.ct), distance(*update_batch))
    curve = budget_curve(recon.snapshots, recon, cands, rows, pairs, distance, box, items,
                         gap.reconstruction if gap else None)
    return {"raw": raw, "anatomy": anatomy, "objective_gap": gap.as_dict() if gap else None, "budget_curve": curve}
