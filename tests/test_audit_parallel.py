"""A parallel audit (worker processes, cells after the runs they need) writes the numbers of a serial one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.cli_harness import run_cli

TIMING = {"generated", "seconds", "train_seconds", "signal_seconds", "iterations_per_second"}
# the smallest matrix with a training run, an attack that reads it (inversion of the trained model) and an
# independent poisoning run: two workers run training and poisoning side by side, then the inversion
MATRIX = ["--set", "attacks.audit.defences=[none]", "--set", "attacks.audit.centralised_baseline=false",
          "--set", "attacks.audit.membership=false", "--set", "attacks.inversion.methods=[dlg]",
          "--set", "attacks.inversion.defences=[none]", "--set", "attacks.inversion.stages=[trained]",
          "--set", "attacks.poison.rules=[fedavg]", "--set", "attacks.poison.baseline=false"]


def _numbers(results: dict[str, Any], out: Path) -> Any:
    """results.json without timings, and with the audit folder's own path taken out."""
    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in TIMING}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x.replace(str(out), "<out>") if isinstance(x, str) else x
    return strip(results)


def test_two_workers_write_the_same_results_as_one(phantom_root: Path, tmp_path: Path) -> None:
    outputs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        result = run_cli("audit", "--preset", "tiny", "--data", phantom_root, "--out", out,
                         "--workers", str(workers), *MATRIX, timeout=600)
        assert result.code == 0, str(result)
        assert ("on 2 worker processes" in result.output) == (workers == 2), str(result)
        outputs[workers] = _numbers(json.loads((out / "results.json").read_text()), out)
    serial, parallel = outputs[1], outputs[2]
    assert serial["cells_ok"] == serial["cells_planned"] == 3  # the inversion ran after its training run
    assert "inversion/dlg-b1-s1-trained-none" in serial["cells"]
    assert parallel == serial


def test_cells_heading_the_longest_chain_are_handed_out_first() -> None:
    from fedi2i.audit.plan import AuditCell
    from fedi2i.audit.run import critical_order

    cells = [AuditCell("train/centralised", "train", "c"), AuditCell("train/fedavg-none", "train", "n"),
             AuditCell("poison/a", "poison", "p")]
    cells += [AuditCell(f"inversion/{i}", "inversion", "i", needs=["train/fedavg-none"]) for i in range(3)]
    cells.append(AuditCell("inversion/later", "inversion", "i", after=["inversion/0"]))
    order = [c.key for c in critical_order(cells)]
    # the run the attacks read goes first, then the other training run, then the rest by chain length
    assert order[:2] == ["train/fedavg-none", "train/centralised"]
    assert order.index("inversion/0") < order.index("inversion/1")  # longer chain (one cell waits on it)
    # a resumed audit orders by the seconds its own cells took
    assert [c.key for c in critical_order(cells, {"poison/a": 1e4})][0] == "poison/a"
