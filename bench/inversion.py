"""Gradient inversion on the quick-preset U-Net: iterations per second of each method, and how long
each takes to reach its best SSIM, on one recorded victim round (batch B, one SGD step, early model).

Also runs the I2I attack without its coarse-to-fine pyramid at the same budget, to show what the
pyramid buys. Usage: ``.venv/bin/python bench/inversion.py [--batch 1] [--scale 1.0]`` (``--scale``
multiplies every iteration budget; the default run takes under a minute on a free 2-core machine).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from _common import print_header, quick_phantom
from fedi2i.attacks.inversion import InversionSettings, observe, run_attack, score
from fedi2i.attacks.inversion.victim import VictimSetting, start_model, victim_batch, victim_round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every iteration budget")
    args = parser.parse_args()
    cfg, data = quick_phantom(patients_per_centre=3, depth=24)
    work = Path(tempfile.mkdtemp(prefix="fedi2i-bench-inv-"))
    setting = VictimSetting(args.batch, 1, "early", "none", None, "sgd", cfg.train.lr, cfg.dp.clip, 0)
    run = victim_round(cfg, data, setting, work, start_model(cfg, data, "early", work, 1))
    obs = observe(run, 0, "A")
    truth = victim_batch(run, data, "A")

    def n(x: int) -> int:
        return max(1, int(round(x * args.scale)))

    base = InversionSettings()
    variants = {
        "dlg": ("dlg", base.model_copy(update={"dlg": base.dlg.model_copy(update={"iterations": n(30)})})),
        "ig": ("ig", base.model_copy(update={"ig": base.ig.model_copy(update={"iterations": n(150)})})),
        "i2i": ("i2i", base.model_copy(update={"i2i": base.i2i.model_copy(
            update={"level_iterations": n(25), "iterations": n(150)})})),
        "i2i, no pyramid": ("i2i", base.model_copy(update={"i2i": base.i2i.model_copy(
            update={"levels": 1, "iterations": n(200)})})),
    }
    print(f"quick-preset U-Net ({sum(obs.spec.sizes)} values), {cfg.data.image_size}x{cfg.data.image_size} "
          f"phantom slices, batch {args.batch}, one SGD step, early model, {torch.get_num_threads()} torch threads")
    header = (f"{'method':18s} {'iters':>6s} {'it/s':>7s} {'seconds':>8s} {'best MRI SSIM':>14s} "
              f"{'at iter':>8s} {'time to best (s)':>17s} {'final MRI/CT SSIM':>18s}")
    print_header(header)
    for label, (method, settings) in variants.items():
        total = {"dlg": settings.dlg.iterations, "ig": settings.ig.iterations}.get(
            method, settings.i2i.level_iterations * 4 + settings.i2i.iterations)
        recon = run_attack(obs, method, settings, snapshot_every=max(1, total // 10))
        curve = [(snap, score(truth.mr, truth.ct, snap.mr, snap.ct)["mri_ssim"]) for snap in recon.snapshots]
        best_snap, best = max(curve, key=lambda c: c[1])
        final = score(truth.mr, truth.ct, recon.mr, recon.ct)
        print(f"{label:18s} {recon.iterations:6d} {recon.iterations / recon.seconds:7.2f} {recon.seconds:8.1f} "
              f"{best:14.3f} {best_snap.iteration:8d} {best_snap.seconds:17.1f} "
              f"{final['mri_ssim']:8.3f}/{final['ct_ssim']:.3f}")


if __name__ == "__main__":
    main()
