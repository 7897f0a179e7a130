"""Membership-inference signal throughput: candidate slices scored per second, over all clients and all
recorded rounds, for the loss signal and the gradient signal (per-sample gradients by torch.func vmap,
next to the same gradients one backward per slice).

A short quick-preset-sized federation (64x64 slices, the quick U-Net) on the phantom is trained with
every round recorded, then each signal is timed on one fixed candidate list, as run_membership does.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from _common import quick_phantom
from fedi2i.attacks.membership import build_candidates, collect_signals
from fedi2i.attacks.membership.collect import probe_for
from fedi2i.fl.observer import ServerRecord
from fedi2i.training import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-patient", type=int, default=6, help="candidate slices per patient")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (on a busy 2-core machine one thread is much faster than two)")
    args = parser.parse_args()
    cfg, data = quick_phantom(patients_per_centre=6, overrides={
        "train.rounds": args.rounds, "federation.eval_every": 0, "federation.record_rounds": "all",
        "train.threads": args.threads})
    run_dir = Path(tempfile.mkdtemp(prefix="fedi2i-bench-mia-"))
    train(cfg, run_dir, data)
    torch.set_num_threads(args.threads)
    record = ServerRecord(run_dir)
    rounds, clients = record.rounds(), sorted(data.train)
    cands = build_candidates(data, args.per_patient, seed=0)
    n = len(cands)

    timings = {}
    for family in ("loss_target", "grad"):
        start = time.perf_counter()
        collect_signals(record, rounds, clients, cands, {family})
        timings[family] = time.perf_counter() - start

    # reference: the same per-sample gradients, one backward per slice, on one round (then scaled)
    probe = probe_for(record)
    probe.load(record.round(rounds[0]).global_vector)
    start = time.perf_counter()
    for _ in probe.gradients_loop(cands.slices.mr, cands.slices.ct):
        pass
    loop_seconds = (time.perf_counter() - start) * len(rounds)

    models = len(rounds) * len(clients)
    print(f"{n} candidate slices (64x64, {args.per_patient}/patient), {len(clients)} clients x {len(rounds)} "
          f"recorded rounds, {probe.param_mask.sum().item()} parameters, {args.threads} thread(s)")
    print(f"loss signal     : {n / timings['loss_target']:8.1f} candidates/s  "
          f"({n * models / timings['loss_target']:8.1f} slice-model evaluations/s)")
    print(f"gradient (vmap) : {n / timings['grad']:8.1f} candidates/s  "
          f"(one per-sample gradient per round, cosine with every client's update)")
    print(f"gradient (loop) : {n / loop_seconds:8.1f} candidates/s  (one backward per slice)")
    print(f"vmap / loop speed-up: {loop_seconds / timings['grad']:.2f}x")


if __name__ == "__main__":
    main()
