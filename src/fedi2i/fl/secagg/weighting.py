"""The example-weighted mean around secure aggregation, shared by both runtimes.

SecAgg sums; FedAvg needs a weighted mean. Each client pre-scales its update by ``n_k / N`` and the
server renormalises the unmasked sum by the survivors' share, so a dropped client removes only its own
term. The in-process :class:`fedi2i.fl.server.Aggregator` does both ends in one process; over Flower the
scaling happens on the node (the server never holds the update). One copy of the arithmetic keeps the two
runtimes bit-identical (the Flower tests compare them).
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
