"""95 % intervals, and study statuses read from them: a status is a claim about a population, so it is
only stated when the interval lies on one side of the study's figure (DESIGN.md section 9).

Two sources of intervals:

- AUCs over patients: the membership attack already computes a patient-clustered bootstrap
  (``fedi2i.attacks.membership.evaluation.bootstrap_auc``) and stores it as ``*_ci95`` in its cell;
  ``Interval.from_ci`` reads it back, nothing is resampled twice.
- Effects of training noise (poisoning against clean runs): ``paired_ratio_interval`` over runs paired by
  seed, of the same length, with at least ``MIN_SEEDS`` seeds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Status = Literal["reproduced", "not reproduced", "exceeded", "inconclusive"]
MIN_SEEDS = 3
N_BOOT = 2000


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95 % interval ``[low, high]``."""

    point: float
    low: float
    high: float

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ValueError(f"interval low {self.low} is above its high {self.high}")

    @classmethod
    def from_ci(cls, point: float | None, ci: Sequence[float] | None) -> "Interval | None":
        """A stored ``(value, [low, high])`` pair; None when either is missing (bootstrap turned off)."""
        if point is None or not ci or len(ci) != 2 or any(v is None for v in ci):
            return None
        return cls(float(point), float(ci[0]), float(ci[1]))

    def text(self, digits: int = 2) -> str:
        return f"{self.point:.{digits}f} [95% CI {self.low:.{digits}f}-{self.high:.{digits}f}]"


def status_from_interval(interval: Interval, study_low: float, study_high: float, *,
                         below: Status = "not reproduced", above: Status = "exceeded") -> Status:
    """Where the interval lies against the study's figure ``[study_low, study_high]``.

    Entirely inside it: "reproduced"; entirely below: ``below``; entirely above: ``above``; touching
    both sides of a bound: "inconclusive", since the data cannot tell which side the population is on.
    A one-sided figure ("SSIM <= 0.16") is ``study_low = -inf``. ``below``/``above`` name the sides for a
    finding where a lower number is the stronger claim (e.g. "SecAgg brings AUC to chance").
    """
    if study_low > study_high:
        raise ValueError(f"study figure low {study_low} is above its high {study_high}")
    if interval.high < study_low:
        return below
    if interval.low > study_high:
        return above
    if study_low <= interval.low and interval.high <= study_high:
        return "reproduced"
    return "inconclusive"


def joint_status(statuses: Iterable[Status]) -> Status:
    """One status for a claim that must hold in every part (every centre, every attack).

    Any part clearly against it refutes it ("not reproduced"); otherwise any undecided part leaves it
    "inconclusive"; "exceeded" needs every part exceeded; the rest is "reproduced".
    """
    parts = list(statuses)
    if not parts:
        raise ValueError("no status to combine")
    if "not reproduced" in parts:
        return "not reproduced"
    if "inconclusive" in parts:
        return "inconclusive"
    return "exceeded" if all(p == "exceeded" for p in parts) else "reproduced"


@dataclass(frozen=True)
class SeededRun:
    """One training run's deciding number (e.g. unseen-centre MAE), with the seed and length it ran with."""

    seed: int
    rounds: int
    value: float


def _by_seed(runs: Sequence[SeededRun], arm: str) -> dict[int, SeededRun]:
    out: dict[int, SeededRun] = {}
    for run in runs:
        if run.seed in out:
            raise ValueError(f"{arm} runs: seed {run.seed} appears twice; give one run per seed")
        out[run.seed] = run
    return out


def paired_ratio_interval(clean: Sequence[SeededRun], attacked: Sequence[SeededRun], *,
                          n_boot: int = N_BOOT, seed: int = 0, min_seeds: int = MIN_SEEDS) -> Interval:
    """Ratio of mean attacked to mean clean value, with a 95 % bootstrap interval over paired seeds.

    Runs are matched by seed, not by position, so the clean and attacked runs of a seed share their
    initialisation and data order, and their ratio cancels that part of training noise. A resample draws
    whole pairs. Every run must have the same number of rounds: a longer run is a different experiment.
    A collapsed run counts as ``inf``; the interval is then read from order statistics, never interpolated.
    With few seeds the interval is coarse (3 seeds give 10 distinct resamples) but honest.
    """
    c, a = _by_seed(clean, "clean"), _by_seed(attacked, "attacked")
    if set(c) != set(a):
        raise ValueError(f"clean and attacked runs do not pair by seed: clean only {sorted(set(c) - set(a))}, "
                         f"attacked only {sorted(set(a) - set(c))}; run both arms with the same seeds")
    if len(c) < min_seeds:
        raise ValueError(f"{len(c)} paired seeds, at least {min_seeds} are needed for an interval")
    lengths = {r.rounds for r in (*clean, *attacked)}
    if len(lengths) > 1:
        raise ValueError(f"runs differ in length ({sorted(lengths)} rounds); pair runs of the same length")
    seeds = sorted(c)
    base = np.array([c[s].value for s in seeds], dtype=float)
    hit = np.array([a[s].value for s in seeds], dtype=float)
    if not (np.isfinite(base).all() and (base > 0).all()):
        raise ValueError(f"clean values must be finite and positive, got {base.tolist()}")
    if np.isnan(hit).any():
        raise ValueError("an attacked value is NaN; count a collapsed run as inf")
    rng = np.random.default_rng([seed, 2654435761])
    pick = rng.integers(0, len(seeds), size=(n_boot, len(seeds)))
    ratios = hit[pick].mean(1) / base[pick].mean(1)
    low, high = np.quantile(ratios, [0.025, 0.975], method="inverted_cdf")
    point = float(hit.mean() / base.mean())
    return Interval(point, float(low), float(high) if math.isfinite(high) else math.inf)
