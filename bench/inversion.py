"""Gradient inversion on the quick-preset U-Net: what each search recovers, side by side, on one recorded
victim round (batch B, one SGD step, early or trained model, no defence).

Variants: DLG and Inverting Gradients (the baselines); the I2I attack from noise (the audit's default until
now) and without its coarse-to-fine pyramid; and the I2I attack started from priors a server could hold (the
unseen centre's slices, never the victim's): the atlas (their mean image, coarse-to-fine), a population
(per image, the public slice that best explains the update), and the population with two restarts
(multi-start). Each line gives the in-mask anatomy margin over other patients with its 95 % interval, the
re-identification rate, and the objective gap (update distance of the reconstruction and of the truth).

Usage: ``.venv/bin/python bench/inversion.py [--batch 1] [--stage early] [--scale 1.0] [--data head]
[--curve docs/inversion-budget.png]``. ``--scale`` multiplies every iteration budget (1.0: the quick preset's
audit budget); ``--data phantom`` runs on procedural phantoms (no head data needed); ``--curve`` writes the
budget curves of the I2I variants (score and distance against iterations; no image of a slice).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from _common import print_header, quick_phantom
from fedi2i.attacks.inversion import InversionSettings, observe, run_attack
from fedi2i.attacks.inversion.assess import assess, checkpoints, planned_iterations
from fedi2i.attacks.inversion.figures import budget_curve_figure
from fedi2i.attacks.inversion.judge import read_cell
from fedi2i.attacks.inversion.run import _update_batch, attacker_prior
from fedi2i.attacks.inversion.victim import VictimSetting, start_model, victim_batch, victim_round
from fedi2i.config import load_config
from fedi2i.data.federation import load_federation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--stage", choices=["early", "trained"], default="early")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every iteration budget")
    parser.add_argument("--data", choices=["head", "phantom"], default="head")
    parser.add_argument("--only", default="", help="comma-separated variant labels to run (default: all)")
    parser.add_argument("--curve", type=Path, default=None, help="write the I2I variants' budget curves here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.data == "head":
        cfg = load_config("quick")
        data = load_federation(cfg.data, cfg.seed, progress=False)
    else:
        cfg, data = quick_phantom(patients_per_centre=8, depth=24)
    client = cfg.data.train_centres[0]
    work = Path(tempfile.mkdtemp(prefix="fedi2i-bench-inv-"))
    setting = VictimSetting(args.batch, 1, args.stage, "none", None, "sgd", cfg.train.lr, cfg.dp.clip, 0)
    start = start_model(cfg, data, args.stage, work, 3)
    run = victim_round(cfg, data, setting, work, start)
    obs = observe(run, start[1], client)
    truth = victim_batch(run, data, client)
    everything = _update_batch(obs, run, data)
    prior = attacker_prior(data, [g.client for g in obs.groups])

    def n(x: int) -> int:
        return max(1, int(round(x * args.scale)))

    base = InversionSettings.from_config(cfg)
    quick = base.i2i.model_copy(update={"level_iterations": n(base.i2i.level_iterations),
                                        "iterations": n(base.i2i.iterations)})

    def i2i(**update: object) -> InversionSettings:
        return base.model_copy(update={"i2i": quick.model_copy(update=update)})

    variants = {
        "dlg": ("dlg", base.model_copy(update={"dlg": base.dlg.model_copy(
            update={"iterations": n(base.dlg.iterations)})})),
        "ig": ("ig", base.model_copy(update={"ig": base.ig.model_copy(update={"iterations": n(base.ig.iterations)})})),
        "i2i random": ("i2i", i2i(init="random")),
        "i2i random, no pyramid": ("i2i", i2i(init="random", levels=1,
                                              iterations=quick.iterations + quick.level_iterations)),
        "i2i atlas": ("i2i", i2i(init="atlas")),
        "i2i population": ("i2i", i2i(init="population")),
        "i2i population x2": ("i2i", i2i(init="population", restarts=2)),
    }
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only.split(",")}
    print(f"quick-preset U-Net ({sum(obs.spec.sizes)} values), {cfg.data.image_size}x{cfg.data.image_size} "
          f"{args.data} slices, centre {client} batch {args.batch}, one SGD step, {args.stage} model, "
          f"{torch.get_num_threads()} torch thread; prior: {prior.describe()}")
    header = (f"{'variant':24s} {'iters':>5s} {'evals':>5s} {'sec':>6s} {'in-mask margin [95% CI]':>28s} "
              f"{'re-id':>9s} {'dist recon':>10s} {'dist truth':>10s} {'gap':>8s} {'improving':>9s} "
              f"{'raw MRI/CT SSIM':>15s}")
    print_header(header)
    curves = {}
    for label, (method, settings) in variants.items():
        at = checkpoints(planned_iterations(method, settings, obs.image_size))
        t0 = time.perf_counter()
        recon = run_attack(obs, method, settings, prior=prior, snapshot_at=at)
        seconds = time.perf_counter() - t0
        judged = assess(obs, recon, truth, data.train[client], everything, settings)
        reading = read_cell({"key": label, "method": method, "batch": args.batch, "defence": "none", **judged})
        assert reading is not None
        ci = ("no interval" if reading.low is None or reading.high is None
              else f"[{reading.low:+.3f}, {reading.high:+.3f}]")
        gap = judged["objective_gap"]
        raw = judged["raw"]
        print(f"{label:24s} {recon.iterations:5d} {int(recon.extra.get('evaluations', 0)):5d} {seconds:6.1f} "
              f"{reading.modality.upper():>4s} {reading.margin:+.3f} {ci:>16s} "
              f"{reading.reid_top1:4.0%}/{reading.reid_chance:3.0%} {gap['reconstruction']:10.4f} "
              f"{gap['truth']:10.2e} {gap['ratio']:8.2g} {str(judged['budget_curve']['still_improving']):>9s} "
              f"{raw['mri_ssim']:7.3f}/{raw['ct_ssim']:.3f}")
        if method == "i2i":
            curves[label] = judged["budget_curve"]["points"]
    if args.curve and curves:
        budget_curve_figure(curves, args.curve, f"I2I searches, batch {args.batch}, {args.stage} model "
                                                f"({args.data} data, quick preset)")
        print(f"budget curves: {args.curve}")


if __name__ == "__main__":
    main()
