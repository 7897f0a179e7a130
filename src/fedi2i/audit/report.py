"""The audit report: report.html (self-contained), results.json and results.csv.

The report is always written. Every part (the poisoning tables, the findings, each HTML section, the CSV)
is built on its own: a part that fails is replaced by a note naming it and its error, and is listed under
``section_errors`` in results.json, while every other part is written as usual. A section is a function
of ``ReportInputs`` returning HTML, listed in ``SECTIONS`` in page order; adding one is one entry there.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fedi2i.audit import html as H, report_membership
from fedi2i.audit.findings import (Comparison, Threat, membership_aucs, poison_effects, quality, summarise,
                                   unusable_numbers)
from fedi2i.audit.findings.membership import membership_results
from fedi2i.audit.plan import AuditCell
from fedi2i.audit.report_inversion import section_inversion
from fedi2i.audit.schema import AuditResults, MembershipResult, PoisonEffect, finite_json
from fedi2i.audit.store import CellStore
from fedi2i.config import Config
from fedi2i.io import read_json, write_text

log = logging.getLogger(__name__)
T = TypeVar("T")

PACKAGES = ("fedi2i", "torch", "monai", "numpy", "cryptography", "opacus", "flwr", "scikit-learn", "SimpleITK")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _poison_summary(out_dir: Path, cells: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    rows = [v["result"] for v in cells.values() if v.get("kind") == "poison" and v.get("status") == "ok"]
    if not rows:
        return None
    from fedi2i.attacks.poisoning import summarise_poison

    return summarise_poison(rows, out_dir / "poison" / "summary")


def _num(value: Any, digits: int, signed: bool = False) -> str:
    """A number for a table; missing or non-finite numbers read "n/a" (never "nan" in a statistic)."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _csv(cells: dict[str, dict[str, Any]]) -> str:
    """One row per cell with its headline numbers."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["key", "kind", "status", "seconds", "metric", "value", "error"])
    for key, cell in cells.items():
        result = cell.get("result") or {}
        metrics: list[tuple[str, Any]] = []
        if cell.get("kind") == "train":
            for centre, s in (result.get("unseen") or {}).items():
                metrics += [(f"unseen_{centre}_{m}", s[m]) for m in ("mae", "psnr", "ssim")]
        elif cell.get("kind") == "membership":
            typed = MembershipResult.model_validate(result)
            for method in typed.methods:
                aucs = membership_aucs(typed, (method,))
                metrics.append((f"{method}_max_auc", max(aucs) if aucs else None))
        elif cell.get("kind") == "inversion":
            metrics += [(m, result.get(m)) for m in ("mri_ssim", "mri_psnr", "ct_ssim", "ct_psnr")]
        elif cell.get("kind") == "poison":
            metrics += [(f"unseen_{m}", (result.get("unseen_mean") or {}).get(m)) for m in ("mae", "psnr", "ssim")]
        for name, value in metrics or [("", "")]:
            writer.writerow([key, cell.get("kind"), cell.get("status"), f"{cell.get('seconds', 0):.1f}", name,
                             value, cell.get("error", "")])
    return buf.getvalue()


@dataclass
class ReportInputs:
    """Everything a section may show, computed once (each piece may be missing if computing it failed)."""

    config: Config
    out_dir: Path
    planned: int
    cells: dict[str, dict[str, Any]]
    generated: str
    poison: dict[str, Any] | None = None
    threats: list[Threat] = field(default_factory=list)
    comps: list[Comparison] = field(default_factory=list)
    effects: list[PoisonEffect] = field(default_factory=list)
    unusable: list[dict[str, str]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


def _guarded(errors: dict[str, str], name: str, build: Callable[[], T], fallback: T) -> T:
    """Run one part of the report; on failure record it under ``name`` and return ``fallback``."""
    try:
        return build()
    except Exception as exc:  # one broken part must not cost the user the rest of the report
        log.exception("report part %r failed", name)
        errors[name] = f"{type(exc).__name__}: {exc}"
        return fallback


def _verdict_cell(verdict: str) -> str:
    """A level, or two ("medium to high": the interval behind it spans both), coloured by the higher."""
    top = verdict.split(" to ")[-1]
    css = {"high": "verdict-high", "medium": "verdict-medium", "low": "verdict-low"}.get(top, "")
    label = (f"{verdict.upper()} exposure" if top in ("high", "medium", "low") else verdict)
    return f'<span class="{css}">{H.esc(label)}</span>'


def _status_cell(status: str) -> str:
    return f'<span class="tag-{status.replace(" ", "-")}">{H.esc(status)}</span>'


def _figures(paths: list[Path], limit: int = 8) -> str:
    return "".join(H.figure(p, p.stem.replace("_", " ")) for p in paths[:limit])


def _section_header(r: ReportInputs) -> str:
    c = r.config
    ok = sum(v.get("status") == "ok" for v in r.cells.values())
    minutes = sum(v.get("seconds", 0.0) for v in r.cells.values()) / 60
    return (f"<h1>fedi2i security audit: preset <code>{H.esc(c.name)}</code></h1>"
            f"<p class='small'>Generated {r.generated}. {ok} of {r.planned} cells finished, {minutes:.1f} min of "
            f"compute. Data: {H.esc(c.data.root or 'built-in ' + c.data.source)}; {len(c.data.train_centres)} "
            f"training centres, unseen centre(s) {', '.join(c.data.unseen_centres)}.</p>")


def _section_summary(r: ReportInputs) -> str:
    return "<h2>Summary</h2>" + H.table(
        ["threat", "exposure without defence", "defence that helps", "exposure with it", "verdict"],
        [(t.threat, t.exposure, t.defence, t.with_defence, _verdict_cell(t.verdict)) for t in r.threats],
        raw_columns={4})


def _section_study(r: ReportInputs) -> str:
    return "<h2>The study's findings beside ours</h2>" + H.table(
        ["finding", "study", "fedi2i", "status"],
        [(c.finding, c.study, c.ours, _status_cell(c.status)) for c in r.comps], raw_columns={3})


def _section_quality(r: ReportInputs) -> str:
    q = quality(r.cells)
    rows = [(run, f"{m['mae']:.1f}", f"{m['psnr']:.2f}", f"{m['ssim']:.3f}") for run, m in q.items()]
    figs = sorted((r.out_dir / "runs" / "fedavg-none" / "figures").glob("*.png"))
    dp_cell = r.cells.get("train/fedavg-dp") or {}
    dp = (dp_cell.get("result") or {}).get("dp") if dp_cell.get("status") == "ok" else None
    dp_txt = (f"<p class='small'>DP run: {H.esc(dp['mode'])} clipping {dp['clip']}, noise multiplier "
              f"{dp['noise_multiplier']}: (epsilon, delta) = ({_num(dp['epsilon'], 1)}, {dp['delta']:g}) per "
              f"{H.esc(dp['unit'])}.</p>") if dp else ""
    return ("<h2>Synthesis quality (unseen centre, SynthRAD2023 metrics, mean over patients)</h2>"
            + H.table(["run", "MAE (HU)", "PSNR (dB)", "SSIM"], rows) + dp_txt + _figures(figs))


def _section_membership(r: ReportInputs) -> str:
    parts = ["<h2>Membership inference</h2><p>AUC per target centre; members are the centre's training "
             "patients, non-members are held-out patients of the same centre and of the unseen centre. "
             "Same-centre AUC is the true membership signal (other-centre non-members can be told apart by "
             "scanner alone).</p>"]
    for key, result in membership_results(r.cells).items():
        rows = []
        for method, m in result.methods.items():
            if not m.available:
                rows.append((method, "-", "unavailable: " + m.reason, "", "", ""))
                continue
            for centre, res in m.centres.items():
                s, p = res.slice, res.patient
                rows.append((method, centre, _num(s.auc, 3), _num(p.auc, 3), _num(s.auc_same_centre, 3),
                             f"{_num(s.tpr_at_1e_2, 3)} (n_neg={s.n_nonmembers})"))
        parts.append(f"<h3>{H.esc(key)}</h3>" + H.table(
            ["method", "centre", "AUC (slice)", "AUC (patient)", "AUC same-centre", "TPR@FPR=1e-2"], rows))
        parts.append(_figures(sorted((r.out_dir / "membership" / key.split("/")[1]).rglob("*.png")), 4))
    return "".join(parts)


def _poison_seeds(r: ReportInputs, rows: list[dict[str, Any]]) -> str:
    """The replicated configurations: unseen MAE per seed, clean and attacked paired by seed, the ratio with
    its 95 % interval; and the detector's margin per seed where its level was replicated."""
    from fedi2i.attacks.poisoning import load_poison_settings
    from fedi2i.audit.intervals import mean_interval

    settings = load_poison_settings(r.config)
    replicated = [e for e in r.effects if len(e.seeds) > 1]
    seconds = [x["seconds"] for x in rows if x.get("seconds") and x["status"] == "done"]
    cost = (f" A poisoning run took {sum(seconds) / len(seconds):.0f} s of wall time on average here "
            f"({len(seconds)} runs)." if seconds else "")
    which = ("every cell" if settings.replicate == "all" else
             "the cells the verdicts read: each rule's clean baseline, every attack at its highest level with a "
             "malicious minority, and the stealth attack at its lowest level with the fewest malicious centres "
             "(FedAvg and FedMedian)")
    intro = (f"<h3>Paired seeds</h3><p class='small'>{settings.seeds} training seeds for {H.esc(which)}; the "
             "rest of the matrix ran once. Clean and attacked runs of a seed share initialisation, batch order "
             "and noise draws, so they pair by seed; the ratio is the geometric mean of the per-seed ratios "
             "attacked / clean with its 95% t-interval (log scale, n - 1 degrees of freedom)." + cost + "</p>")
    if settings.seeds <= 1 or not replicated:
        return ("<h3>Paired seeds</h3><p class='small'>One training seed per cell "
                "(<code>attacks.poison.seeds: 1</code>): no interval; the verdicts use the single-run rule "
                f"(a ratio decides only beyond x1.5 run-to-run noise).{cost}</p>")

    def maes(values: list[float | None], collapsed: list[bool]) -> str:
        return " / ".join("collapsed" if c else _num(v, 0) for v, c in zip(values, collapsed or [False] * len(values)))

    def ratio(e: PoisonEffect) -> str:
        if e.ratio is None:
            return e.note or "n/a"
        point, low, high = (math.inf if v is None else v for v in e.ratio)  # JSON keeps an infinite end as null
        if not math.isfinite(point):
            return "collapsed in every seed" if not math.isfinite(low) else f"collapse in some seeds (95% CI from x{low:.2f})"
        return f"x{point:.2f} [{low:.2f}-{high:.2f}]"

    table = H.table(["rule", "attack", "level", "malicious", "seeds", "clean MAE per seed (HU)",
                     "attacked MAE per seed (HU)", "ratio [95% CI]", "judged"],
                    [(e.rule, e.attack, e.level, e.n_malicious, len(e.seeds), maes(e.clean_mae, []),
                      maes(e.attacked_mae, e.collapsed), ratio(e), "yes" if e.judged else "shown")
                     for e in replicated])
    margin_rows = []
    for attack, d in ((r.poison or {}).get("detection") or {}).items():
        for lv, splits in (d.get("margin_by_seed") or {}).items():
            for split, values in splits.items():
                iv = mean_interval(values)
                margin_rows.append((attack, lv, split, " / ".join(_num(v, 2) for v in values),
                                    iv.text() if iv else "n/a"))
    margins = ("<p class='small'>Detector margin (lowest attacker minus highest honest final score) per seed; "
               "a level counts as separated from a margin of 0.5.</p>"
               + H.table(["attack", "level", "malicious", "margin per seed", "mean [95% CI]"], margin_rows)
               if margin_rows else "")
    return intro + table + margins


