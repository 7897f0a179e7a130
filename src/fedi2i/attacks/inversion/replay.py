"""Differentiable replay of a centre's local training on candidate images: the attacker's forward model.

Given candidate inputs and a per-pixel loss, :class:`LocalReplay` runs the observed number of local
optimiser steps (SGD or Adam, the observed learning rate and weight decay) from the global model with
``torch.func.functional_call`` and ``create_graph=True``, so the simulated update is differentiable with
respect to the candidates. BatchNorm runs in train mode as the client's did; its running statistics are
tracked from the batch statistics captured by forward hooks, so the simulated update covers the same
entries as the observed one (weights and running means/variances).

Written by hand because no library unrolls an optimiser over a MONAI network with BatchNorm buffers
(``torch.func`` gives the functional call; the Adam/SGD update rules are torch's, restated).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

from fedi2i.attacks.inversion.observation import Observation
from fedi2i.errors import ConfigError
from fedi2i.models import build_unet

# (prediction, step index) -> scalar training loss of the simulated client
StepLoss = Callable[[torch.Tensor, int], torch.Tensor]

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


@dataclass
class SimulatedUpdate:
    """Simulated deltas, entry by entry, in the order of ``LocalReplay.param_names`` / ``buffer_names``."""

    params: list[torch.Tensor]
    buffers: list[torch.Tensor]


class LocalReplay:
    """The observed model and local-training settings, replayable on candidate images."""

    def __init__(self, obs: Observation) -> None:
        self.obs = obs
        self.model = build_unet(obs.model)
        obs.spec.load_into(self.model, obs.global_vector)
        self.model.train()
        is_param = obs.spec.is_parameter(self.model)
        self.param_names = [n for n, p in zip(obs.spec.names, is_param) if p]
        self.buffer_names = [n for n, p in zip(obs.spec.names, is_param) if not p]
        state = obs.spec.unflatten(obs.global_vector)
        self.params0 = {n: state[n].detach().clone() for n in self.param_names}
        self.buffers0 = {n: state[n].detach().clone() for n in self.buffer_names}
        self.bn: list[tuple[str, _BatchNorm]] = [(name, m) for name, m in self.model.named_modules()
                                                 if isinstance(m, _BatchNorm)]
        for name, module in self.bn:
            if module.momentum is None:
                raise ConfigError(f"BatchNorm {name} uses a cumulative average (momentum=None); the replay "
                                  "supports exponential running statistics only")
        self._captured: dict[str, torch.Tensor] = {}
        for name, module in self.bn:
            module.register_forward_pre_hook(self._hook(name))

    def _hook(self, name: str) -> Callable:
        def capture(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            self._captured[name] = inputs[0]
        return capture

    def split(self, vector: torch.Tensor) -> SimulatedUpdate:
        """An observed flat update cut into the same entry lists as a simulated one."""
        state = self.obs.spec.unflatten(vector)
        return SimulatedUpdate([state[n] for n in self.param_names], [state[n] for n in self.buffer_names])

    def forward(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Train-mode forward with the given parameters (running buffers are copies, never mutated)."""
        buffers = {n: b.clone() for n, b in self.model.named_buffers()}
        return functional_call(self.model, {**buffers, **params}, (x,))

    def predict(self, x: torch.Tensor, vector: torch.Tensor | None = None) -> torch.Tensor:
        """Train-mode prediction of the global model (or of ``vector``), without gradient to the weights."""
        params = self.params0 if vector is None else {
            n: v for n, v in self.obs.spec.unflatten(vector).items() if n in self.params0}
        return self.forward({n: p.detach() for n, p in params.items()}, x)

    def gradient(self, x: torch.Tensor, loss: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
        """Gradient of ``loss(prediction)`` at the global model (differentiable in x): one-step view."""
        params = {n: p.clone().requires_grad_(True) for n, p in self.params0.items()}
        pred = self.forward(params, x)
        return list(torch.autograd.grad(loss(pred), [params[n] for n in self.param_names], create_graph=True))

    def batch_stats(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per-channel mean and unbiased variance of each BatchNorm input of the last forward."""
        out = {}
        for name, _module in self.bn:
            h = self._captured[name]
            n = h.numel() // h.shape[1]
            mean = h.mean(dim=(0, 2, 3))
            var = h.var(dim=(0, 2, 3), unbiased=n > 1)
            out[name] = (mean, var)
        return out

    def run(self, x: torch.Tensor, step_loss: StepLoss, steps: int, lr: float | None = None) -> SimulatedUpdate:
        """Replay ``steps`` local steps on batch ``x`` (at ``lr``, default the observed one)."""
        params = {n: p.clone().requires_grad_(True) for n, p in self.params0.items()}
        running = dict(self.buffers0)
        moments: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for t in range(steps):
            pred = self.forward(params, x)
            loss = step_loss(pred, t)
            stats = self.batch_stats()
            for name, module in self.bn:
                mean, var = stats[name]
                m = float(module.momentum)
                running[f"{name}.running_mean"] = (1 - m) * running[f"{name}.running_mean"] + m * mean
                running[f"{name}.running_var"] = (1 - m) * running[f"{name}.running_var"] + m * var
            names = list(params)
            grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True)
            params = self._step(params, dict(zip(names, grads)), moments, t + 1, lr)
        return SimulatedUpdate([params[n] - self.params0[n] for n in self.param_names],
                               [running[n] - self.buffers0[n] for n in self.buffer_names])

    def _step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor],
              moments: dict[str, tuple[torch.Tensor, torch.Tensor]], t: int,
              lr: float | None = None) -> dict[str, torch.Tensor]:
        """One optimiser step with torch's SGD / Adam rules (no momentum for SGD, as the client uses)."""
        lr, wd = (self.obs.lr if lr is None else lr), self.obs.weight_decay
        out = {}
        for n, p in params.items():
            g = grads[n] + wd * p if wd else grads[n]
            if self.obs.optimizer == "sgd":
                out[n] = p - lr * g
                continue
            b1, b2 = _ADAM_BETAS
            m_prev, v_prev = moments.get(n, (torch.zeros_like(p), torch.zeros_like(p)))
            m = b1 * m_prev + (1 - b1) * g
            v = b2 * v_prev + (1 - b2) * g * g
            moments[n] = (m, v)
            m_hat = m / (1 - b1 ** t)
            v_hat = v / (1 - b2 ** t)
            out[n] = p - lr * m_hat / (torch.sqrt(v_hat + 1e-30) + _ADAM_EPS)
        return out
