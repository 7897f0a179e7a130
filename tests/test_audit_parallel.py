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
