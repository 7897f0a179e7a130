"""The report is always written: a collapsed poisoning run with non-finite detector scores, a section that
fails, a corrupt cell file; and a majority of malicious centres is labelled and judges nothing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fedi2i.attacks.poisoning.summary import detection_table, guarantee_rows, majority_attack
from fedi2i.audit.report import summary_markdown
from fedi2i.audit.run import run_audit
from fedi2i.audit.schema import load_results
from fedi2i.config import Config, load_config
from fedi2i.errors import RunStateError
from tests.cli_harness import EXIT_RUN_STATE, assert_clear_error, run_cli, tree_hash

POISON = {"attacks": ["update_noise"], "levels": ["high"], "update_noise": {"high": 1.0}, "n_malicious": [2],
          "malicious": ["A", "B"], "rules": ["fedmedian"], "rounds": 2, "eval_every": 2}


@pytest.fixture()
def collapsing_audit(phantom_root: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    """A poisoning-only audit whose attack cell collapses: A and B (half of the 4 clients) send finite
    updates so large that their norms overflow (the detector's scores turn NaN), the median follows them,
    the honest centres' next updates are NaN, and with 2 usable updates of 4 the federation stops."""
    from fedi2i.attacks.poisoning import matrix as matrix_module

    def overflowing(delta: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return torch.full_like(delta, 1e30)

    original = matrix_module.attack_options

    def options(attack, *args, **kwargs):
        if attack == "none":
            return original(attack, *args, **kwargs)
        return {}, {"A": overflowing, "B": overflowing}

    monkeypatch.setattr(matrix_module, "attack_options", options)
    return load_config("tiny", {
        "data.root": str(phantom_root), "attacks.poison": POISON,
        "attacks.audit": {"defences": [], "centralised_baseline": False, "membership": False, "inversion": False}})


def test_collapsed_poisoning_run_still_gets_a_report_and_resumes(collapsing_audit: Config, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "audit"
    report = run_audit(collapsing_audit, out, progress=False)
    cell = json.loads((out / "cells" / "poison_fedmedian__update_noise__high__m2.json").read_text())
    assert cell["status"] == "ok" and cell["result"]["collapsed"]
    running = cell["result"]["detector"]["running"]
    assert any(v is None for v in running["A"]), "the attack should leave non-finite detector scores"

    results = load_results(out / "results.json")  # strict JSON, current schema
    assert results.section_errors == {}
    assert results.cells_ok == 2
    assert [u["key"] for u in results.unusable] == ["poison/fedmedian__update_noise__high__m2"]
    assert "detector scores not finite for A, B" in results.unusable[0]["why"]
    [guarantee] = results.guarantees
    assert guarantee["majority"] and guarantee["guarantee"] == "void"
    html = report.read_text()
    assert "Cells without usable numbers" in html and "2 (majority attack)" in html
    assert "Honest-majority assumptions" in html and "could not be written" not in html
    restores = next(c for c in results.study_comparison if c.finding.startswith("FedMedian restores"))
    assert restores.status == "not measured" and "no verdict" in restores.ours
    assert "| FedMedian restores performance under high noise |" in summary_markdown(results)

    # resume: nothing is recomputed (cell files untouched) and the report is written again
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    report.unlink()
    (out / "results.json").unlink()
    run_audit(collapsing_audit, out, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")} == stamps
    assert report.exists() and load_results(out / "results.json").cells_ok == 2

    # one broken section: the rest of the page and results.json are intact, and the failure is named
    import fedi2i.audit.report as report_module

    def broken(inputs):
        raise RuntimeError("simulated section failure")
    sections = [(name, broken if name == "poisoning" else build) for name, build in report_module.SECTIONS]
    monkeypatch.setattr(report_module, "SECTIONS", sections)
    run_audit(collapsing_audit, out, progress=False)
    html = report.read_text()
    assert "The poisoning section could not be written" in html and "simulated section failure" in html
    assert "Honest-majority assumptions" in html and "Configuration and versions" in html
    results = load_results(out / "results.json")
    assert results.section_errors == {"section poisoning": "RuntimeError: simulated section failure"}
    assert results.cells_ok == 2 and results.study_comparison


def test_corrupt_cell_or_old_results_name_the_file(collapsing_audit: Config, phantom_root: Path,
                                                   tmp_path: Path) -> None:
    out = tmp_path / "audit"
    (out / "cells").mkdir(parents=True)
    bad = out / "cells" / "poison_fedmedian__baseline.json"
    bad.write_text('{"key": ')
    result = run_cli("audit", "--preset", "tiny", "--data", phantom_root, "--out", out, "--quiet",
                     "--set", "attacks.audit.defences=[]", "--set", "attacks.audit.centralised_baseline=false",
                     "--set", "attacks.audit.membership=false", "--set", "attacks.audit.inversion=false")
    assert_clear_error(result, EXIT_RUN_STATE, str(bad), "not valid JSON", "delete it")
    bad.write_text('{"key": "poison/fedmedian__baseline", "kind": "poison", "status": "ok"}')
    with pytest.raises(RunStateError, match=r"poison_fedmedian__baseline\.json.*title"):
        run_audit(collapsing_audit, out, progress=False)
    old = tmp_path / "results.json"
    old.write_text(json.dumps({"preset": "tiny", "cells": {}}))
    with pytest.raises(RunStateError, match=r"results\.json.*schema version 1"):
        load_results(old)


def _poison_row(rule: str, n: int, running: dict[str, list[float | None]], malicious: list[str],
                tolerates: int = 1) -> dict:
    return {"key": f"{rule}-{n}", "rule": rule, "attack": "data_noise" if n else "none",
            "level": "low" if n else "none", "n_malicious": n, "malicious": malicious, "tolerates": tolerates,
            "status": "done", "detector": {"running": running, "flagged": []}}


def test_detection_leaves_out_non_finite_scores_and_labels_majorities() -> None:
    honest = {"C": [0.1, 0.2], "D": [0.3, 0.1]}
    results = [
        _poison_row("fedmedian", 0, {"A": [0.2, 0.3], "B": [0.1, 0.0], **honest}, []),
        _poison_row("fedmedian", 1, {"A": [2.0, 4.0], "B": [0.2, 0.2], **honest}, ["A"]),
        # a collapsed run: B's updates were NaN from round 2, stored as None
        _poison_row("fedmedian", 2, {"A": [2.0, 3.0], "B": [1.0, None], **honest}, ["A", "B"]),
    ]
    table = detection_table(results)
    one, two = (table["attacks"]["data_noise"]["by_level"]["low"][k] for k in ("1", "2"))
    assert one["auc"] == 1.0 and not one["majority"]
    assert two["majority"] and two["n_non_finite"] == 1
    assert two["auc"] == 1.0 and math.isclose(two["margin"], 3.0 - 0.3)  # A alone against the honest
    assert two["auc_per_round"] == [1.0, 1.0]
    assert majority_attack(2, 4) and majority_attack(3, 5) and not majority_attack(2, 5)
    rows = {(g["rule"], g["n_malicious"]): g for g in guarantee_rows(results + [
        _poison_row("fedavg", 1, {"A": [0.0], "B": [0.0], **honest}, ["A"], tolerates=0)])}
    assert rows[("fedmedian", 1)]["guarantee"] == "holds"
    assert rows[("fedmedian", 2)]["guarantee"] == "void" and rows[("fedmedian", 2)]["majority"]
    assert rows[("fedavg", 1)]["guarantee"] == "void" and not rows[("fedavg", 1)]["majority"]
    assert "more than the 0 the rule tolerates" in rows[("fedavg", 1)]["why"]


def test_resuming_an_audit_with_other_settings_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    """A finished cell of another attack budget must not be reported as a result of the new one: the CLI
    refuses the folder, names what changed, and leaves every file as it was. What only picks cells
    (attacks.audit), the label or the data folder's path may change."""
    from fedi2i.audit.store import check_resumable
    from fedi2i.config import config_from_dict, dump_config, set_dotted

    out = tmp_path / "audit"
    (out / "cells").mkdir(parents=True)
    tiny = load_config("tiny")
    dump_config(tiny, out / "config.yaml")
    (out / "cells" / "poison_fedavg__baseline.json").write_text("{}")  # the check reads no cell
    before = tree_hash(out)
    result = run_cli("audit", "--preset", "tiny", "--out", out, "--quiet", "--set", "attacks.poison.rounds=3",
                     "--set", "seed=1")
    assert_clear_error(result, EXIT_RUN_STATE, str(out), "attacks.poison.rounds", "-> 3", "seed: 0 -> 1",
                       "another --out")
    assert tree_hash(out) == before

    raw = tiny.model_dump(mode="json")
    for key, value in (("name", "renamed"), ("attacks.audit.inversion", False), ("data.root", str(tmp_path))):
        set_dotted(raw, key, value)
    check_resumable(out, config_from_dict(raw, source="test"))  # none of these shapes a finished cell
    (out / "cells" / "poison_fedavg__baseline.json").unlink()
    set_dotted(raw, "attacks.poison.rounds", 3)
    check_resumable(out, config_from_dict(raw, source="test"))  # no finished cell: nothing to protect
