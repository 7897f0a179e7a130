"""The audit report: report.html (self-contained), results.json and results.csv."""

from __future__ import annotations

import csv
import io
import json
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from fedi2i.audit import html as H
from fedi2i.audit.findings import Comparison, Threat, as_dicts, membership_aucs, quality, summarise
from fedi2i.audit.plan import AuditCell
from fedi2i.audit.store import CellStore
from fedi2i.config import Config
from fedi2i.io import write_json

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
            for method, m in (result.get("methods") or {}).items():
                aucs = membership_aucs({"methods": {method: m}})
                metrics.append((f"{method}_max_auc", max(aucs) if aucs else None))
        elif cell.get("kind") == "inversion":
            metrics += [(m, result.get(m)) for m in ("mri_ssim", "mri_psnr", "ct_ssim", "ct_psnr")]
        elif cell.get("kind") == "poison":
            metrics += [(f"unseen_{m}", (result.get("unseen_mean") or {}).get(m)) for m in ("mae", "psnr", "ssim")]
        for name, value in metrics or [("", "")]:
            writer.writerow([key, cell.get("kind"), cell.get("status"), f"{cell.get('seconds', 0):.1f}", name,
                             value, cell.get("error", "")])
    return buf.getvalue()


def _verdict_cell(verdict: str) -> str:
    css = {"high": "verdict-high", "medium": "verdict-medium", "low": "verdict-low"}.get(verdict, "")
    label = {"high": "HIGH exposure", "medium": "MEDIUM exposure", "low": "LOW exposure"}.get(verdict, verdict)
    return f'<span class="{css}">{H.esc(label)}</span>'


def _status_cell(status: str) -> str:
    return f'<span class="tag-{status.replace(" ", "-")}">{H.esc(status)}</span>'


def _figures(paths: list[Path], limit: int = 8) -> str:
    return "".join(H.figure(p, p.stem.replace("_", " ")) for p in paths[:limit])


def _section_quality(out_dir: Path, cells: dict[str, dict[str, Any]]) -> str:
    q = quality(cells)
    rows = [(run, f"{m['mae']:.1f}", f"{m['psnr']:.2f}", f"{m['ssim']:.3f}") for run, m in q.items()]
    figs = sorted((out_dir / "runs" / "fedavg-none" / "figures").glob("*.png"))
    dp = next((c["result"].get("dp") for k, c in cells.items() if k == "train/fedavg-dp" and c.get("status") == "ok"), None)
    dp_txt = (f"<p class='small'>DP run: {H.esc(dp['mode'])} clipping {dp['clip']}, noise multiplier "
              f"{dp['noise_multiplier']}: (epsilon, delta) = ({dp['epsilon']:.1f}, {dp['delta']:g}) per "
              f"{H.esc(dp['unit'])}.</p>") if dp else ""
    return ("<h2>Synthesis quality (unseen centre, SynthRAD2023 metrics, mean over patients)</h2>"
            + H.table(["run", "MAE (HU)", "PSNR (dB)", "SSIM"], rows) + dp_txt + _figures(figs))


def _section_membership(out_dir: Path, cells: dict[str, dict[str, Any]]) -> str:
    parts = ["<h2>Membership inference</h2><p>AUC per target centre; members are the centre's training "
             "patients, non-members are held-out patients of the same centre and of the unseen centre. "
             "Same-centre AUC is the true membership signal (other-centre non-members can be told apart by "
             "scanner alone).</p>"]
    for key, cell in cells.items():
        if cell.get("kind") != "membership":
            continue
        if cell.get("status") != "ok":
            continue
        rows = []
        for method, m in (cell["result"].get("methods") or {}).items():
            if not m.get("available", True):
                rows.append((method, "-", "unavailable: " + str(m.get("reason", "")), "", "", ""))
                continue
            for centre, res in (m.get("centres") or {}).items():
                s, p = res.get("slice") or {}, res.get("patient") or {}
                rows.append((method, centre, f"{s.get('auc', float('nan')):.3f}",
                             f"{p.get('auc', float('nan')):.3f}",
                             "n/a" if s.get("auc_same_centre") is None else f"{s['auc_same_centre']:.3f}",
                             f"{s.get('tpr@1e-2', float('nan')):.3f} (n_neg={s.get('n_nonmembers')})"))
        parts.append(f"<h3>{H.esc(key)}</h3>" + H.table(
            ["method", "centre", "AUC (slice)", "AUC (patient)", "AUC same-centre", "TPR@FPR=1e-2"], rows))
        parts.append(_figures(sorted((out_dir / "membership" / key.split("/")[1]).rglob("*.png")), 4))
    return "".join(parts)


def _section_inversion(out_dir: Path, cells: dict[str, dict[str, Any]]) -> str:
    rows, figs = [], []
    for cell in cells.values():
        if cell.get("kind") != "inversion" or cell.get("status") != "ok":
            continue
        r = cell["result"]
        rows.append((r.get("method"), r.get("batch"), r.get("steps"), r.get("defence"), r.get("round"),
                     f"{r.get('mri_ssim', float('nan')):.3f}", f"{r.get('mri_psnr', float('nan')):.1f}",
                     f"{r.get('ct_ssim') or float('nan'):.3f}", f"{r.get('ct_psnr') or float('nan'):.1f}"))
        if r.get("figure"):
            figs.append(Path(r["figure"]))
    if not rows:
        return ""
    return ("<h2>Gradient inversion</h2><p>SSIM/PSNR of the recovered slices against the truth after optimal "
            "(Hungarian) matching. The study's DLG bound: SSIM &le; 0.16, PSNR &le; 11 dB.</p>"
            + H.table(["method", "batch", "local steps", "defence", "round", "MRI SSIM", "MRI PSNR", "CT SSIM",
                       "CT PSNR"], rows) + _figures(figs, 6))


