"""Slices per second of one training epoch: fedi2i's LocalTrainer vs a bare PyTorch loop, same run.

Both train the same U-Net (quick preset) with Adam on the same in-memory tensors, batch by batch in
the same shuffled order; the ratio fedi2i / bare shows what fedi2i's training path costs (goal >= 0.9).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from _common import quick_phantom
from fedi2i.fl.client import LocalTrainer
from fedi2i.models import build_unet


def bare_epoch(model: torch.nn.Module, mr: torch.Tensor, ct: torch.Tensor, batch: int, lr: float) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.randperm(len(mr))
    model.train()
    for start in range(0, len(order), batch):
        idx = order[start:start + batch]
        loss = F.l1_loss(model(mr[idx]), ct[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def main(repeats: int = 3) -> None:
    cfg, data = quick_phantom()
    slices = data.centralised_train()
    trainer = LocalTrainer("ALL", slices, cfg.model, cfg.train, cfg.seed)
    start_vector = trainer.spec.flatten(trainer.model.state_dict())
    bare_model = build_unet(cfg.model)
    n = len(slices)
    times = {"fedi2i": [], "bare": []}
    for r in range(repeats + 1):  # first pair is warm-up
        t0 = time.perf_counter()
        trainer.fit(start_vector, round_index=r, epochs=1, lr=cfg.train.lr)
        t1 = time.perf_counter()
        bare_epoch(bare_model, slices.mr, slices.ct, cfg.train.batch_size, cfg.train.lr)
        t2 = time.perf_counter()
        if r:
            times["fedi2i"].append(t1 - t0)
            times["bare"].append(t2 - t1)
    ours, bare = min(times["fedi2i"]), min(times["bare"])
    print(f"slices per epoch: {n}, image {cfg.data.image_size}^2, batch {cfg.train.batch_size}, "
          f"threads {torch.get_num_threads()}")
    print(f"fedi2i LocalTrainer: {n / ours:8.1f} slices/s")
    print(f"bare PyTorch loop  : {n / bare:8.1f} slices/s")
    print(f"ratio fedi2i/bare  : {bare / ours:.3f}  (goal >= 0.9)")


if __name__ == "__main__":
    main()
