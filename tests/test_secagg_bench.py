"""Smoke test of bench/secagg.py on tiny sizes (the real run is `python bench/secagg.py`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "secagg.py"


def test_bench_runs_on_tiny_vectors(capsys):
    spec = importlib.util.spec_from_file_location("bench_secagg", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = ["--length", "3000", "--clients", "3", "--scale-length", "500", "--scale-clients", "5", "9", "--repeats", "1"]
    assert mod.main(args) == 0
    out = capsys.readouterr().out
    assert "upload bytes per parameter: fedi2i" in out
    assert "SecAgg+ scaling" in out
    assert "added by the active-server defences: consistency round" in out
    if mod.HAVE_FLWR:
        assert "ratio flower_time / ours" in out