def _section_poison(summary: dict[str, Any] | None, out_dir: Path) -> str:
    if not summary:
        return ""
    rows_path = out_dir / "poison" / "summary" / "quality.json"
    rows = json.loads(rows_path.read_text()) if rows_path.exists() else []
    table_rows = [(r["rule"], r["attack"], r["level"], r["n_malicious"], r["status"],
                   "n/a" if r["unseen_mae"] is None else f"{r['unseen_mae']:.1f}",
                   "n/a" if r["delta_unseen_mae"] is None else f"{r['delta_unseen_mae']:+.1f}",
                   r.get("flagged") or "", r.get("skip_reason") or "") for r in rows]
    det = summary.get("detection") or {}
    det_rows = [(a, lv, f"{auc:.2f}" if auc is not None else "n/a", d.get("stops_separating_at") or "-")
                for a, d in det.items() for lv, auc in d["auc"].items()]
    figs = sorted((out_dir / "poison" / "summary").rglob("*.png"))
    return ("<h2>Poisoning and robust aggregation</h2>"
            + H.table(["rule", "attack", "level", "malicious", "status", "unseen MAE (HU)", "vs clean", "flagged",
                       "note"], table_rows)
            + "<h3>Detector (server-side update monitor)</h3>"
            + H.table(["attack", "level", "ROC AUC attacker vs honest", "stops separating at"], det_rows)
            + _figures(figs, 8))


def write_report(config: Config, out_dir: Path, cells_planned: list[AuditCell], store: CellStore) -> Path:
    """Write report.html, results.json and results.csv from every cell result on disk."""
    out_dir = Path(out_dir)
    cells = store.all()
    poison = _poison_summary(out_dir, cells)
    threats, comps = summarise(cells, (poison or {}).get("detection"))
    failed = [(k, v.get("error", "")) for k, v in cells.items() if v.get("status") != "ok"]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    total_seconds = sum(v.get("seconds", 0.0) for v in cells.values())
    results = {"preset": config.name, "generated": now, "versions": versions(),
               "cells_planned": len(cells_planned), "cells_ok": sum(v.get("status") == "ok" for v in cells.values()),
               "summary": as_dicts(threats), "study_comparison": as_dicts(comps),
               "quality": quality(cells), "poison_summary": {k: v for k, v in (poison or {}).items() if k != "markdown"},
               "cells": cells}
    write_json(out_dir / "results.json", results)
    (out_dir / "results.csv").write_text(_csv(cells))
    sections = [
        f"<h1>fedi2i security audit: preset <code>{H.esc(config.name)}</code></h1>",
        f"<p class='small'>Generated {now}. {results['cells_ok']} of {len(cells_planned)} cells finished, "
        f"{total_seconds / 60:.1f} min of compute. Data: {H.esc(config.data.root or 'built-in ' + config.data.source)}; "
        f"{len(config.data.train_centres)} training centres, unseen centre(s) {', '.join(config.data.unseen_centres)}.</p>",
        "<h2>Summary</h2>",
        H.table(["threat", "exposure without defence", "defence that helps", "exposure with it", "verdict"],
                [(t.threat, t.exposure, t.defence, t.with_defence, _verdict_cell(t.verdict)) for t in threats],
                raw_columns={4}),
        "<h2>The study's findings beside ours</h2>",
        H.table(["finding", "study", "fedi2i", "status"],
                [(c.finding, c.study, c.ours, _status_cell(c.status)) for c in comps], raw_columns={3}),
        _section_quality(out_dir, cells),
        _section_membership(out_dir, cells),
        _section_inversion(out_dir, cells),
        _section_poison(poison, out_dir),
    ]
    if failed:
        sections.append("<h2>Cells that failed</h2>" + H.table(["cell", "error"], failed))
    sections.append("<h2>Configuration and versions</h2><pre>"
                    + H.esc(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)) + "</pre>"
                    + H.table(["package", "version"], sorted(results["versions"].items())))
    path = out_dir / "report.html"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(H.page(f"fedi2i audit ({config.name})", sections))
    tmp.replace(path)
    return path


def summary_markdown(results: dict[str, Any]) -> str:
    """The summary table as markdown (for the README and the closing note)."""
    lines = ["| threat | exposure without defence | defence | exposure with it | verdict |", "|---|---|---|---|---|"]
    for t in results["summary"]:
        lines.append(f"| {t['threat']} | {t['exposure']} | {t['defence']} | {t['with_defence']} | {t['verdict']} |")
    lines += ["", "| finding | study | fedi2i | status |", "|---|---|---|---|"]
    for c in results["study_comparison"]:
        lines.append(f"| {c['finding']} | {c['study']} | {c['ours']} | {c['status']} |")
    return "\n".join(lines)


__all__ = ["Comparison", "Threat", "summary_markdown", "write_report"]
