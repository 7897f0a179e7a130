"""One training run from a config: data -> trainers -> engine -> final evaluation, metrics and figures.

Centralised training is a federation of one client ("ALL") holding every training slice, run by the
same engine, so the two differ only in how the data is partitioned.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedi2i import figures
from fedi2i.config import Config
from fedi2i.data.federation import FederatedData, load_federation
from fedi2i.data.slices import SliceSet
from fedi2i.evaluate import GRIDS, by_role, evaluate_centres, evaluate_centres_native, predict
from fedi2i.inference import MODEL_FILE, save_model
from fedi2i.fl.client import LocalTrainer, UpdateTransform
from fedi2i.fl.engine import Dropouts, InProcessPool
from fedi2i.fl.round_loop import FederatedRun, RoundCallback, RoundLoop, run_metrics
from fedi2i.fl.server import RoundMonitor, build_aggregator
from fedi2i.io import save_torch, write_json
from fedi2i.runfolder import prepare_run_dir

log = logging.getLogger(__name__)

CENTRALISED_ID = "ALL"
DataTransform = Callable[[SliceSet], SliceSet]


@dataclass
class RunOptions:
    """What an experiment changes around a plain run (attacks plug in here, not into the engine)."""

    centralised: bool = False
    data_transforms: dict[str, DataTransform] = field(default_factory=dict)
    update_transforms: dict[str, UpdateTransform] = field(default_factory=dict)
    monitors: list[RoundMonitor] = field(default_factory=list)
    dropouts: Dropouts | None = None
    resume: bool = True
    stop_after: int | None = None
    on_round: RoundCallback | None = None
    native_eval: bool = True  # also score the final model on each test patient's own grid (SynthRAD)
    figures: bool = True  # the run's own figures (curves, sCT panels); matrix runs that plot their own skip them


@dataclass
class RunResult:
    run_dir: Path
    run: FederatedRun
    metrics: dict[str, Any]
    model: torch.nn.Module


def build_trainers(config: Config, data: FederatedData, options: RunOptions) -> dict[str, LocalTrainer]:
    parts = {CENTRALISED_ID: data.centralised_train()} if options.centralised else dict(data.train)
    mu = config.federation.fedprox_mu if config.federation.strategy == "fedprox" else 0.0
    trainers = {}
    for cid, slices in parts.items():
        if cid in options.data_transforms:
            slices = options.data_transforms[cid](slices)
        trainers[cid] = LocalTrainer(cid, slices, config.model, config.train, config.seed, fedprox_mu=mu,
                                     dp=config.dp, update_transform=options.update_transforms.get(cid),
                                     reproducible=config.reproducible_secrets)
    return trainers


def build_engine(config: Config, data: FederatedData, run_dir: Path, options: RunOptions) -> RoundLoop:
    """The RoundLoop over this process's trainers, with aggregation rule, secure aggregation, recorder and
    monitors wired as the Flower server wires them."""
    return _wire(config, data, run_dir, options)[0]


def _wire(config: Config, data: FederatedData, run_dir: Path,
          options: RunOptions) -> tuple[RoundLoop, InProcessPool]:
    pool = InProcessPool(build_trainers(config, data, options), dict(data.val), dropouts=options.dropouts)
    aggregator = build_aggregator(config, pool.spec, pool.clients(), run_dir, record=not options.centralised,
                                  monitors=options.monitors)
    return RoundLoop(config, pool, aggregator, pool.spec, run_dir), pool


def final_evaluation(model: torch.nn.Module, data: FederatedData, config: Config,
                     native: bool = True) -> dict[str, Any]:
    """Test patients of every training centre and the whole unseen centre(s): model-grid figures at the top
    level, native-grid (SynthRAD) figures under ``native_grid``; ``grids`` says which is which."""
    centres = (config.data.train_centres, config.data.unseen_centres)
    out: dict[str, Any] = {**by_role(evaluate_centres(model, data.test), *centres), "grids": dict(GRIDS)}
    if native:
        records = {c: [data.records[p] for p in pids] for c, pids in data.split.test.items()}
        out["native_grid"] = by_role(evaluate_centres_native(model, records, data.grid, data.percentiles), *centres)
    return out


def train(config: Config, run_dir: Path, data: FederatedData | None = None,
          options: RunOptions | None = None) -> RunResult:
    """Train (or resume) a run and write metrics.json, history, figures and the final model.

    ``options.resume`` continues a run of the same settings and refuses one of other settings;
    ``resume=False`` removes the folder's earlier run first.
    """
    options = options or RunOptions()
    run_dir = Path(run_dir)
    prepare_run_dir(config, run_dir, options.centralised, options.resume)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    data = data or load_federation(config.data, config.seed)
    engine, pool = _wire(config, data, run_dir, options)
    start = time.perf_counter()
    run = engine.run(resume=options.resume, stop_after=options.stop_after, on_round=options.on_round)
    train_seconds = time.perf_counter() - start
    model = pool.model
    engine.spec.load_into(model, run.global_vector)
    finished = run.next_round >= config.train.rounds
    metrics = run_metrics(config, run, pool.runtime, "centralised" if options.centralised else "federated",
                          engine.spec.numel, {c: t.num_examples for c, t in pool.trainers.items()}, train_seconds)
    metrics["data"] = data.summary()
    if config.dp.enabled:
        metrics["dp"] = dp_report(config, pool)
    if finished:
        metrics.update(final_evaluation(model, data, config, options.native_eval))
        save_torch(run_dir / "model.pt", model.state_dict())
        save_model(run_dir / MODEL_FILE, model, config, data.grid)
        if options.figures:
            write_figures(run, model, data, config, run_dir)
    write_json(run_dir / "metrics.json", metrics)
    return RunResult(run_dir, run, metrics, model)


def dp_report(config: Config, pool: InProcessPool) -> dict[str, Any]:
    """(epsilon, delta) of the run's DP setting, for the client with the weakest guarantee."""
    from fedi2i.privacy import epsilon_spent

    worst = 0.0
    for trainer in pool.trainers.values():
        steps = len(trainer.batches(config.train.local_epochs, torch.Generator().manual_seed(0)))
        rate = min(1.0, config.train.batch_size / trainer.num_examples)
        worst = max(worst, epsilon_spent(config.dp, config.train.rounds, steps, rate))
    return {"mode": config.dp.mode, "clip": config.dp.clip, "noise_multiplier": config.dp.noise_multiplier,
            "delta": config.dp.delta, "epsilon": worst,
            "unit": "client update" if config.dp.mode == "update" else "training slice"}


def write_figures(run: FederatedRun, model: torch.nn.Module, data: FederatedData, config: Config,
                  run_dir: Path) -> None:
    fig_dir = run_dir / "figures"
    figures.loss_curve(run.history, fig_dir / "loss.png")
    if any("val" in h for h in run.history):
        figures.validation_curves(run.history, fig_dir / "val_mae.png")
    for centre in config.data.unseen_centres[:1] + config.data.train_centres[:1]:
        if centre in data.test:
            slices = data.test[centre].of_patients(data.test[centre].patients[:1])
            figures.sct_panels(slices, predict(model, slices), fig_dir / f"sct_{centre}.png",
                               title=f"centre {centre} ({'unseen' if centre in config.data.unseen_centres else 'test'})")
