"""A centre's local training: takes the global model, trains on the centre's slices, returns an update.

This object knows nothing about rounds, servers or transport, so the in-process engine and the Flower
ClientApp both drive it unchanged. Centralised training is the same object holding every training slice.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fedi2i.config import DPConfig, ModelConfig, TrainConfig
from fedi2i.data.phantom import hash_seed
from fedi2i.data.slices import SliceSet
from fedi2i.errors import ConfigError, DataError
from fedi2i.fl.params import ParamSpec
from fedi2i.models import build_unet

UpdateTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class ClientUpdate:
    """What a client sends back: its model delta (local - global), example count, training metrics."""

    cid: str
    delta: torch.Tensor
    num_examples: int
    steps: int
    mean_loss: float
    losses: list[float] = field(default_factory=list)


def loss_fn(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return F.l1_loss if name == "l1" else F.mse_loss


def round_lr(train: TrainConfig, round_index: int) -> float:
    """Learning rate of a round: constant, or cosine decay over the rounds to 5% of the start."""
    if train.lr_schedule == "constant" or train.rounds <= 1:
        return train.lr
    progress = round_index / (train.rounds - 1)
    return train.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


class LocalTrainer:
    """Trains one model on one set of slices, from a given global state."""

    def __init__(self, cid: str, data: SliceSet, model_cfg: ModelConfig, train_cfg: TrainConfig,
                 seed: int, fedprox_mu: float = 0.0, dp: DPConfig | None = None,
                 update_transform: UpdateTransform | None = None, reproducible: bool = False) -> None:
        if len(data) == 0:
            raise DataError(f"centre {cid} has no usable training slices")
        self.cid = cid
        self.data = data
        self.train_cfg = train_cfg
        self.seed = seed
        self.fedprox_mu = fedprox_mu
        self.dp = dp
        self.reproducible = reproducible  # DP noise from the seed (tests/benchmarks) instead of the OS CSPRNG
        self.update_transform = update_transform
        self.model = build_unet(model_cfg)
        self.spec = ParamSpec.from_module(self.model)
        self.loss = loss_fn(train_cfg.loss)
        self.dpsgd = dp is not None and dp.enabled and dp.mode == "dpsgd"
        self.forward_model: torch.nn.Module = self.model
        if self.dpsgd:
            if model_cfg.norm == "batch":
                raise ConfigError("dp.mode=dpsgd needs per-sample gradients, which BatchNorm does not allow: "
                                  "set model.norm to instance or group")
            from opacus import GradSampleModule

            self.forward_model = GradSampleModule(self.model)

    @property
    def num_examples(self) -> int:
        return len(self.data)

    def batches(self, epochs: int, generator: torch.Generator) -> list[torch.Tensor]:
        """Index batches of a round: shuffled epochs, or exactly ``local_steps`` batches when set."""
        bs = self.train_cfg.batch_size
        out: list[torch.Tensor] = []
        steps = self.train_cfg.local_steps
        while True:
            order = torch.randperm(len(self.data), generator=generator)
            for start in range(0, len(order), bs):
                idx = order[start:start + bs]
                if len(idx) < 2 and len(order) > 1:  # BatchNorm cannot train on a single sample
                    continue
                out.append(idx)
                if steps is not None and len(out) == steps:
                    return out
            epochs -= 1
            if steps is None and epochs <= 0:
                return out

    def fit(self, global_vector: torch.Tensor, round_index: int, epochs: int | None = None,
            lr: float | None = None) -> ClientUpdate:
        """Local epochs of Adam from the global model; returns the delta and the mean loss."""
        epochs = epochs or self.train_cfg.local_epochs
        lr = lr if lr is not None else round_lr(self.train_cfg, round_index)
        generator = torch.Generator().manual_seed(hash_seed(self.seed, round_index, *map(ord, self.cid)))
        torch.manual_seed(hash_seed(self.seed, round_index, 1, *map(ord, self.cid)))
        self.spec.load_into(self.model, global_vector)
        self.model.train()
        global_params = [p.detach().clone() for p in self.model.parameters()] if self.fedprox_mu else None
        optimiser = make_optimiser(self.train_cfg, self.model.parameters(), lr)
        if self.dpsgd:
            from opacus.optimizers import DPOptimizer

            assert self.dp is not None
            optimiser = DPOptimizer(optimiser, noise_multiplier=self.dp.noise_multiplier,
                                    max_grad_norm=self.dp.clip, expected_batch_size=self.train_cfg.batch_size,
                                    generator=dp_noise_generator(self.reproducible, self.seed, round_index, self.cid))
        losses: list[float] = []
        for idx in self.batches(epochs, generator):
            pred = self.forward_model(self.data.mr[idx])
            loss = self.loss(pred, self.data.ct[idx])
            total = loss
            if global_params is not None:
                prox = sum(((p - g) ** 2).sum() for p, g in zip(self.model.parameters(), global_params))
                total = loss + 0.5 * self.fedprox_mu * prox
            optimiser.zero_grad(set_to_none=True)
            total.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
        delta = self.spec.flatten(self.model.state_dict()) - global_vector
        if self.dp is not None and self.dp.enabled and self.dp.mode == "update":
            delta = clip_and_noise(delta, self.dp.clip, self.dp.noise_multiplier,
                                   dp_noise_generator(self.reproducible, self.seed, round_index, self.cid))
        if self.update_transform is not None:
            delta = self.update_transform(delta, generator)
        return ClientUpdate(self.cid, delta, self.num_examples, len(losses),
                            float(sum(losses) / max(len(losses), 1)), losses)


def make_optimiser(train: TrainConfig, params, lr: float) -> torch.optim.Optimizer:
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=train.weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=train.weight_decay)


def dp_noise_generator(reproducible: bool, seed: int, round_index: int, cid: str) -> torch.Generator:
    """Generator of a client's DP noise. Seeded with 64 fresh bits from the OS CSPRNG on every draw, so a
    server that knows the run seed, the round and the centre cannot replay (and subtract) the noise;
    ``reproducible`` derives it from (seed, round, centre) instead, for tests and benchmarks only."""
    if reproducible:
        return torch.Generator().manual_seed(hash_seed(seed, round_index, 2, *map(ord, cid)))
    return torch.Generator().manual_seed(secrets.randbits(64))


def clip_and_noise(delta: torch.Tensor, clip: float, noise_multiplier: float,
                   generator: torch.Generator) -> torch.Tensor:
    """DP-FedAvg client step: scale the update to L2 norm <= clip, add N(0, (noise_multiplier*clip)^2)."""
    norm = float(delta.norm())
    clipped = delta * min(1.0, clip / (norm + 1e-12))
    noise = torch.randn(delta.shape, generator=generator) * noise_multiplier * clip
    return clipped + noise
