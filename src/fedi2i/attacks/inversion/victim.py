"""Threat settings made real: the victim round is trained by the federated engine itself.

For a setting (batch size B, local steps S, early or trained model, defence) every training centre
holds B slices (seeded, the same for every method) and runs S local steps on them; the engine's
aggregator records the round exactly as a curious server would see it (individual updates, or only the
aggregate under secure aggregation; DP clipping and noise applied by the clients). The slice indices
are written to ``victim.json`` for the evaluation step only; the attack reads the record.

A DP-SGD victim is one client of the federated engine trained alone: the client's own DP-SGD loop (Opacus'
per-sample clipping and noise) on the GroupNorm variant of the U-Net (Opacus does not support BatchNorm),
and the observation is built from that update directly. (epsilon, delta) come from Opacus' RDP accountant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedi2i.attacks.inversion.observation import Group, Observation
from fedi2i.config import Config, DPConfig, config_from_dict, dump_config
from fedi2i.data.federation import FederatedData
from fedi2i.seeding import hash_seed
from fedi2i.data.slices import SliceSet
from fedi2i.errors import ConfigError, RecordError
from fedi2i.fl.client import LocalTrainer
from fedi2i.fl.round_loop import load_checkpoint
from fedi2i.privacy import rdp_epsilon as dp_epsilon  # the one accountant (run.py and the tests use this name)
from fedi2i.runfolder import CHECKPOINT
from fedi2i.fl.params import ParamSpec
from fedi2i.io import write_json
from fedi2i.models import build_unet
from fedi2i.training import RunOptions, build_engine, train

VICTIM_FILE = "victim.json"


@dataclass(frozen=True)
class VictimSetting:
    """What the victim round looks like (shared by every method attacking it)."""

    batch_size: int
    local_steps: int
    stage: str
    defence: str
    noise_multiplier: float | None
    optimizer: str
    lr: float
    clip: float
    seed: int

    @property
    def key(self) -> str:
        noise = f"-z{self.noise_multiplier:g}" if self.noise_multiplier is not None else ""
        return (f"b{self.batch_size}-s{self.local_steps}-{self.stage}-{self.defence}{noise}-{self.optimizer}"
                f"-seed{self.seed}")


def _with(config: Config, changes: dict[str, Any]) -> Config:
    raw = config.model_dump(mode="json")
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config_from_dict(raw, source="inversion victim settings")


def pick_batches(data: FederatedData, batch_size: int, seed: int) -> dict[str, list[int]]:
    """B seeded training slices per centre (fewer where a centre has fewer)."""
    picks = {}
    for centre, slices in sorted(data.train.items()):
        gen = torch.Generator().manual_seed(hash_seed(seed, 5077, batch_size, *map(ord, centre)))
        picks[centre] = sorted(torch.randperm(len(slices), generator=gen)[:batch_size].tolist())
    return picks


def start_model(config: Config, data: FederatedData, stage: str, work_dir: Path, trained_rounds: int,
                base_run_dir: Path | None = None) -> tuple[torch.Tensor, int]:
    """Global vector and round index a victim round starts from.

    ``early``: the initial model, round 0. ``trained``: the final global model of ``base_run_dir`` (its
    checkpoint) or, when none is given, of a base run trained here for ``trained_rounds`` rounds (kept in
    ``work_dir`` and reused).
    """
    spec_numel = ParamSpec.from_module(build_unet(config.model)).numel
    if stage == "early":
        torch.manual_seed(config.seed)
        vector = ParamSpec.from_module(model := build_unet(config.model)).flatten(model.state_dict())
        return vector, 0
    if base_run_dir is None:
        base_run_dir = work_dir / f"base-{config.model.norm}"
        base_cfg = _with(config, {"train.rounds": trained_rounds, "federation.record_rounds": "none",
                                  "federation.eval_every": 0, "secagg.enabled": False, "dp.enabled": False})
        train(base_cfg, base_run_dir, data, RunOptions(native_eval=False))
    path = Path(base_run_dir) / CHECKPOINT
    if not path.exists():
        raise RecordError(f"{base_run_dir} has no {CHECKPOINT}: give a trained run folder as the base run")
    base = load_checkpoint(path)
    vector = base.global_vector
    if vector.numel() != spec_numel:
        raise ConfigError(f"the base run {base_run_dir} has a model of {vector.numel()} values, the config's "
                          f"model has {spec_numel}: use the same model settings (model.*) as the base run")
    return vector, base.next_round


def victim_config(config: Config, setting: VictimSetting, round_index: int) -> Config:
    """The run config of one victim round: only the local training and the defence change."""
    return _with(config, {
        "train.optimizer": setting.optimizer, "train.local_steps": setting.local_steps,
        "train.batch_size": setting.batch_size, "train.lr": setting.lr, "train.lr_schedule": "constant",
        # the plain loss on unaugmented slices, which the attacks replay (obs.loss)
        "train.bone_weight": 1.0, "train.background_weight": 1.0, "train.edge_weight": 0.0, "train.augment": [],
        "train.rounds": round_index + 1, "federation.strategy": "fedavg", "federation.clients_per_round": None,
        "federation.record_rounds": [round_index], "federation.record_fp16": False,
        "federation.eval_every": 0, "federation.min_clients": 1,
        "secagg.enabled": setting.defence == "secagg",
        # each client holds one batch: weight 1 at that count keeps SecAgg's full precision
        "secagg.max_weight": setting.batch_size,
        "dp.enabled": setting.defence == "dp", "dp.mode": "update", "dp.clip": setting.clip,
        "dp.noise_multiplier": setting.noise_multiplier if setting.noise_multiplier is not None else 0.0,
    })


def victim_round(config: Config, data: FederatedData, setting: VictimSetting, work_dir: Path,
                 start: tuple[torch.Tensor, int]) -> Path:
    """Train (or reuse) the recorded victim round of a setting; returns its run folder."""
    if setting.defence == "dpsgd":
        raise ConfigError("DP-SGD victims are simulated with Opacus (dpsgd_observation), not by the engine")
    run_dir = work_dir / "victims" / setting.key
    marker = run_dir / VICTIM_FILE
    if marker.exists():
        return run_dir
    vector, round_index = start
    cfg = victim_config(config, setting, round_index)
    picks = pick_batches(data, setting.batch_size, setting.seed)
    transforms = {c: (lambda s, idx=idx: s.select(idx)) for c, idx in picks.items()}
    engine = build_engine(cfg, data, run_dir, RunOptions(data_transforms=transforms))
    dump_config(cfg, run_dir / "config.yaml")
    engine.run_round(round_index, vector)
    write_json(marker, {"setting": setting.__dict__, "round": round_index, "picks": picks})
    return run_dir


def victim_batch(run_dir: Path, data: FederatedData, client: str) -> SliceSet | None:
    """The true batch of ``client`` in a victim run (evaluation only); None for an ordinary run."""
    marker = Path(run_dir) / VICTIM_FILE
    if not marker.exists():
        return None
    picks = json.loads(marker.read_text())["picks"]
    if client not in picks:
        raise RecordError(f"client {client!r} is not in this victim run; clients: {', '.join(sorted(picks))}")
    return data.train[client].select(picks[client])


def dpsgd_observation(config: Config, data: FederatedData, setting: VictimSetting, client: str,
                      start: tuple[torch.Tensor, int]) -> tuple[Observation, list[int]]:
    """The update of ``client`` after S DP-SGD steps (Opacus) on its B slices, as the server sees it.

    Uses the GroupNorm U-Net (``config.model`` must be ``norm: group``; the caller swaps it), per-sample
    clipping at ``setting.clip`` and Gaussian noise of ``noise_multiplier * clip``. The steps are the
    federated client's own DP-SGD loop (:class:`~fedi2i.fl.client.LocalTrainer`), on the whole batch each
    step, with the plain loss the attacks replay.
    """
    if client not in data.train:
        raise RecordError(f"client {client!r} is not a training centre; centres: {', '.join(sorted(data.train))}")
    vector, round_index = start
    picks = pick_batches(data, setting.batch_size, setting.seed)[client]
    batch = data.train[client].select(picks)
    train_cfg = config.train.model_copy(update={
        "optimizer": setting.optimizer, "lr": setting.lr, "lr_schedule": "constant", "batch_size": len(batch),
        "local_steps": setting.local_steps, "bone_weight": 1.0, "background_weight": 1.0, "edge_weight": 0.0,
        "augment": [], "channels_last": False})
    dp = DPConfig(enabled=True, mode="dpsgd", clip=setting.clip, noise_multiplier=setting.noise_multiplier or 0.0)
    trainer = LocalTrainer(client, batch, config.model, train_cfg, setting.seed, dp=dp)
    noise = torch.Generator().manual_seed(hash_seed(setting.seed, 4099, round_index, *map(ord, client)))
    update = trainer.fit(vector, round_index, lr=setting.lr, batches=[torch.arange(len(batch))] * setting.local_steps,
                         dp_noise=noise)
    obs = Observation(
        round=round_index, target=client, update=update.delta.detach(), global_vector=vector, spec=trainer.spec,
        model=config.model, image_size=config.data.image_size, loss=config.train.loss,
        optimizer=setting.optimizer, lr=setting.lr, weight_decay=config.train.weight_decay,
        groups=(Group(client, 1.0, setting.local_steps, len(batch)),), secure=False,
        dp={"enabled": True, "mode": "dpsgd", "clip": setting.clip, "noise_multiplier": setting.noise_multiplier})
    return obs, picks
