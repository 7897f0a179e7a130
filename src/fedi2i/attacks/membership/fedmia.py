"""FedMIA (Zhu et al., CVPR 2025): the other centres are the non-member reference of the target centre.

For a candidate z, target centre k0 and round t, a signal phi_k^t(z) is computed on every centre's model
(FedMIA-I: the log-loss; FedMIA-II: the gradient/update cosine). The other centres never saw z, so their
signals estimate the distribution of a non-member's signal on a model trained this round:
mu_t(z) and sigma_t(z) over k != k0. The score is the one-tailed Gaussian test
Phi((phi_k0^t(z) - mu_t(z)) / sigma_t(z)), averaged over the rounds used.

With three reference centres a per-candidate standard deviation has two degrees of freedom and
explodes the score of any candidate where the references happen to agree; the default pools the
variance over the evaluated candidates of a round (one sigma per round).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from fedi2i.attacks.membership.baselines import need, phi
from fedi2i.attacks.membership.collect import Signals
from fedi2i.attacks.membership.settings import MembershipSettings, SignalUnavailable

MIN_REFERENCES = 2
UNAVAILABLE_UNDER_SECAGG = (
    "unavailable by construction: under secure aggregation the server never sees a centre's individual "
    "update, so neither the target centre's model nor the other centres' reference models exist; the "
    "loss/gradient baselines run on the aggregate instead, which is what the server really observes")


def reference_sigma(var: np.ndarray, evaluated: np.ndarray, mode: str, floor: float) -> np.ndarray:
    """Standard deviation of the non-member reference per candidate; pooling uses the evaluated ones."""
    pooled = float(np.sqrt(np.mean(var[evaluated])))
    pooled = pooled if np.isfinite(pooled) and pooled > 0 else 1e-12
    if mode == "pooled":
        return np.full(var.shape, pooled)
    per_sample = np.sqrt(var)
    if mode == "per-sample":
        return np.maximum(per_sample, 1e-12)
    if mode == "floored":
        return np.maximum(per_sample, floor * pooled)
    raise ValueError(f"unknown sigma mode {mode!r}: expected pooled, per-sample or floored")


def fedmia_scores(signal: np.ndarray, target: int, evaluated: np.ndarray, sigma: str = "pooled",
                  sigma_floor: float = 0.5) -> tuple[np.ndarray, int]:
    """Membership score of every candidate against target column ``target``.

    ``signal`` is [R, K, N] (higher = more member-like; NaN where a centre was absent), ``evaluated``
    the candidate indices the variance is pooled over. Returns (scores [N] in [0, 1], rounds used).
    Raises SignalUnavailable when no round has the target and at least two reference centres.
    """
    rounds, clients, _ = signal.shape
    scores = []
    for r in range(rounds):
        row = signal[r]
        if not np.isfinite(row[target]).all():
            continue
        refs = np.array([row[k] for k in range(clients) if k != target and np.isfinite(row[k]).all()])
        if len(refs) < MIN_REFERENCES:
            continue
        mu = refs.mean(0)
        sd = reference_sigma(refs.var(0, ddof=1), evaluated, sigma, sigma_floor)
        scores.append(norm.cdf((row[target] - mu) / sd))
    if not scores:
        raise SignalUnavailable(f"no round has the target centre and at least {MIN_REFERENCES} other centres "
                               "to serve as the non-member reference")
    return np.mean(scores, axis=0), len(scores)


def score_fedmia_loss(sig: Signals, k: int, evaluated: np.ndarray, s: MembershipSettings) -> np.ndarray:
    if sig.secure:
        raise SignalUnavailable(UNAVAILABLE_UNDER_SECAGG)
    signal = phi(need(sig.loss_target, "loss"), s.log_loss)
    return fedmia_scores(signal, k, evaluated, s.sigma, s.sigma_floor)[0]


def score_fedmia_grad(sig: Signals, k: int, evaluated: np.ndarray, s: MembershipSettings) -> np.ndarray:
    if sig.secure:
        raise SignalUnavailable(UNAVAILABLE_UNDER_SECAGG)
    return fedmia_scores(need(sig.cos_target, "gradient"), k, evaluated, s.sigma, s.sigma_floor)[0]
