"""Figures of the poisoning matrix: quality vs noise level per rule, detector scores over rounds,
detector ROC per level, and honest-centre validation curves."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedi2i.io import save_figure  # noqa: E402


def _nan(values: Sequence[float | None]) -> list[float]:
    """Non-finite numbers are stored as None; matplotlib leaves a gap for NaN."""
    return [math.nan if v is None else v for v in values]


def save(fig: plt.Figure, path: Path) -> Path:
    """Atomic PNG write (a reader never sees half an image)."""
    save_figure(path, fig, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def quality_vs_level(rows: list[dict[str, Any]], attack: str, levels: list[str], path: Path) -> Path:
    """Unseen-centre and honest-centre MAE against the noise level, one line per rule and malicious count."""
    xs = ["none"] + levels
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    rules = list(dict.fromkeys(r["rule"] for r in rows))
    counts = sorted({r["n_malicious"] for r in rows if r["attack"] == attack})
    styles = ["-", "--", ":", "-."]
    for ax, metric, label in ((axes[0], "unseen_mae", "unseen centre"), (axes[1], "honest_mae", "honest centres")):
        for ri, rule in enumerate(rules):
            base = next((r for r in rows if r["attack"] == "none" and r["rule"] == rule), None)
            for ci, n in enumerate(counts):
                pts = [(0, base[metric])] if base and base[metric] is not None else []
                for i, lv in enumerate(levels, start=1):
                    row = next((r for r in rows if (r["attack"], r["rule"], r["level"], r["n_malicious"])
                                == (attack, rule, lv, n)), None)
                    if row and row[metric] is not None:
                        pts.append((i, row[metric]))
                if pts:
                    ax.plot(*zip(*pts), styles[ci % len(styles)], marker="o", color=f"C{ri}",
                            label=f"{rule}, {n} malicious")
                broken = [i for i, lv in enumerate(levels, start=1) if any(
                    (r["attack"], r["rule"], r["level"], r["n_malicious"]) == (attack, rule, lv, n)
                    and r["status"] == "done" and r[metric] is None for r in rows)]
                if broken:  # collapsed or NaN: no MAE to plot, mark it at the top of the axis
                    ax.plot(broken, [0.97 + 0.02 * ci - 0.04 * ri] * len(broken), "X", ms=9, color=f"C{ri}",
                            transform=ax.get_xaxis_transform(), clip_on=False)
        ax.set_xticks(range(len(xs)), xs)
        ax.set_xlabel("noise level")
        ax.set_ylabel(f"MAE (HU), {label}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{attack}: synthesis quality vs noise level (none: the rule's no-attack baseline; "
                 "X at the top: collapsed or NaN)")
    fig.tight_layout()
    return save(fig, path)


def detector_scores(results: list[dict[str, Any]], attack: str, levels: list[str], threshold: float,
                    path: Path) -> Path:
    """Running detector score of every centre over rounds: one column per level (+ no attack), one row per
    malicious count; first rule of the matrix (the detector only watches, so rules barely change it)."""
    rule = results[0]["rule"]
    counts = sorted({r["n_malicious"] for r in results if r["attack"] == attack})
    cols = ["none"] + levels
    fig, axes = plt.subplots(len(counts), len(cols), figsize=(3.2 * len(cols), 2.8 * len(counts)),
                             squeeze=False, sharey=True)
    for i, n in enumerate(counts):
        for j, lv in enumerate(cols):
            ax = axes[i, j]
            want = ("none", "none", 0) if lv == "none" else (attack, lv, n)
            cell = next((r for r in results if r["rule"] == rule and r["status"] == "done"
                         and (r["attack"], r["level"], r["n_malicious"]) == want), None)
            if cell is not None:
                for cid, series in sorted(cell["detector"]["running"].items()):
                    bad = cid in cell["malicious"]
                    ax.plot(range(1, len(series) + 1), _nan(series), marker="o", ms=3, color="C3" if bad else "C0",
                            alpha=1.0 if bad else 0.6, label=f"{cid}{' (malicious)' if bad else ''}")
                ax.legend(fontsize=6)
            ax.axhline(threshold, color="k", ls="--", lw=0.8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(f"{'no attack' if lv == 'none' else lv}, {0 if lv == 'none' else n} malicious", fontsize=9)
            ax.set_xlabel("round")
            ax.grid(alpha=0.3)
        axes[i, 0].set_ylabel("running score")
    fig.suptitle(f"detector scores over rounds ({attack}, rule {rule}; dashed: flag threshold)")
    fig.tight_layout()
    return save(fig, path)


def detector_roc(detection: dict[str, Any], attack: str, path: Path) -> Path:
    """Left: ROC after the last round per level. Right: AUC of the running score after every round.
    Solid: one malicious centre, dashed: two (or more)."""
    entry = detection["attacks"][attack]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = ["-", "--", ":", "-."]
    for k, level in enumerate(entry["levels"]):
        splits = [s for s in entry["by_level"][level] if s != "all"]
        for i, split in enumerate(splits):
            d = entry["by_level"][level][split]
            if d["auc"] is None:
                continue
            style = dict(color=f"C{k}", ls=styles[i % len(styles)])
            a1.plot(d["fpr"], d["tpr"], label=f"{level}, {split} mal. (AUC {d['auc']:.2f})", **style)
            a2.plot(range(1, len(d["auc_per_round"]) + 1), _nan(d["auc_per_round"]), marker="o", ms=3,
                    label=f"{level}, {split} mal.", **style)
    a1.plot([0, 1], [0, 1], "k:", lw=0.8)
    a1.set_xlabel("false-alarm rate (honest centres)")
    a1.set_ylabel("detection rate (malicious centres)")
    a1.set_title("ROC after the last round")
    a2.axhline(0.5, color="k", ls=":", lw=0.8)
    a2.set_ylim(0, 1.02)
    a2.set_xlabel("round")
    a2.xaxis.set_major_locator(MaxNLocator(integer=True))
    a2.set_ylabel("AUC")
    a2.set_title("ROC AUC over rounds")
    for ax in (a1, a2):
        if ax.get_legend_handles_labels()[0]:  # no curve when no level has finite scores on both sides
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"poisoned-update detector, {attack}")
    fig.tight_layout()
    return save(fig, path)


def validation_curves(results: list[dict[str, Any]], attack: str, levels: list[str], path: Path) -> Path:
    """Honest centres' mean validation MAE over rounds, one panel per rule, one line per level (1 malicious)."""
    rules = list(dict.fromkeys(r["rule"] for r in results))
    n = min((r["n_malicious"] for r in results if r["attack"] == attack), default=1)
    fig, axes = plt.subplots(1, len(rules), figsize=(4.5 * len(rules), 3.5), squeeze=False, sharey=True)
    for ax, rule in zip(axes[0], rules):
        for k, lv in enumerate(["none"] + levels):
            want = ("none", "none") if lv == "none" else (attack, lv)
            cell = next((r for r in results if r["rule"] == rule and r["status"] == "done"
                         and (r["attack"], r["level"]) == want and r["n_malicious"] in (0, n)), None)
            if cell is None:
                continue
            pts = [(v["round"], v["honest_mae"]) for v in cell["val_curve"] if v["honest_mae"] is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", color="k" if lv == "none" else f"C{k}",
                        label="no attack" if lv == "none" else lv)
        ax.set_title(f"{rule}, {n} malicious", fontsize=9)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a collapsed run has no curve to name
            ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("honest validation MAE (HU)")
    fig.suptitle(f"{attack}: per-round validation")
    fig.tight_layout()
    return save(fig, path)


def write_all(results: list[dict[str, Any]], rows: list[dict[str, Any]], detection: dict[str, Any],
              levels_by_attack: dict[str, list[str]], fig_dir: Path) -> list[Path]:
    """Every figure of the matrix, per attack (levels in sweep order, from the summary's tables)."""
    done = [r for r in results if r["status"] == "done"]
    if not done:
        return []
    threshold = next((r["detector"]["threshold"] for r in done if r.get("detector")), 3.0)
    paths = []
    for attack, levels in levels_by_attack.items():
        paths.append(quality_vs_level(rows, attack, levels, fig_dir / f"quality_vs_level_{attack}.png"))
        paths.append(detector_scores(done, attack, levels, threshold, fig_dir / f"detector_scores_{attack}.png"))
        paths.append(detector_roc(detection, attack, fig_dir / f"detector_roc_{attack}.png"))
        paths.append(validation_curves(done, attack, levels, fig_dir / f"val_curves_{attack}.png"))
    return paths
