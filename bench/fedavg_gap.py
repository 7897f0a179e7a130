"""Where FedAvg's quality gap to centralised training comes from, measured on the quick preset.

Four runs over the same training patients, the same number of epochs and the same optimiser settings:

- ``centralised``: one client holding every training slice (the baseline of the engine issue);
- ``centralised-large-batch``: the same with the batch FedAvg effectively averages over
  (batch size x number of centres);
- ``fedavg``: one client per centre (non-IID: each centre has its own scanner);
- ``fedavg-iid``: FedAvg over a random re-partition of the same slices into equally many clients, which
  removes the centres' heterogeneity and keeps everything else.

If ``fedavg`` ~ ``fedavg-iid`` ~ ``centralised-large-batch``, the gap is the large-batch effect of
averaging (one round moves the model about as far as one client's local steps), not heterogeneity.
Prints the unseen-centre metrics of each run and the ratios. Uses the built-in head data (built on first
use). ``--epochs`` sets rounds (federated) = epochs (centralised).
"""

from __future__ import annotations

import argparse
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from fedi2i.config import load_config
from fedi2i.data.federation import FederatedData, load_federation
from fedi2i.data.slices import SliceSet
from fedi2i.training import RunOptions, train
from recipe import BASE as OLD_RECIPE

RUNS = ("centralised", "centralised-large-batch", "fedavg", "fedavg-iid")


def iid_partition(data: FederatedData, seed: int) -> dict[str, SliceSet]:
    """The pooled training slices dealt at random to as many clients as there are centres, same sizes."""
    pooled = data.centralised_train()
    order = torch.randperm(len(pooled), generator=torch.Generator().manual_seed(seed))
    out, start = {}, 0
    for cid in sorted(data.train):
        n = len(data.train[cid])
        out[cid] = pooled.select(order[start:start + n])
        start += n
    return out


def run_one(name: str, epochs: int, out: Path, recipe: str = "old") -> tuple[str, dict[str, float], float]:
    torch.set_num_threads(1)
    overrides = {"train.rounds": epochs, "federation.record_rounds": "none", "federation.eval_every": 0}
    cfg = load_config("quick", {**(OLD_RECIPE if recipe == "old" else {}), **overrides})
    data = load_federation(cfg.data, cfg.seed, progress=False)
    if name == "centralised-large-batch":
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(
            update={"batch_size": cfg.train.batch_size * len(data.train)})})
    if name == "fedavg-iid":
        data.train = iid_partition(data, cfg.seed)
    result = train(cfg, out / name, data, RunOptions(centralised=name.startswith("centralised"), resume=False))
    unseen = next(iter(result.metrics["unseen"].values()))
    return name, unseen, result.metrics["train_seconds_this_call"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {RUNS}")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (one thread each)")
    parser.add_argument("--recipe", choices=("old", "quick"), default="old",
                        help="old: the recipe these numbers were measured with (batch 16, plain L1, BatchNorm); "
                             "quick: the quick preset's current recipe (docs/recipe.md)")
    args = parser.parse_args()
    names = [n for n in args.runs.split(",") if n]
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        parser.error(f"unknown run(s) {unknown}; choose from {RUNS}")
    out = Path(tempfile.mkdtemp(prefix="fedi2i-bench-gap-"))
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        results = {n: (m, s) for n, m, s in pool.map(run_one, names, [args.epochs] * len(names),
                                                        [out] * len(names), [args.recipe] * len(names))}
    print(f"quick preset, {args.recipe} recipe, {args.epochs} epochs (= rounds x 1 local epoch), unseen centre")
    print(f"{'run':26s} {'MAE (HU)':>9s} {'PSNR':>6s} {'SSIM':>6s} {'train s':>8s}")
    for name in names:
        m, s = results[name]
        print(f"{name:26s} {m['mae']:9.1f} {m['psnr']:6.2f} {m['ssim']:6.3f} {s:8.0f}")
    if "centralised" in results:
        base = results["centralised"][0]["mae"]
        for name in names:
            if name != "centralised":
                print(f"MAE ratio {name}/centralised: {results[name][0]['mae'] / base:.3f}  (goal for fedavg <= 1.10)")
    if "fedavg" in results and "centralised-large-batch" in results:
        ratio = results["fedavg"][0]["mae"] / results["centralised-large-batch"][0]["mae"]
        print(f"MAE ratio fedavg/centralised-large-batch: {ratio:.3f}")


if __name__ == "__main__":
    main()