def _section_poison(r: ReportInputs) -> str:
    if not r.poison:
        return ""
    rows_path = r.out_dir / "poison" / "summary" / "quality.json"
    rows = read_json(rows_path) if rows_path.exists() else []
    table_rows = [(x["rule"], x["attack"], x["level"],
                   f"{x['n_malicious']}{' (majority attack)' if x.get('majority') else ''}", x["status"],
                   "collapsed" if x.get("collapsed") else _num(x["unseen_mae"], 1),
                   _num(x["delta_unseen_mae"], 1, signed=True), x.get("flagged") or "", x.get("skip_reason") or "")
                  for x in rows]
    det = r.poison.get("detection") or {}
    det_rows = [(a, lv, _num(auc, 2), d.get("stops_separating_at") or "-")
                for a, d in det.items() for lv, auc in d["auc"].items()]
    figs = sorted((r.out_dir / "poison" / "summary").rglob("*.png"))
    return ("<h2>Poisoning and robust aggregation</h2>"
            + "<p class='small'>The matrix's own runs (one training seed each); the replicated configurations "
            "follow, paired by seed.</p>"
            + H.table(["rule", "attack", "level", "malicious", "status", "unseen MAE (HU)", "vs clean", "flagged",
                       "note"], [row for row, x in zip(table_rows, rows) if not x.get("replicate")])
            + _poison_seeds(r, rows)
            + "<h3>Detector (server-side update monitor)</h3><p class='small'>AUC over finite scores only; a "
            "centre whose updates were NaN/Inf has no score and is left out. \"Stops separating at\" is read "
            "with the fewest malicious centres (an honest majority).</p>"
            + H.table(["attack", "level", "ROC AUC attacker vs honest", "stops separating at"], det_rows)
            + _figures(figs, 8))


