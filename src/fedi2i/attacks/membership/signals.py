"""Per-sample signals on the models a curious server can rebuild: per-slice loss and per-sample gradients.

Everything runs with BatchNorm in eval mode: the model the server rebuilds from a vector carries the
running statistics that vector holds (a client's update includes its BatchNorm statistics), and a
per-slice score must not depend on which other slices share its batch.

Per-sample gradients use ``torch.func`` (``functional_call`` + ``grad`` + ``vmap``): one vectorised
pass per chunk instead of one backward per slice (see ``bench/membership.py`` for the speed-up).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from fedi2i.fl.params import ParamSpec

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def per_slice_loss_fn(name: str) -> LossFn:
    """Per-slice version of the training loss (config.train.loss): mean over the slice's pixels."""
    if name == "l1":
        return lambda pred, target: (pred - target).abs().flatten(1).mean(1)
    if name == "mse":
        return lambda pred, target: (pred - target).pow(2).flatten(1).mean(1)
    raise ValueError(f"unknown loss {name!r}: expected l1 or mse")


class ModelProbe:
    """One module into which the server loads vectors (global, client, aggregate models) to probe them."""

    def __init__(self, module: torch.nn.Module, spec: ParamSpec, loss: str) -> None:
        self.module = module.eval()
        self.spec = spec
        self.loss = per_slice_loss_fn(loss)
        flags = spec.is_parameter(module)
        self.param_names = [n for n, is_param in zip(spec.names, flags) if is_param]
        # boolean mask over the flat vector: which entries are trainable parameters (not running stats)
        self.param_mask = torch.cat([torch.full((size,), is_param, dtype=torch.bool)
                                     for size, is_param in zip(spec.sizes, flags)])

    def load(self, vector: torch.Tensor) -> None:
        self.spec.load_into(self.module, vector)
        self.module.eval()

    def param_part(self, vector: torch.Tensor) -> torch.Tensor:
        """The trainable-parameter entries of a flat state vector, in the order gradients are flattened."""
        return vector[self.param_mask]

    @torch.no_grad()
    def losses(self, mr: torch.Tensor, ct: torch.Tensor, batch_size: int) -> np.ndarray:
        """Per-slice loss of the loaded model on every slice."""
        out = [self.loss(self.module(mr[i:i + batch_size]), ct[i:i + batch_size])
               for i in range(0, len(mr), batch_size)]
        return torch.cat(out).double().numpy()

    def gradients(self, mr: torch.Tensor, ct: torch.Tensor, chunk: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Per-sample gradients of the per-slice loss w.r.t. the parameters, flattened: (start, [B, P])."""
        params = {k: v.detach() for k, v in self.module.named_parameters()}
        buffers = {k: v.detach() for k, v in self.module.named_buffers()}
        loss = self.loss

        def sample_loss(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor,
                        y: torch.Tensor) -> torch.Tensor:
            pred = functional_call(self.module, (p, b), (x.unsqueeze(0),))
            return loss(pred, y.unsqueeze(0))[0]

        per_sample = vmap(grad(sample_loss), in_dims=(None, None, 0, 0))
        for start in range(0, len(mr), chunk):
            grads = per_sample(params, buffers, mr[start:start + chunk], ct[start:start + chunk])
            yield start, torch.cat([grads[n].flatten(1) for n in self.param_names], dim=1)

    def gradients_loop(self, mr: torch.Tensor, ct: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """The same per-sample gradients one backward at a time (reference for tests and the benchmark)."""
        params = dict(self.module.named_parameters())
        for i in range(len(mr)):
            value = self.loss(self.module(mr[i:i + 1]), ct[i:i + 1])[0]
            grads = torch.autograd.grad(value, [params[n] for n in self.param_names])
            yield i, torch.cat([g.flatten() for g in grads])[None]


def cosine_to(grads: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Cosine between each descent direction -g_i and each update d_k: [B, P] x [K, P] -> [B, K].

    A client's update is roughly minus the sum of its training gradients, so a slice it trained on
    has a gradient pointing against the update: members get a positive cosine.
    """
    g_norm = grads.norm(dim=1, keepdim=True).clamp_min(1e-20)
    d_norm = directions.norm(dim=1, keepdim=True).clamp_min(1e-20)
    return (-grads / g_norm) @ (directions / d_norm).T
