"""ROC figures of the membership attacks: one figure per method, one curve per target centre,
on linear axes (AUC) and log-log axes (the low-FPR regime where an attack matters)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from fedi2i.figures import save  # noqa: E402


def roc_figure(method: str, curves: dict[str, dict[str, np.ndarray]], aucs: dict[str, float], path: Path,
               subtitle: str = "") -> Path:
    """ROC of each target centre (slice level, every non-member); dashed: same-centre non-members only."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for i, (centre, curve) in enumerate(sorted(curves.items())):
        colour = f"C{i}"
        label, score, group = curve["label"], curve["score"], curve["group"]
        fpr, tpr, _ = roc_curve(label, score)
        same = (label == 1) | (group == "same_centre")
        for ax in axes:
            ax.plot(fpr, tpr, color=colour, label=f"centre {centre} (AUC {aucs[centre]:.2f})")
            if (label[same] == 0).any():
                fpr_s, tpr_s, _ = roc_curve(label[same], score[same])
                ax.plot(fpr_s, tpr_s, color=colour, ls="--", lw=1)
    floor = 1e-3
    axes[0].plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    axes[0].set_xlabel("false positive rate")
    axes[0].set_ylabel("true positive rate")
    axes[0].set_title("ROC (dashed: same-centre non-members)", fontsize=9)
    axes[1].plot([floor, 1], [floor, 1], color="grey", lw=0.8, ls=":")
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_xlim(floor, 1)
    axes[1].set_ylim(floor, 1.05)
    axes[1].set_xlabel("false positive rate (log)")
    axes[1].set_title("low-FPR regime", fontsize=9)
    axes[0].legend(fontsize=8, loc="lower right")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"membership inference: {method}" + (f"  ({subtitle})" if subtitle else ""))
    return save(fig, path)


LABELS = {"fedmia-loss": "FedMIA-I (each centre's update)", "loss-global": "loss attack on the global model"}


def series_label(name: str) -> str:
    """A curve's name for a reader: ``"loss-global, secure aggregation"`` -> the attack's words, then the rest."""
    method, _, rest = name.partition(", ")
    return LABELS.get(method, method) + (f", {rest}" if rest else "")


def exposure_figure(curves: dict[str, list[dict]], x_key: str, x_label: str, path: Path, title: str = "") -> Path:
    """Same-centre AUC (mean over centres) against ``x_key`` (the round, or patients per centre), one line per
    attack, each point with its 95% interval as an error bar; a curve of numbers only, never of images."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, points) in enumerate(curves.items()):
        points = [p for p in points if p.get("auc") is not None]
        if not points:
            continue
        x = np.array([p[x_key] for p in points], dtype=float)
        y = np.array([p["auc"] for p in points])
        ci = np.array([p["ci95"] if p.get("ci95") else [p["auc"], p["auc"]] for p in points])
        dodge = 0.01 * i * (float(np.ptp(x)) or 1.0)  # so the error bars of two attacks do not hide each other
        ax.errorbar(x + dodge, y,
                    yerr=[y - ci[:, 0], ci[:, 1] - y], marker="o", capsize=3, label=series_label(name))
    ax.axhline(0.5, color="grey", lw=0.8, ls=":", label="chance")
    ax.set_ylim(0, 1)
    ax.set_xlabel(x_label)
    ax.set_ylabel("AUC vs same-centre non-members")
    ax.set_title(title or "membership exposure (mean over centres, 95% CI over patients)", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return save(fig, path)