def _section_guarantees(r: ReportInputs) -> str:
    guarantees = (r.poison or {}).get("guarantees") or []
    if not guarantees:
        return ""
    rows = [(g["rule"], g["n_malicious"], g["n_clients"] or "n/a", g["tolerates"],
             "yes" if g["majority"] else "no", g["guarantee"] + (f": {g['why']}" if g["why"] else ""))
            for g in guarantees]
    return ("<h2>Honest-majority assumptions</h2><p>A robust rule is proven to withstand only a malicious "
            "minority (median: f &lt; n/2; trimmed mean: f &le; &beta;n; Krum: n &ge; 2f+3; Bulyan: n &ge; 4f+3). "
            "Configurations marked <b>void</b> are shown in the tables above but feed no verdict that relies on "
            "the rule's guarantee (\"FedMedian restores\", \"low noise is stealthy\").</p>"
            + H.table(["rule", "malicious", "clients per round", "tolerates", "majority attack", "guarantee"], rows))


def _section_unusable(r: ReportInputs) -> str:
    if not r.unusable:
        return ""
    return ("<h2>Cells without usable numbers</h2><p>These cells finished, but some of their numbers are "
            "missing or not finite; they are shown as n/a or collapsed and left out of every statistic that "
            "needs them.</p>" + H.table(["cell", "what is missing"], [(u["key"], u["why"]) for u in r.unusable]))


