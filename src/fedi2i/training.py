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
from fedi2i.config import Config, dump_config, load_config, result_fields
from fedi2i.data.federation import FederatedData, load_federation
from fedi2i.data.slices import SliceSet
from fedi2i.evaluate import GRIDS, by_role, evaluate_centres, evaluate_centres_native, predict
from fedi2i.inference import MODEL_FILE, save_model
from fedi2i.fl.client import LocalTrainer, UpdateTransform
from fedi2i.errors import ConfigError, RunStateError
from fedi2i.fl.engine import CHECKPOINT, FederatedEngine, FederatedRun, RoundCallback
from fedi2i.fl.observer import RECORD_DIR
from fedi2i.io import read_json, save_torch, write_json
from fedi2i.fl.server import RoundMonitor, build_aggregator

log = logging.getLogger(__name__)

CENTRALISED_ID = "ALL"
RUN_FILE = "run.json"  # the fingerprint of what shapes the run's results
# Everything a run writes; --fresh removes exactly these (never other files of the folder).
RUN_OUTPUTS = (CHECKPOINT, RUN_FILE, "config.yaml", "history.json", "metrics.json", "model.pt", MODEL_FILE, "figures",
               RECORD_DIR, "attacks")
DataTransform = Callable[[SliceSet], SliceSet]


@dataclass
class RunOptions:
    """What an experiment changes around a plain run (attacks plug in here, not into the engine)."""

    centralised: bool = False
    data_transforms: dict[str, DataTransform] = field(default_factory=dict)
    update_transforms: dict[str, UpdateTransform] = field(default_factory=dict)
    monitors: list[RoundMonitor] = field(default_factory=list)
    dropouts: Callable[[int], dict[str, list[str]] | None] | None = None
    resume: bool = True
    stop_after: int | None = None
    on_round: RoundCallback | None = None
    native_eval: bool = True  # also score the final model on each test patient's own grid (SynthRAD)


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


def build_engine(config: Config, data: FederatedData, run_dir: Path, options: RunOptions) -> FederatedEngine:
    """Wire trainers, aggregation rule, secure aggregation, recorder and monitors for one run."""
    trainers = build_trainers(config, data, options)
    spec = next(iter(trainers.values())).spec
    aggregator = build_aggregator(config, spec, list(trainers), run_dir, record=not options.centralised,
                                  monitors=options.monitors)
    val_sets = {c: s for c, s in data.val.items()}
    return FederatedEngine(config, trainers, aggregator, run_dir, val_sets, options.dropouts)


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


def run_fingerprint(config: Config, centralised: bool) -> dict[str, Any]:
    """The settings that shape a run's results, as flat dotted keys (what a resume must not change)."""
    return {"mode": "centralised" if centralised else "federated", **result_fields(config)}


def recorded_fingerprint(run_dir: Path) -> dict[str, Any] | None:
    """The fingerprint an existing run folder was trained with (None: no run there)."""
    path = run_dir / RUN_FILE
    if path.exists():
        payload = read_json(path)
        if not isinstance(payload, dict) or not isinstance(payload.get("fingerprint"), dict):
            raise RunStateError(f"{path} is not a fedi2i run file; delete it, or start the run over with --fresh")
        return payload["fingerprint"]
    if (run_dir / CHECKPOINT).exists() and (run_dir / "config.yaml").exists():  # a run from before run.json
        try:
            old = load_config(run_dir / "config.yaml")
        except ConfigError as exc:
            raise RunStateError(f"{run_dir / 'config.yaml'} no longer loads ({exc}); "
                                "use another --out, or start over with --fresh") from None
        metrics = run_dir / "metrics.json"
        mode = read_json(metrics).get("mode", "federated") if metrics.exists() else "federated"
        return run_fingerprint(old, mode == "centralised")
    return None


def check_resumable(run_dir: Path, fingerprint: dict[str, Any]) -> None:
    """Refuse, before anything is written, to continue a run folder that holds a run of other settings."""
    old = recorded_fingerprint(run_dir)
    if old is None:
        return
    keys = sorted(set(old) & set(fingerprint))  # a setting added to fedi2i since is not a change
    diffs = [f"{k}: {old[k]} -> {fingerprint[k]}" for k in keys if old[k] != fingerprint[k]]
    if not diffs:
        return
    shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
    raise RunStateError(f"{run_dir} holds a run with other settings ({shown}); pass another --out to keep it, "
                        "or --fresh to replace it")


def clear_run(run_dir: Path) -> None:
    """Remove every output of an earlier run in ``run_dir`` (record rounds and attack results included)."""
    import shutil

    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def prepare_run_dir(config: Config, run_dir: Path, centralised: bool, resume: bool) -> None:
    """Check (resume) or clear (fresh) the folder, then write the run's fingerprint and config."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file, not a folder; name a folder for the run")
    fingerprint = run_fingerprint(config, centralised)
    if resume:
        check_resumable(run_dir, fingerprint)
    elif run_dir.exists():
        clear_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / RUN_FILE, {"fingerprint": fingerprint})
    dump_config(config, run_dir / "config.yaml")


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
    engine = build_engine(config, data, run_dir, options)
    start = time.perf_counter()
    run = engine.run(resume=options.resume, stop_after=options.stop_after, on_round=options.on_round)
    train_seconds = time.perf_counter() - start
    model = engine.final_model(run)
    finished = run.next_round >= config.train.rounds
    metrics: dict[str, Any] = {"rounds_done": run.next_round, "finished": finished,
                               "mode": "centralised" if options.centralised else "federated",
                               "strategy": config.federation.strategy, "secagg": config.secagg.enabled,
                               "dp": config.dp.enabled, "train_seconds_this_call": train_seconds,
                               "reproducible_secrets": config.reproducible_secrets,
                               "num_parameters": engine.spec.numel,
                               "train_slices": {c: t.num_examples for c, t in engine.trainers.items()},
                               "data": data.summary()}
    if config.dp.enabled:
        metrics["dp"] = dp_report(config, engine)
    if finished:
        metrics.update(final_evaluation(model, data, config, options.native_eval))
        save_torch(run_dir / "model.pt", model.state_dict())
        save_model(run_dir / MODEL_FILE, model, config, data.grid)
        write_figures(run, model, data, config, run_dir)
    write_json(run_dir / "history.json", run.history)
    write_json(run_dir / "metrics.json", metrics)
    return RunResult(run_dir, run, metrics, model)


def dp_report(config: Config, engine: FederatedEngine) -> dict[str, Any]:
    """(epsilon, delta) of the run's DP setting, for the client with the weakest guarantee."""
    from fedi2i.privacy import epsilon_spent

    worst = 0.0
    for trainer in engine.trainers.values():
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
