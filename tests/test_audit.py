"""The audit: resumable cells, failures recorded without stopping, results.json schema, self-contained HTML."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fedi2i.attacks.inversion.judge import SEARCH_LIMITED
from fedi2i.audit.run import run_audit
from fedi2i.audit.schema import SCHEMA_VERSION, AuditResults, load_results
from fedi2i.config import Config, load_config


@pytest.fixture()
def audit_config(phantom_root: Path) -> Config:
    return load_config("tiny", {
        "data.root": str(phantom_root),
        "attacks.audit": {"defences": ["none"], "centralised_baseline": False, "poisoning": False},
        "attacks.inversion.methods": ["dlg"], "attacks.inversion.defences": ["none"],
        "attacks.membership.methods": ["fedmia-loss", "loss"],
    })


class Interrupt(Exception):
    pass


def test_audit_resumes_records_failures_and_reports(audit_config: Config, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "audit"
    ran: list[str] = []

    def stop_after_training(cell, entry):
        ran.append(cell.key)
        if cell.key == "train/fedavg-none":
            raise Interrupt  # the audit is killed right after its first cell
    with pytest.raises(Interrupt):
        run_audit(audit_config, out, progress=False, on_cell=stop_after_training)
    assert json.loads((out / "cells" / "train_fedavg-none.json").read_text())["status"] == "ok"
    trained = [out / "cells" / "train_fedavg-none.json", out / "runs" / "fedavg-none" / "metrics.json"]
    stamps = [p.stat().st_mtime_ns for p in trained]

    # second run: the finished training cell is reused, a failing attack is recorded, the audit goes on
    import fedi2i.attacks.membership.run as membership_run

    def broken(*args, **kwargs):
        raise RuntimeError("simulated attack failure")
    monkeypatch.setattr(membership_run, "run_membership", broken)
    seen: dict[str, dict] = {}
    report = run_audit(audit_config, out, progress=False, on_cell=lambda c, e: seen.setdefault(c.key, e))
    assert [p.stat().st_mtime_ns for p in trained] == stamps  # the training run was reused, not redone
    assert seen["train/fedavg-none"]["status"] == "ok"
    assert seen["membership/none"]["status"] == "error"
    assert "simulated attack failure" in seen["membership/none"]["error"]
    assert seen["inversion/dlg-b1-s1-early-none"]["status"] == "ok"  # ran after the failure
    results = json.loads((out / "results.json").read_text())
    assert results["cells"]["membership/none"]["status"] == "error"
    assert "simulated attack failure" in report.read_text()

    # third run without the fault: only the failed cell runs again
    monkeypatch.undo()
    before = results["cells"]
    run_audit(audit_config, out, progress=False)
    results = json.loads((out / "results.json").read_text())
    for key in ("train/fedavg-none", "inversion/dlg-b1-s1-early-none"):
        assert results["cells"][key] == before[key]  # finished cells are not run again
    assert [p.stat().st_mtime_ns for p in trained] == stamps
    _check_schema(load_results(out / "results.json"))
    assert results["cells"]["membership/none"]["status"] == "ok"
    html = (out / "report.html").read_text()
    _check_self_contained(html)
    assert "study" in html and "Summary" in html
    assert (out / "results.csv").read_text().startswith("key,kind,status")


def _check_schema(results: AuditResults) -> None:
    assert results.schema_version == SCHEMA_VERSION
    assert results.cells_ok == results.cells_planned == len(results.cells)
    assert results.section_errors == {} and results.unusable == []
    ranges = {"low to medium", "low to high", "medium to high"}  # an interval that spans two levels
    assert {t.verdict for t in results.summary} <= {"high", "medium", "low", "not measured", SEARCH_LIMITED, *ranges}
    assert {c.status for c in results.study_comparison} <= {"reproduced", "not reproduced", "exceeded",
                                                            "inconclusive", "not measured"}
    assert results.versions["torch"].startswith("2.13.0")


def _check_self_contained(html: str) -> None:
    """No external resource: every src/href is a data URI or an in-page anchor."""
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", html, flags=re.I)
    assert refs, "the report should embed its figures"
    assert all(r.startswith("data:") or r.startswith("#") for r in refs), [r[:40] for r in refs]
    assert "@import" not in html and "url(http" not in html and "<script src" not in html
    assert html.count("data:image/png;base64,") >= 2
