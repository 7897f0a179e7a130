"""Figures people look at: loss curves, validation curves per centre, sCT panels with per-tissue errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from fedi2i.data.slices import SliceSet, unit_to_hu  # noqa: E402
from fedi2i.io import save_figure  # noqa: E402
from fedi2i.tissue_metrics import bone_dice, region_mae, tissue_masks  # noqa: E402


def save(fig: plt.Figure, path: Path) -> Path:
    save_figure(path, fig, dpi=110, bbox_inches="tight")
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


BONE_WINDOW = (400.0, 1500.0)  # level, width (HU): soft tissue grey, bone graded, air black
ERROR_LIMIT = 500.0  # HU at the ends of the signed error colour scale


def window(level: float, width: float) -> tuple[float, float]:
    """Display range (vmin, vmax) of a CT window."""
    return level - width / 2, level + width / 2


def sct_panels(slices: SliceSet, sct_unit: torch.Tensor, path: Path, n: int = 3, title: str = "") -> Path:
    """Rows of MRI | CT | sCT (bone window) | signed error sCT - CT in bone, soft tissue and air.

    The bone window (level 400, width 1500) shows at a glance whether the sCT has a skull; the error
    maps split by the tissue the CT shows (fedi2i.tissue_metrics), so missing bone (blue in the bone
    map) is not drowned by the soft-tissue error. Each error panel's title gives that tissue's MAE on
    the slice, the sCT panel's title the slice's bone Dice.
    """
    idx = np.linspace(0, len(slices) - 1, n + 2).astype(int)[1:-1]
    lo, hi = window(*BONE_WINDOW)
    fig, axes = plt.subplots(len(idx), 6, figsize=(14, 2.6 * len(idx)), squeeze=False)
    for row, i in enumerate(idx):
        ct = unit_to_hu(slices.ct[i, 0]).numpy()
        sct = unit_to_hu(sct_unit[i, 0].clamp(-1, 1)).numpy()
        regions = tissue_masks(ct, slices.mask[i, 0].numpy())
        err = sct - ct
        dice = bone_dice(ct, sct, slices.mask[i, 0].numpy())
        panels = [(slices.mr[i, 0].numpy(), f"MRI {slices.patient[i]}", "gray", None),
                  (ct, "CT, bone window", "gray", (lo, hi)),
                  (sct, f"sCT, bone window (Dice {dice:.2f})", "gray", (lo, hi))]
        for name, label in (("bone", "bone"), ("soft", "soft tissue"), ("air", "air")):
            mae = region_mae(ct, sct, regions[name])
            panels.append((np.where(regions[name], err, np.nan), f"{label}: MAE {mae:.0f} HU", "RdBu_r",
                           (-ERROR_LIMIT, ERROR_LIMIT)))
        for col, (img, name, cmap, lim) in enumerate(panels):
            ax = axes[row, col]
            if col >= 3:
                ax.imshow(ct, cmap="gray", vmin=lo, vmax=hi, alpha=0.35)
            im = ax.imshow(img, cmap=cmap, vmin=lim[0] if lim else None, vmax=lim[1] if lim else None)
            ax.set_title(name, fontsize=8)
            ax.axis("off")
            if col == 5:
                fig.colorbar(im, ax=ax, fraction=0.046, label="sCT - CT (HU)")
    if title:
        fig.suptitle(title)
    return save(fig, path)