def _section_failed(r: ReportInputs) -> str:
    failed = [(k, v.get("error", "")) for k, v in r.cells.items() if v.get("status") != "ok"]
    return "<h2>Cells that failed</h2>" + H.table(["cell", "error"], failed) if failed else ""


def _section_config(r: ReportInputs) -> str:
    return ("<h2>Configuration and versions</h2><pre>"
            + H.esc(yaml.safe_dump(r.config.model_dump(mode="json"), sort_keys=False)) + "</pre>"
            + H.table(["package", "version"], sorted(versions().items())))


def _defence_checks():  # noqa: ANN202 - imported when the section is built (it runs the SecAgg/DP code)
    from fedi2i.audit import defence_checks

    return defence_checks


# (name, builder) in page order; a failing builder is replaced by a note naming it
SECTIONS: list[tuple[str, Callable[[ReportInputs], str]]] = [
    ("header", _section_header),
    ("summary", _section_summary),
    ("study comparison", _section_study),
    ("synthesis quality", _section_quality),
    ("membership inference", _section_membership),
    ("membership exposure", lambda r: report_membership.section(r.cells, r.out_dir)),
    ("gradient inversion", section_inversion),
    ("poisoning", _section_poison),
    ("honest-majority assumptions", _section_guarantees),
    ("is the defence implemented right?", lambda r: _defence_checks().defence_section_html(r.config)),
    ("cells without usable numbers", _section_unusable),
    ("failed cells", _section_failed),
    ("configuration", _section_config),
]


