"""95 % intervals, and study statuses read from them: a status is a claim about a population, so it is
only stated when the interval lies on one side of the study's figure (DESIGN.md section 9).

Where the intervals come from:

- AUCs over patients: the membership attack already computes a patient-clustered bootstrap
  (``fedi2i.attacks.membership.evaluation.bootstrap_auc``) and stores it as ``*_ci95`` in its cell;
  ``Interval.from_ci`` reads it back, nothing is resampled twice.
- Effects of training noise (poisoning against clean runs): ``paired_ratio_interval`` over runs paired by
  seed, of the same length, with at least ``MIN_SEEDS`` seeds; ``mean_interval`` for a number measured once
  per seed (the detector's margin).
- Paired effects over patients (SecAgg against plain FedAvg on the same unseen patients):
  ``paired_ratio_by_key``.

Why t-intervals and not the bootstrap for seeds: with 3 seeds a percentile bootstrap has 10 distinct
resamples and its interval is about the range of the 3 per-seed values, which holds the population's centre
only about 75 % of the time (3 draws all on one side of the median happen 2 x 1/8 of the time). The t-interval
with n - 1 degrees of freedom (t = 4.30 for 3 seeds) is the small-sample interval that keeps 95 % coverage
when the per-seed values are roughly normal; ratios of MAEs are taken on the log scale, where run-to-run
noise is multiplicative and close to normal, so the interval of a ratio is never below zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

Status = Literal["reproduced", "not reproduced", "exceeded", "inconclusive"]
MIN_SEEDS = 3


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
        """"0.68 [95% CI 0.63-0.73]"; with a negative end "-0.37 [95% CI -0.47 to -0.27]" (no "--")."""
        sep = " to " if min(self.low, self.high) < 0 else "-"
        return f"{self.point:.{digits}f} [95% CI {self.low:.{digits}f}{sep}{self.high:.{digits}f}]"


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


def any_status(statuses: Iterable[Status]) -> Status:
    """One status for a claim that some part makes ("some attack makes FedAvg inoperative").

    Any part clearly for it proves it; otherwise any undecided part leaves it "inconclusive"; only every
    part clearly against it refutes it ("not reproduced").
    """
    parts = list(statuses)
    if not parts:
        raise ValueError("no status to combine")
    if "exceeded" in parts or "reproduced" in parts:
        return "exceeded" if all(p == "exceeded" for p in parts) else "reproduced"
    return "inconclusive" if "inconclusive" in parts else "not reproduced"


def t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95 % Student-t interval of the mean of ``values`` (at least 2, all finite)."""
    x = np.asarray(values, dtype=float)
    if x.size < 2 or not np.isfinite(x).all():
        raise ValueError(f"a t-interval needs at least 2 finite values, got {x.tolist()}")
    mean = float(x.mean())
    half = float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def mean_interval(values: Sequence[float | None], *, min_n: int = MIN_SEEDS) -> Interval | None:
    """Mean of a number measured once per seed, with its 95 % t-interval; None with fewer than ``min_n``
    finite values (a seed whose number is missing or not finite tells nothing and is left out)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if len(finite) < max(min_n, 2):
        return None
    return Interval(*t_interval(finite))


def log_ratio_interval(base: Sequence[float], other: Sequence[float]) -> Interval:
    """Geometric-mean ratio ``other / base`` over pairs, with the 95 % t-interval of the mean log-ratio.

    ``base`` must be finite and positive. An ``other`` of ``inf`` (a collapsed run) is a ratio no finite
    figure reaches: all of them collapsed reads ``inf [inf, inf]``; some of them gives the upper end ``inf``
    and a lower end from the pairs that did not collapse (a collapse can only raise the centre), or 0 when
    fewer than 2 remain (unknown).
    """
    b = np.asarray(base, dtype=float)
    o = np.asarray(other, dtype=float)
    if b.shape != o.shape or b.size < 2:
        raise ValueError(f"need at least 2 pairs of equal length, got {b.size} and {o.size}")
    if not (np.isfinite(b).all() and (b > 0).all()):
        raise ValueError(f"reference values must be finite and positive, got {b.tolist()}")
    if np.isnan(o).any() or (o <= 0).any():
        raise ValueError(f"compared values must be positive (inf for a collapsed run), got {o.tolist()}")
    collapsed = ~np.isfinite(o)
    logs = np.log(o[~collapsed] / b[~collapsed])
    if collapsed.all():
        return Interval(math.inf, math.inf, math.inf)
    if collapsed.any():
        low = math.exp(t_interval(logs)[1]) if logs.size >= 2 else 0.0
        return Interval(math.inf, low, math.inf)
    mean, low, high = t_interval(logs)
    return Interval(math.exp(mean), math.exp(low), math.exp(high))


@dataclass(frozen=True)
class SeededRun:
    """One training run's deciding number (e.g. unseen-centre MAE; ``inf`` if the run collapsed), with the
    seed and length it ran with."""

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
                          min_seeds: int = MIN_SEEDS) -> Interval:
    """Ratio attacked / clean over runs paired by seed, with its 95 % interval (``log_ratio_interval``).

    Runs are matched by seed, not by position: the clean and attacked runs of a seed share their
    initialisation and data order, so their ratio cancels that part of training noise, and the interval is
    the spread of the per-seed ratios, not of the runs themselves. Every run must have the same number of
    rounds (a longer run is a different experiment), and both arms the same seeds, at least ``min_seeds``.
    """
    c, a = _by_seed(clean, "clean"), _by_seed(attacked, "attacked")
    if set(c) != set(a):
        raise ValueError(f"clean and attacked runs do not pair by seed: clean only {sorted(set(c) - set(a))}, "
                         f"attacked only {sorted(set(a) - set(c))}; run both arms with the same seeds")
    if len(c) < max(min_seeds, 2):
        raise ValueError(f"{len(c)} paired seeds, at least {max(min_seeds, 2)} are needed for an interval")
    lengths = {r.rounds for r in (*clean, *attacked)}
    if len(lengths) > 1:
        raise ValueError(f"runs differ in length ({sorted(lengths)} rounds); pair runs of the same length")
    seeds = sorted(c)
    return log_ratio_interval([c[s].value for s in seeds], [a[s].value for s in seeds])


def paired_ratio_by_key(base: Mapping[str, float], other: Mapping[str, float], *, min_n: int = MIN_SEEDS
                        ) -> Interval | None:
    """Ratio ``other / base`` over the keys both hold (e.g. the same unseen patients scored by two models),
    paired by key, with its 95 % interval; None with fewer than ``min_n`` shared keys with finite values."""
    keys = sorted(k for k in set(base) & set(other)
                  if all(v is not None and math.isfinite(v) and v > 0 for v in (base[k], other[k])))
    if len(keys) < max(min_n, 2):
        return None
    return log_ratio_interval([base[k] for k in keys], [other[k] for k in keys])
