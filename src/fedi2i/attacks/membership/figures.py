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
