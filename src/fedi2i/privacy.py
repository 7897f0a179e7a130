"""Differential privacy bookkeeping: the (epsilon, delta) a DP configuration gives, via Opacus' RDP accountant.

Two mechanisms are supported (see ``DPConfig``):
- ``update``: each client clips its whole round update to L2 norm ``clip`` and adds Gaussian noise of
  standard deviation ``noise_multiplier * clip`` (DP-FedAvg at the client, record-level = client-level
  privacy, one Gaussian mechanism per round with sampling rate 1);
- ``dpsgd``: Opacus DP-SGD inside local training (per-sample clipping and noise each step, Poisson-like
  sampling rate batch/N), so the guarantee is per training slice.
"""

from __future__ import annotations

from fedi2i.config import DPConfig


def rdp_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """(epsilon, delta)-DP of ``steps`` subsampled Gaussian releases (Opacus' RDP accountant): the one
    accountant of fedi2i, for training runs and for the inversion attack's DP cells alike."""
    if noise_multiplier <= 0:
        return float("inf")
    from opacus.accountants import RDPAccountant  # only where a guarantee is computed

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, min(sample_rate, 1.0), steps)]
    return float(accountant.get_epsilon(delta=delta))


def epsilon_spent(dp: DPConfig, rounds: int, steps_per_round: int = 1, sample_rate: float = 1.0) -> float:
    """Epsilon at ``dp.delta`` after ``rounds`` rounds (``steps_per_round`` DP-SGD steps each)."""
    if not dp.enabled:
        return float("inf")
    if dp.mode == "update":  # one Gaussian release of the whole update per round
        return rdp_epsilon(dp.noise_multiplier, 1.0, rounds, dp.delta)
    return rdp_epsilon(dp.noise_multiplier, sample_rate, rounds * steps_per_round, dp.delta)
