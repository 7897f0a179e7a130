"""Inversion judged soundly: the in-mask score reads anatomy, not air; re-identification; the interval is
clustered by patient; the verdict says "search-limited" when the truth explains the update far better; the
budget curve and the objective gap are recorded; the attacker's prior never holds the victim's slices."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from scipy import ndimage

from fedi2i.attacks.inversion.anatomy import Candidates, margin_interval, score_item, summarise_items
from fedi2i.attacks.inversion.judge import LEAK_MARGIN, SEARCH_LIMITED, read_cell
from fedi2i.audit.findings import summarise
from fedi2i.audit.schema import InversionResult
from fedi2i.data.slices import SliceSet
from fedi2i.errors import ConfigError

SIZE, LEVELS, PATIENTS = 32, 4, 6
BOX = (-0.1, 1.5)


def _centre(seed: int = 0) -> SliceSet:
    """PATIENTS heads of LEVELS slices each: a disk of smooth patient-specific texture on a dark background
    (MRI about [0, 1], CT in [-1, 1]); neighbouring levels of a patient differ a little."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    mask = ((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < (SIZE * 0.38) ** 2).astype(np.float32)
    mr, ct, patient, index = [], [], [], []
    for p in range(PATIENTS):
        base = ndimage.gaussian_filter(rng.normal(size=(SIZE, SIZE)), 2.0)
        for z in range(LEVELS):
            tex = base + 0.15 * ndimage.gaussian_filter(rng.normal(size=(SIZE, SIZE)), 2.0)
            tex = (tex - tex.min()) / (tex.max() - tex.min())
            mr.append(mask * (0.2 + 0.8 * tex))
            ct.append(np.where(mask > 0, 1.6 * tex - 0.7, -0.99))
            patient.append(f"P{p}")
            index.append(z)
    as_t = lambda a: torch.tensor(np.stack(a)[:, None], dtype=torch.float32)  # noqa: E731
    return SliceSet(as_t(mr), as_t(ct), as_t([mask] * len(mr)), patient, torch.tensor(index), ["A"] * len(mr))


@pytest.fixture(scope="module")
def centre() -> tuple[SliceSet, Candidates]:
    slices = _centre()
    return slices, Candidates.from_slices(slices)


def _score(cands: Candidates, row: int, mr: np.ndarray, ct: np.ndarray):
    return score_item(cands, row, mr, ct, BOX)


def test_in_mask_score_ignores_the_background(centre) -> None:
    slices, cands = centre
    rng = np.random.default_rng(1)
    row = 9  # patient P2, level 1
    mr, ct, mask = cands.mr[row], cands.ct[row], cands.mask[row]
    noisy_mr = np.where(mask, mr, rng.uniform(*BOX, mr.shape))
    noisy_ct = np.where(mask, ct, rng.uniform(-1, 1, ct.shape))
    empty_mr, empty_ct = np.full_like(mr, mr.min()), np.full_like(ct, ct.min())

    right = _score(cands, row, noisy_mr, noisy_ct)  # correct anatomy, noisy background
    assert right.margin("mri", "ssim") > 0.3 and right.margin("ct", "ssim") > 0.3 and right.rank("mri") == 1
    shifted = _score(cands, row, np.roll(noisy_mr, 2, axis=1), np.roll(noisy_ct, 2, axis=1))
    assert shifted.margin("mri", "ssim") > 0.3  # anatomy two pixels off is still this patient's
    empty = _score(cands, row, empty_mr, empty_ct)  # no anatomy: at the reference (chance), not above it
    assert abs(empty.margin("mri", "ssim")) < LEAK_MARGIN and empty.margin("mri", "corr") == 0.0
    other = cands.find("P4", cands.level[row])  # another patient's slice at the same level
    theirs = _score(cands, row, cands.mr[other], cands.ct[other])
    assert theirs.margin("mri", "ssim") <= 0.0 and theirs.margin("ct", "ssim") <= 0.0 and theirs.rank("mri") > 1