def _section_errors(r: ReportInputs) -> str:
    if not r.errors:
        return ""
    return ("<h2 class='error'>Parts of this report that could not be written</h2><p>Everything else above is "
            "complete.</p>" + H.table(["part", "error"], sorted(r.errors.items())))


def write_report(config: Config, out_dir: Path, cells_planned: list[AuditCell], store: CellStore) -> Path:
    """Write report.html, results.json and results.csv from every cell result on disk."""
    out_dir = Path(out_dir)
    errors: dict[str, str] = {}
    cells = store.all()
    r = ReportInputs(config, out_dir, len(cells_planned), cells,
                     datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), errors=errors)
    r.poison = _guarded(errors, "poisoning summary", lambda: _poison_summary(out_dir, cells), None)
    r.threats, r.comps = _guarded(errors, "findings", lambda: summarise(cells, (r.poison or {}).get("detection")),
                                  ([], []))
    r.effects = _guarded(errors, "paired poisoning effects",
                         lambda: poison_effects(cells, (r.poison or {}).get("detection")), [])
    r.unusable = _guarded(errors, "cells without usable numbers", lambda: unusable_numbers(cells), [])
    html = []
    for name, build in SECTIONS:
        html.append(_guarded(errors, f"section {name}", lambda build=build: build(r),
                             f"<p class='error'>The {H.esc(name)} section could not be written; see the end.</p>"))
    _guarded(errors, "results.csv", lambda: write_text(out_dir / "results.csv", _csv(cells)), None)

    def results() -> None:
        AuditResults(
            preset=config.name, generated=r.generated, versions=versions(), cells_planned=len(cells_planned),
            cells_ok=sum(v.get("status") == "ok" for v in cells.values()), summary=r.threats,
            study_comparison=r.comps, quality=_guarded(errors, "quality table", lambda: quality(cells), {}),
            guarantees=(r.poison or {}).get("guarantees") or [], unusable=r.unusable,
            poison_summary=finite_json({k: v for k, v in (r.poison or {}).items() if k != "markdown"}),
            poison_effects=r.effects, section_errors=dict(errors), cells=cells).write(out_dir / "results.json")

    _guarded(errors, "results.json", results, None)
    path = out_dir / "report.html"
    write_text(path, H.page(f"fedi2i audit ({config.name})", html + [_section_errors(r)]))
    return path


def summary_markdown(results: AuditResults) -> str:
    """The summary tables as markdown (for the README and the closing note), from ``load_results(path)``."""
    lines = ["| threat | exposure without defence | defence | exposure with it | verdict |", "|---|---|---|---|---|"]
    lines += [f"| {t.threat} | {t.exposure} | {t.defence} | {t.with_defence} | {t.verdict} |" for t in results.summary]
    lines += ["", "| finding | study | fedi2i | status |", "|---|---|---|---|"]
    lines += [f"| {c.finding} | {c.study} | {c.ours} | {c.status} |" for c in results.study_comparison]
    return "\n".join(lines)


__all__ = ["SECTIONS", "Comparison", "ReportInputs", "Threat", "summary_markdown", "write_report"]
