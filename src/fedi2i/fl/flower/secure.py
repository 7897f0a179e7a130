"""The arithmetic around secure aggregation that both ends of a Flower round must share with the engine.

:meth:`fedi2i.fl.server.Aggregator._secure_mean` runs SecAgg in one process: it pre-scales each update
by ``n_k / N``, seeds the round with ``seed * 100003 + round`` and renormalises the unmasked sum by the
survivors' share. Over Flower the scaling happens on the node (the server never holds the update), so
these few lines are repeated here; the tests compare both runtimes bit for bit to keep them in step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def round_seed(seed: int, round_index: int) -> int:
    """Seed of a round's SecAgg (rounding dither and neighbourhood graph), as the engine derives it."""
    return seed * 100003 + round_index


def example_weights(counts: dict[str, int]) -> dict[str, float]:
    """FedAvg weights ``n_k / N`` of the clients that trained this round."""
    total = sum(counts.values())
    return {cid: n / total for cid, n in counts.items()}


def weighted_input(delta: np.ndarray, weight: float) -> np.ndarray:
    """A node's SecAgg input: its update times ``n_k / N`` in float32 (numpy's float32 product with a
    Python float rounds exactly like torch's ``delta * weight`` in the engine)."""
    return (np.asarray(delta, dtype=np.float32) * weight).astype(np.float32)


def secure_mean(total: np.ndarray, survivors: list[str], weights: dict[str, float]) -> "torch.Tensor":
    """The example-weighted mean update from SecAgg's dequantised sum: a dropped client removes only
    its own term, so divide by the survivors' share of the weights."""
    import torch

    share = sum(weights[c] for c in survivors)
    return torch.from_numpy(np.asarray(total, dtype=np.float32)) / share