def test_reidentification_rank_on_a_constructed_case(centre) -> None:
    _, cands = centre
    own, other = 5, cands.find("P3", cands.level[5])  # P1 at level 1, and P3 at that level
    close = _score(cands, own, 0.7 * cands.mr[own] + 0.3 * cands.mr[other], 0.7 * cands.ct[own] + 0.3 * cands.ct[other])
    far = _score(cands, own, 0.2 * cands.mr[own] + 0.8 * cands.mr[other], 0.2 * cands.ct[own] + 0.8 * cands.ct[other])
    assert close.rank("mri") == 1 and far.rank("mri") > 1
    summary = summarise_items([close, far], n_boot=200)
    reid = summary["mri"]["reid"]  # type: ignore[index]
    assert reid["top1"] == 0.5 and reid["chance"] == pytest.approx(1 / PATIENTS) and reid["patients"] == PATIENTS


def test_interval_is_clustered_by_patient_and_needs_reference_patients(centre) -> None:
    _, cands = centre
    item = _score(cands, 13, 0.6 * cands.mr[13] + 0.2, 0.6 * cands.ct[13])
    one = margin_interval([item], "mri", "ssim", n_boot=400)
    assert one[1] is not None and one[1] < one[0] < one[2]  # one slice: an interval over reference patients
    # a patient's slices are one cluster: the same slice counted three times buys no precision
    assert margin_interval([item, item, item], "mri", "ssim", n_boot=400) == pytest.approx(one)
    few = type(item)(item.patient, item.own, dict(list(item.reference.items())[:2]))
    assert margin_interval([few], "mri", "ssim")[1:] == (None, None)


def _cell(key: str, method: str, margin: float, ci: tuple[float, float] | None, ratio: float,
          defence: str = "none") -> dict[str, Any]:
    entry = {"modality": "mri", "ssim": {"margin": margin}, "reid": {"top1": 0.0, "chance": 0.125}}
    result = InversionResult(
        key=key, method=method, batch=1, defence=defence, mri_ssim=0.3, mri_psnr=9.0, ct_ssim=0.5, ct_psnr=9.0,
        anatomy={"deciding": {"modality": "mri", "metric": "ssim", "margin": margin, "ci95": list(ci) if ci else None},
                 "mri": entry},
        objective_gap={"reconstruction": 0.2, "truth": 0.2 / ratio, "ratio": ratio, "large": ratio >= 2})
    return {"kind": "inversion", "status": "ok", "result": result.to_dict()}


def _findings(cells: dict[str, dict[str, Any]]):
    threats, comps = summarise(cells)
    threat = next(t for t in threats if t.threat.startswith("Gradient inversion"))
    return threat, {c.finding.split(" (")[0]: c for c in comps}


def test_verdict_reads_search_limited_with_a_large_objective_gap() -> None:
    dlg = _cell("dlg", "dlg", 0.0, (-0.01, 0.01), 3e5)
    # nothing recovered, and the truth explains the update 1e5 times better: not "low"
    limited = {"inversion/dlg": dlg, "inversion/i2i": _cell("i2i", "i2i", 0.01, (-0.01, 0.03), 1e5)}
    threat, comps = _findings(limited)
    assert threat.verdict == SEARCH_LIMITED and "search-limited" in threat.exposure
    assert comps["Stronger inversion than DLG"].status == "inconclusive"
    assert comps["DLG recovers only coarse anatomy"].status == "reproduced"
    # the same margin from a search that found an answer as good as the truth: low
    done = {"inversion/dlg": _cell("dlg", "dlg", 0.0, (-0.01, 0.01), 1.1),
            "inversion/i2i": _cell("i2i", "i2i", 0.01, (-0.01, 0.03), 1.2)}
    threat, comps = _findings(done)
    assert threat.verdict == "low" and comps["Stronger inversion than DLG"].status == "reproduced"
    # an interval across the leak figure decides nothing
    straddle = {**done, "inversion/i2i": _cell("i2i", "i2i", 0.06, (0.02, 0.10), 1.2)}
    threat, comps = _findings(straddle)
    assert threat.verdict == "low to medium" and comps["Stronger inversion than DLG"].status == "inconclusive"
    # anatomy shown with the whole interval: a leak, whatever the gap (it is a lower bound)
    leak = {**limited, "inversion/i2i": _cell("i2i", "i2i", 0.25, (0.12, 0.33), 1e5)}
    threat, comps = _findings(leak)
    assert threat.verdict == "medium to high" and comps["Stronger inversion than DLG"].status == "exceeded"
    assert threat.intervals["i2i"] == [0.25, 0.12, 0.33]
    # DLG with detail beyond coarse anatomy exceeds the study
    _, comps = _findings({"inversion/dlg": _cell("dlg", "dlg", 0.3, (0.22, 0.4), 1.0)})
    assert comps["DLG recovers only coarse anatomy"].status == "exceeded"


