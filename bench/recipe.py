"""Which training recipe learns bone fastest on a CPU: unseen-centre quality per CPU-minute.

Each option is a set of config overrides on the quick preset (64x64 slices of the built-in heads, the
160k-parameter U-Net). Every option trains centralised (one client holding every training slice) and
FedAvg (one client per centre) for the same number of epochs, one torch thread, and is scored on the
unseen centre: whole-mask MAE, bone MAE (CT > 250 HU) and bone Dice (fedi2i.tissue_metrics). CPU-minutes
are the process's CPU time for training (train_cpu_min) and for training plus the final evaluation
(cpu_min), which a busy machine does not inflate the way wall time is.

    python bench/recipe.py                          # the table in docs/recipe.md (slow: ~1 h on one core)
    python bench/recipe.py --options base,recipe --epochs 15 --runs fedavg
    python bench/recipe.py --list
    python bench/recipe.py --floor --image-size 96   # what the image size alone allows on the native grid

Results are also appended as JSON lines to --jsonl, so a long table can be built in pieces.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fedi2i.config import load_config
from fedi2i.data.federation import load_federation
from fedi2i.training import RunOptions, train

_WEIGHTED = {"train.bone_weight": 3.0, "train.background_weight": 0.1}
_RECIPE = {"train.batch_size": 4, **_WEIGHTED, "train.lr_schedule": "onecycle", "train.augment": ["flip", "gamma"]}

# option name -> overrides on the quick preset's original recipe (Adam 3e-3, cosine, batch 16, plain L1)
BASE: dict[str, Any] = {"train.lr": 0.003, "train.lr_schedule": "cosine", "train.batch_size": 16,
                        "train.bone_weight": 1.0, "train.background_weight": 1.0, "train.edge_weight": 0.0,
                        "train.augment": [], "train.optimizer": "adam", "model.norm": "batch",
                        "model.num_res_units": 0}
OPTIONS: dict[str, dict[str, Any]] = {
    "base": {},
    "batch8": {"train.batch_size": 8},
    "batch4": {"train.batch_size": 4},
    "body-l1": {"train.background_weight": 0.1},
    "bone-weight3": _WEIGHTED,
    "bone-weight3-edge": {**_WEIGHTED, "train.edge_weight": 1.0},
    "onecycle": {"train.lr_schedule": "onecycle"},
    "onecycle-lr0.01": {"train.lr_schedule": "onecycle", "train.lr": 0.01},
    "adamw-wd1e-4": {"train.optimizer": "adamw", "train.weight_decay": 1e-4},
    "sgd-momentum": {"train.optimizer": "sgd", "train.momentum": 0.9, "train.lr": 0.05},
    "group-norm": {"model.norm": "group"},
    "instance-norm": {"model.norm": "instance"},
    "res-units1": {"model.num_res_units": 1},
    "augment": {"train.augment": ["flip", "gamma"]},
    "stride2": {"data.slice_stride": 2},
    "channels-last": {"train.channels_last": True},
    "recipe": _RECIPE,
    "recipe-lr0.006": {**_RECIPE, "train.lr": 0.006},
    "recipe-lr0.01": {**_RECIPE, "train.lr": 0.01},
    "recipe-lr0.006-group-norm": {**_RECIPE, "train.lr": 0.006, "model.norm": "group"},
    "recipe-batch8": {**_RECIPE, "train.batch_size": 8},
    "recipe-batch2": {**_RECIPE, "train.batch_size": 2},
    "recipe-no-augment": {**_RECIPE, "train.augment": []},
    "recipe-cosine": {**_RECIPE, "train.lr_schedule": "cosine"},
}


def run_one(option: str, mode: str, epochs: int, out: Path, preset: str) -> dict[str, Any]:
    """Train one option in one mode and return its unseen-centre scores and CPU time."""
    torch.set_num_threads(1)
    overrides = {**BASE, **OPTIONS[option], "train.rounds": epochs, "train.threads": 1,
                 "federation.record_rounds": "none", "federation.eval_every": 0}
    cfg = load_config(preset, overrides)
    data = load_federation(cfg.data, cfg.seed, progress=False)
    cpu, wall = time.process_time(), time.perf_counter()
    last_round_cpu = [cpu]
    options = RunOptions(centralised=mode == "centralised", resume=False,
                         on_round=lambda _r, _e: last_round_cpu.append(time.process_time()))
    result = train(cfg, out / f"{option}-{mode}", data, options)
    train_cpu, cpu, wall = last_round_cpu[-1] - cpu, time.process_time() - cpu, time.perf_counter() - wall
    unseen = next(iter(result.metrics["unseen"].values()))
    row = {"option": option, "mode": mode, "epochs": epochs, "mae": unseen["mae"], "ssim": unseen["ssim"],
           "mae_bone": unseen["mae_bone"], "mae_soft": unseen["mae_soft"], "mae_air": unseen["mae_air"],
           "dice_bone": unseen["dice_bone"], "cpu_min": cpu / 60, "train_cpu_min": train_cpu / 60,
           "wall_min": wall / 60}
    native = result.metrics.get("native_grid", {}).get("unseen")
    if native:  # the same sCT resampled onto each patient's CT grid (SynthRAD scoring)
        nat = next(iter(native.values()))
        row.update({f"native_{k}": nat.get(k) for k in ("mae", "mae_bone", "dice_bone")})
    return row


def resolution_floor(preset: str, image_size: int | None = None) -> dict[str, float]:
    """Native-grid scores of a *perfect* model-grid sCT: the CT itself, resampled onto the model grid and
    back (what the data layer does to an sCT). No model trained at this image size can score better on the
    patient's own CT grid, so it separates what the recipe limits from what the image size limits."""
    import numpy as np

    from fedi2i.data.geometry import to_native
    from fedi2i.data.slices import to_model_grid, unit_to_hu
    from fedi2i.data.synthrad import load_patient
    from fedi2i.metrics import mae
    from fedi2i.tissue_metrics import tissue_metrics

    cfg = load_config(preset, {"data.image_size": image_size} if image_size else None)
    data = load_federation(cfg.data, cfg.seed, progress=False)
    per_patient = {}
    for pid in data.split.test[cfg.data.unseen_centres[0]]:
        vol = load_patient(data.records[pid])
        on_grid = to_model_grid(vol, data.grid, data.percentiles)
        back = to_native(np.asarray(unit_to_hu(on_grid.ct)), on_grid.grid, vol.image("ct"), default=-1024.0)
        per_patient[pid] = {"mae": mae(vol.ct, back, vol.mask), **tissue_metrics(vol.ct, back, vol.mask)}
    return {k: float(np.nanmean([m[k] for m in per_patient.values()])) for k in ("mae", "mae_bone", "dice_bone")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--options", default=",".join(OPTIONS), help="comma-separated option names")
    parser.add_argument("--runs", default="centralised,fedavg")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--jsonl", type=Path, default=None, help="append each result here as one JSON line")
    parser.add_argument("--list", action="store_true", help="print the options and their overrides")
    parser.add_argument("--floor", action="store_true",
                        help="print the native-grid scores of the CT itself passed through the model grid")
    parser.add_argument("--image-size", type=int, default=None, help="with --floor: another model grid size")
    args = parser.parse_args()
    if args.floor:
        f = resolution_floor(args.preset, args.image_size)
        print(f"{args.preset}, image size {args.image_size or 'of the preset'}: CT -> model grid -> native grid, unseen centre: MAE {f['mae']:.1f} HU, "
              f"bone MAE {f['mae_bone']:.0f} HU, bone Dice {f['dice_bone']:.3f}")
        return
    if args.list:
        for name, over in OPTIONS.items():
            print(f"{name:20s} {over}")
        return
    names = [n for n in args.options.split(",") if n]
    unknown = sorted(set(names) - set(OPTIONS))
    if unknown:
        parser.error(f"unknown option(s) {unknown}; see --list")
    out = Path(tempfile.mkdtemp(prefix="fedi2i-bench-recipe-"))
    print(f"{args.preset} preset, {args.epochs} epochs, unseen centre, one thread")
    print("| option | run | MAE (HU) | bone MAE (HU) | bone Dice | training CPU-min |")
    print("|---|---|---|---|---|---|")
    for name in names:
        for mode in args.runs.split(","):
            r = run_one(name, mode, args.epochs, out, args.preset)
            print(f"| {name} | {mode} | {r['mae']:.1f} | {r['mae_bone']:.0f} | {r['dice_bone']:.3f} "
                  f"| {r['train_cpu_min']:.2f} |", flush=True)
            if args.jsonl:
                with args.jsonl.open("a") as fh:
                    fh.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
