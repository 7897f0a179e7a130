"""Slices per second of one training epoch: fedi2i's LocalTrainer vs a bare PyTorch loop, and the CPU
recipe options tried, measured side by side in one run.

fedi2i vs bare: both train the same U-Net (quick preset) with Adam on the same in-memory tensors, batch
by batch in a shuffled order; the ratio fedi2i / bare shows what fedi2i's training path costs (goal >=
0.9). fedi2i trains the quick recipe (weighted loss, flips and gamma, one-cycle schedule); the bare loop
plain L1, so the ratio is a lower bound on the training path's efficiency.

The options tried, each against its own baseline in the same run, epochs taken in turn (slices/s of
wall time, and slices per CPU-second: per core busy, which a shared machine's load changes least):

- torch threads per worker: 1 and 2 (the audit runs one worker per core with 1 thread each);
- channels-last memory format (``train.channels_last``);
- ``torch.compile`` of the bare loop's model on CPU (its compile time is printed apart);
- data as contiguous tensors (what fedi2i keeps: one ``[N, 1, H, W]`` tensor per centre, indexed per
  batch) against a list of per-slice tensors stacked per batch.

``--repeats`` epochs per option after one warm-up epoch; the epoch with the fewest CPU-seconds counts.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import print_header, quick_phantom

from fedi2i.fl.client import LocalTrainer
from fedi2i.models import build_unet


def bare_epoch(model: torch.nn.Module, batches: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
               n: int, batch: int, lr: float, channels_last: bool = False) -> None:
    """One epoch of plain L1 with Adam; ``batches(idx)`` returns the (MR, CT) batch of the indices."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.randperm(n)
    model.train()
    for start in range(0, n, batch):
        mr, ct = batches(order[start:start + batch])
        if channels_last:
            mr = mr.contiguous(memory_format=torch.channels_last)
        loss = F.l1_loss(model(mr), ct)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def epoch_times(run: Callable[[int], None], index: int) -> tuple[float, float]:
    """Wall seconds and CPU-seconds (all threads of this process) of one epoch."""
    wall, cpu = time.perf_counter(), time.process_time()
    run(index)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (needs a C++ compiler)")
    args = parser.parse_args()
    cfg, data = quick_phantom()
    slices = data.centralised_train()
    n, bs, lr = len(slices), cfg.train.batch_size, cfg.train.lr
    contiguous = lambda idx: (slices.mr[idx], slices.ct[idx])  # noqa: E731
    mr_list, ct_list = list(slices.mr.unbind(0)), list(slices.ct.unbind(0))
    stacked = lambda idx: (torch.stack([mr_list[i] for i in idx]), torch.stack([ct_list[i] for i in idx]))  # noqa: E731
    print(f"slices per epoch: {n}, image {cfg.data.image_size}^2, batch {bs}, U-Net {cfg.model.channels}, "
          f"{os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.2f} at start")

    runners: list[tuple[str, int, Callable[[int], None]]] = []  # option, threads, one epoch

    def fedi2i(threads: int, channels_last: bool = False) -> None:
        train_cfg = cfg.train.model_copy(update={"channels_last": channels_last})
        trainer = LocalTrainer("ALL", slices, cfg.model, train_cfg, cfg.seed)
        start = trainer.spec.flatten(trainer.model.state_dict())
        label = "fedi2i LocalTrainer" + (", channels-last" if channels_last else "")
        runners.append((label, threads, lambda r: trainer.fit(start, round_index=r, epochs=1, lr=lr)))

    def bare(threads: int, label: str, batches=contiguous, channels_last: bool = False,  # noqa: ANN001
             compile_model: bool = False) -> None:
        torch.manual_seed(0)
        model = build_unet(cfg.model)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        run_model = torch.compile(model) if compile_model else model
        runners.append((label, threads, lambda r: bare_epoch(run_model, batches, n, bs, lr, channels_last)))

    fedi2i(1)
    bare(1, "bare PyTorch loop")
    fedi2i(2)
    bare(2, "bare PyTorch loop")
    fedi2i(1, channels_last=True)
    bare(1, "bare loop, channels-last", channels_last=True)
    bare(1, "bare loop, per-slice tensors stacked per batch", batches=stacked)
    if not args.no_compile:
        bare(1, "bare loop, torch.compile", compile_model=True)
    # one warm-up epoch each (compilation included), then the options in turn, so that a change of the
    # machine's load during the run reaches every option alike; CPU-seconds are what load changes least
    first: dict[int, float] = {}
    best: dict[int, tuple[float, float]] = {}
    for r in range(args.repeats + 1):
        for i, (label, threads, run) in enumerate(list(runners)):
            torch.set_num_threads(threads)
            try:
                wall, cpu = epoch_times(run, r)
            except Exception as exc:  # noqa: BLE001 - torch.compile needs a working C++ toolchain
                print(f"{label} failed on this machine: {type(exc).__name__}: {str(exc)[:200]}")
                runners[i] = (label, threads, lambda r: None)
                continue
            if r == 0:
                first[i] = wall
            elif cpu > 0 and (i not in best or cpu < best[i][1]):
                best[i] = (wall, cpu)
    torch.set_num_threads(1)
    rows = [(label, threads, n / best[i][0], n / best[i][1], first[i] - best[i][0] if "compile" in label else None)
            for i, (label, threads, _) in enumerate(runners) if i in best]

    base = {t: cpu for label, t, _, cpu, _ in rows if label == "bare PyTorch loop"}
    print()
    print_header(f"{'option':48s} {'threads':>7s} {'slices/s':>9s} {'slices/CPU-s':>12s} "
                 f"{'vs bare, same threads (CPU)':>27s} {'compile s':>9s}")
    for label, threads, speed, per_cpu, compile_s in rows:
        extra = f"{compile_s:9.1f}" if compile_s is not None else f"{'':9s}"
        print(f"{label:48s} {threads:7d} {speed:9.1f} {per_cpu:12.1f} {per_cpu / base[threads]:27.3f} {extra}")
    ours = {t: cpu for label, t, _, cpu, _ in rows if label == "fedi2i LocalTrainer"}
    print(f"\nslices/CPU-s is slices per second per core busy (CPU time of all threads); ratio fedi2i/bare by CPU, "
          f"1 thread: {ours[1] / base[1]:.3f} (goal >= 0.9); 2 threads: {ours[2] / base[2]:.3f}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (the machine is shared: wall slices/s follow its load)")

if __name__ == "__main__":
    main()
