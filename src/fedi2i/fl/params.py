"""Flatten a model's state into one vector and back: updates travel and are aggregated as vectors.

Every floating-point entry of the state dict takes part (weights and BatchNorm running statistics);
integer counters such as ``num_batches_tracked`` stay with the global model and are not aggregated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ParamSpec:
    """Names, shapes and offsets of the aggregated entries of a state dict."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def from_module(cls, module: torch.nn.Module) -> "ParamSpec":
        state = module.state_dict()
        names = tuple(k for k, v in state.items() if v.is_floating_point())
        return cls(names, tuple(tuple(state[k].shape) for k in names))

    @property
    def sizes(self) -> list[int]:
        return [int(torch.Size(s).numel()) for s in self.shapes]

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def flatten(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([state[k].detach().reshape(-1).float() for k in self.names])

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = torch.split(vector, self.sizes)
        return {k: p.reshape(s) for k, p, s in zip(self.names, parts, self.shapes)}

    def load_into(self, module: torch.nn.Module, vector: torch.Tensor) -> None:
        """Copy a flat vector into the module's floating entries, leaving counters untouched."""
        state = module.state_dict()
        with torch.no_grad():
            for name, value in self.unflatten(vector).items():
                state[name].copy_(value.to(state[name].dtype))

    def is_parameter(self, module: torch.nn.Module) -> list[bool]:
        """Which entries are trainable parameters (True) rather than buffers such as running stats."""
        params = {n for n, _ in module.named_parameters()}
        return [n in params for n in self.names]