def test_defence_row_and_cells_scored_before_the_in_mask_score() -> None:
    cells = {"inversion/i2i": _cell("i2i", "i2i", 0.3, (0.22, 0.4), 1.0),
             "inversion/i2i-sa": _cell("i2i-sa", "i2i", 0.0, (-0.02, 0.02), 1.0, "secagg"),
             "inversion/i2i-dp": _cell("i2i-dp", "i2i", 0.1, (0.06, 0.14), 1.0, "dp")}
    threat, _ = _findings(cells)
    assert threat.verdict == "high" and threat.defence == "secure aggregation" and threat.with_defence.startswith("low")
    old = InversionResult(key="old", method="i2i", batch=1, defence="none", mri_ssim=0.3, ct_ssim=0.7,
                          background={"mri_ssim": 0.35, "ct_ssim": 0.8})
    assert read_cell(old.to_dict()) is None
    threat, _ = _findings({"inversion/old": {"kind": "inversion", "status": "ok", "result": old.to_dict()}})
    assert threat.verdict == "not measured" and "delete their cells/inversion files" in threat.exposure


@pytest.fixture(scope="module")
def small(phantom_root: Path):
    from fedi2i.config import load_config
    from fedi2i.data.federation import load_federation

    config = load_config("tiny", {"data.root": str(phantom_root), "data.image_size": 16})
    return config, load_federation(config.data, config.seed)


def test_cell_records_budget_curve_gap_and_prior(small, tmp_path: Path) -> None:
    """A real cell: the snapshots at the budget checkpoints are scored, the truth explains the update exactly
    (exact replay) and far better than a 16-iteration search, and the population prior is the unseen centre's."""
    from fedi2i.attacks.inversion import InversionCell, InversionSettings, run_inversion_cell
    from fedi2i.audit.report_inversion import CURVE_FILE, section_inversion

    config, data = small
    settings = InversionSettings(i2i={"levels": 1, "iterations": 16, "init": "population", "population": 4},
                                 figures=False)
    result = run_inversion_cell(config, data, InversionCell("i2i", 1, 1, "early", "none"), tmp_path,
                                settings=settings)
    points = result["budget_curve"]["points"]
    assert [p["iteration"] for p in points] == [1, 2, 4, 8, 16]
    assert all(np.isfinite(p["distance"]) and np.isfinite(p["best"]) for p in points)
    assert isinstance(result["budget_curve"]["still_improving"], bool)
    gap = result["objective_gap"]
    assert gap["truth"] < 1e-4 < gap["reconstruction"] and gap["large"]
    assert points[-1]["distance"] == gap["reconstruction"]
    assert "centre(s) E" in result["prior"]["source"]
    assert read_cell(result).verdict == SEARCH_LIMITED or read_cell(result).leak
    inputs = SimpleNamespace(cells={"inversion/x": {"kind": "inversion", "status": "ok", "result": result}},
                             out_dir=tmp_path)
    html = section_inversion(inputs)
    assert "search-limited" in html and (tmp_path / "inversion" / CURVE_FILE).is_file()


def test_prior_never_holds_an_attacked_centre(small) -> None:
    from fedi2i.attacks.inversion.run import attacker_prior

    _, data = small
    prior = attacker_prior(data, sorted(data.train))
    assert set(prior.centres) == {"E"} and not set(prior.patients) & {p for s in data.train.values() for p in s.patient}
    with pytest.raises(ConfigError, match="attacked centre"):
        prior.check_disjoint(["E"])
