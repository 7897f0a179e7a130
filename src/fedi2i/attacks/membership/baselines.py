"""Baseline membership scores: they use the target's own models only (no reference centres).
Every score is "higher = more likely a member".

- ``loss``: loss threshold (Yeom et al. 2018) on the target's model at its last recorded round.
- ``loss-global``: loss threshold on the final global model; the same score for every centre.
- ``loss-series``: the log-loss averaged over the recorded rounds (the loss trajectory, reduced to its mean).
- ``grad-norm``: per-sample gradient norm on the target's last model; a fitted slice has a small gradient.
- ``grad-cosine``: cosine of the slice's descent direction with the target's update, averaged over rounds.
- ``grad-diff``: how much the target's local training lowered the slice's log-loss, averaged over rounds.

Under secure aggregation the "target's model/update" is the aggregate, which every centre shares.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedi2i.attacks.membership.collect import Signals
from fedi2i.attacks.membership.settings import MembershipSettings, SignalUnavailable

def phi(loss: np.ndarray, log: bool) -> np.ndarray:
    """Member-likeness of a loss: -log(loss) (closer to Gaussian for an L1/MSE regression) or -loss."""
    return -np.log(np.maximum(loss, 1e-12)) if log else -loss


def need(array: np.ndarray | None, what: str) -> np.ndarray:
    if array is None:
        raise SignalUnavailable(f"the {what} signal was not collected")
    return array


def _mean_over_rounds(rows: np.ndarray, what: str) -> np.ndarray:
    present = np.isfinite(rows).all(axis=1)
    if not present.any():
        raise SignalUnavailable(f"the target took part in none of the rounds used ({what})")
    return rows[present].mean(axis=0)


def _last_round(rows: np.ndarray) -> np.ndarray:
    present = np.where(np.isfinite(rows).all(axis=1))[0]
    if not len(present):
        raise SignalUnavailable("the target took part in none of the rounds used")
    return rows[present[-1]]


Scorer = Callable[[Signals, int, np.ndarray, MembershipSettings], np.ndarray]


def score_loss(sig: Signals, k: int, evaluated: np.ndarray, s: MembershipSettings) -> np.ndarray:
    return phi(_last_round(need(sig.loss_target, "loss")[:, k]), s.log_loss)


def score_loss_global(sig: Signals, k: int, evaluated: np.ndarray, s: MembershipSettings) -> np.ndarray:
    return phi(need(sig.loss_final, "final-model loss"), s.log_loss)


def score_loss_series(sig: Signals, k: int, evaluated: np.ndarray, s: MembershipSettings) -> np.ndarray:
    return _mean_over_rounds(phi(need(sig.loss_target, "loss")[:, k], s.log_loss), "loss series")


def score_grad_norm(sig: Signals, k: int, evaluated: np.ndarray, s: MembershipSettings) -> np.ndarray:
    norms = need(sig.gradnorm_target, "gradient norm")[k]
    if not np.isfinite(norms).all():
        raise SignalUnavailable("the target took part in none of the rounds used (gradient norm)")
    return -norms


def score_grad_cosine(sig: Signals, k: int, evaluated: np.ndarray, s: MembershipSettings) -> np.ndarray:
    return _mean_over_rounds(need(sig.cos_target, "gradient")[:, k], "gradient cosine")


def score_grad_diff(sig: Signals, k: int, evaluated: np.ndarray, s: MembershipSettings) -> np.ndarray:
    before = phi(need(sig.loss_global, "global-model loss"), True)  # [R, N]
    after = phi(need(sig.loss_target, "loss")[:, k], True)  # [R, N]
    return _mean_over_rounds(after - before, "loss difference")
