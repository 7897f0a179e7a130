"""Figures people look at: loss curves, validation curves per centre, MRI | CT | sCT | error panels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from fedi2i.data.slices import SliceSet, unit_to_hu  # noqa: E402


def save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def loss_curve(history: list[dict[str, Any]], path: Path, title: str = "training loss") -> Path:
    """Mean local training loss per round, one line per client."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    clients = sorted({c for h in history for c in h["train_loss"]})
    for cid in clients:
        pts = [(h["round"] + 1, h["train_loss"][cid]) for h in history if cid in h["train_loss"]]
        ax.plot(*zip(*pts), marker="o", ms=3, label=f"centre {cid}")
    ax.set_xlabel("round")
    ax.set_ylabel("L1 loss (CT scaled to [-1, 1])")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save(fig, path)


def validation_curves(history: list[dict[str, Any]], path: Path) -> Path:
    """Validation MAE per centre over rounds."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    evals = [h for h in history if "val" in h]
    centres = sorted({c for h in evals for c in h["val"]})
    for centre in centres:
        pts = [(h["round"] + 1, h["val"][centre]["mae"]) for h in evals if centre in h["val"]]
        ax.plot(*zip(*pts), marker="o", label=f"centre {centre}")
    ax.set_xlabel("round")
    ax.set_ylabel("validation MAE (HU)")
    ax.set_title("validation MAE per centre")
    if centres:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save(fig, path)


def sct_panels(slices: SliceSet, sct_unit: torch.Tensor, path: Path, n: int = 3, title: str = "") -> Path:
    """Rows of MRI | CT | sCT | |error| for n slices spread over the set."""
    idx = np.linspace(0, len(slices) - 1, n + 2).astype(int)[1:-1]
    fig, axes = plt.subplots(len(idx), 4, figsize=(10, 2.6 * len(idx)), squeeze=False)
    for row, i in enumerate(idx):
        ct = unit_to_hu(slices.ct[i, 0]).numpy()
        sct = unit_to_hu(sct_unit[i, 0].clamp(-1, 1)).numpy()
        err = np.abs(ct - sct) * slices.mask[i, 0].numpy()
        panels = [(slices.mr[i, 0].numpy(), "MRI", "gray", None),
                  (ct, "CT (HU)", "gray", (-1000, 1500)),
                  (sct, "sCT (HU)", "gray", (-1000, 1500)),
                  (err, "|error| (HU)", "magma", (0, 500))]
        for col, (img, name, cmap, lim) in enumerate(panels):
            ax = axes[row, col]
            im = ax.imshow(img, cmap=cmap, vmin=lim[0] if lim else None, vmax=lim[1] if lim else None)
            ax.set_title(f"{name} {slices.patient[i]}" if col == 0 else name, fontsize=8)
            ax.axis("off")
            if col == 3:
                fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        fig.suptitle(title)
    return save(fig, path)
