"""Differential privacy bookkeeping: the (epsilon, delta) a DP configuration gives, via Opacus' RDP accountant.

Two mechanisms are supported (see ``DPConfig``):
- ``update``: each client clips its whole round update to L2 norm ``clip`` and adds Gaussian noise of
  standard deviation ``noise_multiplier * clip`` (DP-FedAvg at the client, record-level = client-level
  privacy, one Gaussian mechanism per round with sampling rate 1);
- ``dpsgd``: Opacus DP-SGD inside local training (per-sample clipping and noise each step, Poisson-like
  sampling rate batch/N), so the guarantee is per training slice.
"""

from __future__ import annotations

from opacus.accountants import RDPAccountant

from fedi2i.config import DPConfig


def epsilon_spent(dp: DPConfig, rounds: int, steps_per_round: int = 1, sample_rate: float = 1.0) -> float:
    """Epsilon at ``dp.delta`` after ``rounds`` rounds (``steps_per_round`` DP-SGD steps each)."""
    if not dp.enabled:
        return float("inf")
    if dp.noise_multiplier <= 0:
        return float("inf")
    accountant = RDPAccountant()
    if dp.mode == "update":
        accountant.history = [(dp.noise_multiplier, 1.0, rounds)]
    else:
        accountant.history = [(dp.noise_multiplier, sample_rate, rounds * steps_per_round)]
    return float(accountant.get_epsilon(delta=dp.delta))
