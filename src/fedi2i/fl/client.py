"""A centre's local training: takes the global model, trains on the centre's slices, returns an update.

This object knows nothing about rounds, servers or transport, so the in-process engine and the Flower
ClientApp both drive it unchanged. Centralised training is the same object holding every training slice.
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fedi2i.config import DPConfig, ModelConfig, TrainConfig
from fedi2i.seeding import hash_seed
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
    """Learning rate of a round: constant, cosine decay over the rounds to 5% of the start, or the
    one-cycle rate at the round's start (it then moves on with every step, see :func:`onecycle_factor`)."""
    if train.lr_schedule == "onecycle":
        return train.lr * onecycle_factor(round_index / train.rounds)
    if train.lr_schedule == "constant" or train.rounds <= 1:
        return train.lr
    progress = round_index / (train.rounds - 1)
    return train.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


ONECYCLE_WARMUP = 0.3


def onecycle_factor(progress: float) -> float:
    """One-cycle schedule (Smith 2019) as a fraction of the peak rate, over training progress in [0, 1]:
    linear warm-up from 4% to the peak over the first 30%, then cosine decay to 1%. The warm-up lets a
    rate high enough to learn fast survive the first steps; the long decay settles the model."""
    if progress < ONECYCLE_WARMUP:
        return 0.04 + 0.96 * progress / ONECYCLE_WARMUP
    tail = min(1.0, (progress - ONECYCLE_WARMUP) / (1 - ONECYCLE_WARMUP))
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * tail))


BONE_UNIT = 2 * (250.0 + 1024.0) / 4024.0 - 1  # 250 HU in the model's [-1, 1] CT scale


def recipe_loss(train: TrainConfig, pred: torch.Tensor, ct: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pixel loss with per-voxel weights, plus an optional edge term; [B, 1, H, W] tensors.

    Weights: ``bone_weight`` where the CT shows bone (> 250 HU), 1 elsewhere in the body mask,
    ``background_weight`` outside it; the weighted mean divides by the weights' sum, so the loss keeps
    its scale. The plain loss would spend most of its gradient on air around the head, which the model
    learns in a few steps, and treats the thin skull like any other few pixels. The edge term is the L1
    distance between the finite-difference gradients of sCT and CT (sharp bone boundaries)."""
    err = (pred - ct).abs() if train.loss == "l1" else (pred - ct) ** 2
    weights = mask * (1 + (train.bone_weight - 1) * (ct > BONE_UNIT).float()) + (1 - mask) * train.background_weight
    loss = (weights * err).sum() / weights.sum().clamp_min(1e-8)
    if train.edge_weight:
        dx = ((pred[..., :, 1:] - pred[..., :, :-1]) - (ct[..., :, 1:] - ct[..., :, :-1])).abs().mean()
        dy = ((pred[..., 1:, :] - pred[..., :-1, :]) - (ct[..., 1:, :] - ct[..., :-1, :])).abs().mean()
        loss = loss + train.edge_weight * (dx + dy)
    return loss


def plain_loss(train: TrainConfig) -> bool:
    """Whether the recipe's loss is exactly ``train.loss`` (no weights, no edge term)."""
    return train.bone_weight == 1 and train.background_weight == 1 and not train.edge_weight


def augment_batch(train: TrainConfig, mr: torch.Tensor, ct: torch.Tensor, mask: torch.Tensor,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random left-right flips (the head is near-symmetric) and an MRI gamma in [0.7, 1.4] per slice,
    which spans the centres' scanner contrasts (data.headsim draws gamma in 0.75..1.35)."""
    n = mr.shape[0]
    if "flip" in train.augment:
        flip = (torch.rand(n, generator=generator) < 0.5).view(n, 1, 1, 1)
        mr, ct, mask = (torch.where(flip, x.flip(-1), x) for x in (mr, ct, mask))
    if "gamma" in train.augment:
        gamma = torch.exp(torch.empty(n).uniform_(math.log(0.7), math.log(1.4), generator=generator))
        mr = mr.clamp_min(0) ** gamma.view(n, 1, 1, 1)
    return mr, ct, mask


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
        if train_cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
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
            lr: float | None = None, batches: list[torch.Tensor] | None = None,
            dp_noise: torch.Generator | None = None) -> ClientUpdate:
        """Local epochs of the configured optimiser from the global model; returns the delta and the mean loss.

        ``batches`` (index batches into this client's slices) replaces the shuffled epochs, and ``dp_noise``
        the DP noise source, for a caller that simulates one fixed round, as the inversion attack's DP-SGD
        victim does: it then trains through this same loop.
        """
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
            noise = dp_noise or dp_noise_generator(self.reproducible, self.seed, round_index, self.cid)
            optimiser = DPOptimizer(optimiser, noise_multiplier=self.dp.noise_multiplier, max_grad_norm=self.dp.clip,
                                    expected_batch_size=self.train_cfg.batch_size, generator=noise)
        with warnings.catch_warnings():  # Opacus' hooks warn that the input needs no gradient: expected here
            warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
            losses = self._steps(optimiser, lr, round_index, batches or self.batches(epochs, generator), global_params)
        delta = self.spec.flatten(self.model.state_dict()) - global_vector
        if self.dp is not None and self.dp.enabled and self.dp.mode == "update":
            delta = clip_and_noise(delta, self.dp.clip, self.dp.noise_multiplier,
                                   dp_noise_generator(self.reproducible, self.seed, round_index, self.cid))
        if self.update_transform is not None:
            delta = self.update_transform(delta, generator)
        return ClientUpdate(self.cid, delta, self.num_examples, len(losses),
                            float(sum(losses) / max(len(losses), 1)), losses)

    def _steps(self, optimiser: torch.optim.Optimizer, lr: float, round_index: int, batches: list[torch.Tensor],
               global_params: list[torch.Tensor] | None) -> list[float]:
        """One optimiser step per index batch; returns each step's loss (without the FedProx term)."""
        losses: list[float] = []
        cfg = self.train_cfg
        augment_gen = torch.Generator().manual_seed(hash_seed(self.seed, round_index, 2, *map(ord, self.cid)))
        for step, idx in enumerate(batches):
            if cfg.lr_schedule == "onecycle":
                progress = (round_index + step / len(batches)) / cfg.rounds
                for group in optimiser.param_groups:
                    group["lr"] = lr * onecycle_factor(progress) / onecycle_factor(round_index / cfg.rounds)
            mr, ct, mask = self.data.mr[idx], self.data.ct[idx], self.data.mask[idx]
            if cfg.augment:
                mr, ct, mask = augment_batch(cfg, mr, ct, mask, augment_gen)
            if cfg.channels_last:
                mr = mr.contiguous(memory_format=torch.channels_last)
            pred = self.forward_model(mr)
            loss = self.loss(pred, ct) if plain_loss(cfg) else recipe_loss(cfg, pred, ct, mask)
            total = loss
            if global_params is not None:
                prox = sum(((p - g) ** 2).sum() for p, g in zip(self.model.parameters(), global_params))
                total = loss + 0.5 * self.fedprox_mu * prox
            optimiser.zero_grad(set_to_none=True)
            total.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
        return losses


def make_optimiser(train: TrainConfig, params, lr: float) -> torch.optim.Optimizer:
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=train.momentum, weight_decay=train.weight_decay)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=train.weight_decay)
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
