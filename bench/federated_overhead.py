"""Wall time of a federated run vs centralised training over the same slices and optimiser steps.

Both go through the same engine: centralised is one client holding every training slice; federated is
one client per centre with FedAvg. Same rounds, same local epochs, so the number of optimiser steps is
the same (up to one partial batch per centre). The ratio is federated / centralised (goal <= 1.10).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from _common import quick_phantom
from fedi2i.training import RunOptions, train


def main() -> None:
    cfg, data = quick_phantom(overrides={"train.rounds": 4, "federation.eval_every": 0,
                                         "federation.record_rounds": "none"})
    out = Path(tempfile.mkdtemp(prefix="fedi2i-bench-run-"))
    timings = {}
    for repeat in range(2):
        for mode in ("centralised", "federated"):
            result = train(cfg, out / f"{mode}-{repeat}", data, RunOptions(centralised=mode == "centralised"))
            # training rounds only: the final evaluation and figures are the same work in both modes
            timings.setdefault(mode, []).append(result.metrics["train_seconds_this_call"])
    fed, cen = min(timings["federated"]), min(timings["centralised"])
    slices = sum(len(s) for s in data.train.values())
    print(f"{slices} training slices, {cfg.train.rounds} rounds x {cfg.train.local_epochs} local epoch(s), "
          f"4 centres vs 1 pooled client")
    print(f"centralised: {cen:6.2f} s   federated (FedAvg, 4 clients): {fed:6.2f} s")
    print(f"ratio federated/centralised: {fed / cen:.3f}  (goal <= 1.10)")


if __name__ == "__main__":
    main()
