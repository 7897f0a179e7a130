"""The example-weighted mean around secure aggregation, shared by both runtimes.

SecAgg sums; FedAvg needs a weighted mean. A server that told each client its weight could set one
client's to 1 and the others' to almost 0, and the "sum" would be that client's update. So, as in
Flower's SecAgg+, each client weights itself: it scales its update by ``r_k = min(n_k, W) / W`` (its
own example count, ``W`` = ``secagg.max_weight``) and appends ``r_k`` (times the clip, to use the
quantiser's range) to the masked vector. The server learns only ``sum r_k x_k`` and ``sum r_k`` and
divides them; a dropped client removes its own terms from both. The in-process
:class:`fedi2i.fl.server.Aggregator` and the Flower node call the same functions, so the two runtimes
stay bit-identical (the Flower tests compare them).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from fedi2i.errors import AggregationError

from .config import SecAggConfig

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def round_seed(seed: int, round_index: int) -> int:
    """Reproducible dither seed of a round (only when the run is marked ``reproducible_secrets``)."""
    return seed * 100003 + round_index


def own_weight(num_examples: int, config: SecAggConfig) -> float:
    """``r_k = min(n_k, W) / W``: the client's FedAvg weight up to a common factor."""
    if num_examples <= 0:
        raise AggregationError(f"a client with {num_examples} examples cannot be weighted")
    if num_examples > config.max_weight:
        log.warning("%d examples exceed secagg.max_weight=%d: the client is weighted as %d", num_examples,
                    config.max_weight, config.max_weight)
    return min(num_examples, config.max_weight) / config.max_weight


def weighted_input(delta: np.ndarray, num_examples: int, config: SecAggConfig) -> np.ndarray:
    """A client's SecAgg input ``[r_k * delta, r_k * clip]`` (float32, length ``d + 1``), from its own count."""
    r = own_weight(num_examples, config)
    flat = np.asarray(delta, dtype=np.float32).reshape(-1)
    out = np.empty(flat.size + 1, dtype=np.float32)
    np.multiply(flat, np.float32(r), out=out[:-1])
    out[-1] = r * config.clip
    return out


def mean_error_bound(config: SecAggConfig, counts: dict[str, int], max_abs_mean: float) -> float:
    """Per-coordinate bound on ``|secure mean - exact weighted mean|`` for inputs inside the clip range.

    The sums ``sum r_k x_k`` and ``sum r_k c`` each err by less than ``e = n * step``
    (:meth:`SecAggConfig.error_bound`); dividing by ``R = sum r_k`` turns that into
    ``(e + |mean| e / c) / (R - e / c)``. A ``max_weight`` far above the real counts makes ``R``
    small and the bound (and the error) larger.
    """
    n = len(counts)
    e = config.error_bound(n)
    total_weight = sum(own_weight(c, config) for c in counts.values())
    return (e + max_abs_mean * e / config.clip) / (total_weight - e / config.clip)


def secure_mean(total: np.ndarray, config: SecAggConfig) -> "torch.Tensor":
    """The example-weighted mean update ``sum r_k x_k / sum r_k`` from SecAgg's dequantised sum."""
    import torch

    total = np.asarray(total, dtype=np.float64).reshape(-1)
    weight = total[-1] / config.clip
    if not weight > 0:
        raise AggregationError(f"the securely summed weights are {weight:.3g}, not positive: the round is discarded")
    return torch.from_numpy((total[:-1] / weight).astype(np.float32))
