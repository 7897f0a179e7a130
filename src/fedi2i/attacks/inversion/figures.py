"""Figure grid per setting: true MRI | reconstructed MRI | true CT | reconstructed CT, one row per item."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from fedi2i.data.slices import unit_to_hu  # noqa: E402
from fedi2i.io import save_figure  # noqa: E402

CT_WINDOW = (-1000.0, 1500.0)


def save_atomic(fig: plt.Figure, path: Path) -> Path:
    """Write a PNG through a temporary name so a reader never sees half a file."""
    save_figure(path, fig, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def reconstruction_grid(truth_mr: torch.Tensor, truth_ct: torch.Tensor, recon_mr: torch.Tensor,
                        recon_ct: torch.Tensor, scores: dict, path: Path, title: str = "",
                        max_rows: int = 8) -> Path:
    """Matched pairs side by side; ``scores`` is ``matching.score``'s output (assignment, per-item)."""
    assignment = scores["assignment"]
    truth_index = scores.get("truth_index", list(range(len(assignment))))
    rows = min(len(assignment), max_rows)
    fig, axes = plt.subplots(rows, 4, figsize=(8, 2.1 * rows + 0.4), squeeze=False)
    for row in range(rows):
        i, j = truth_index[row], assignment[row]
        item = scores["per_item"][row]
        panels = [
            (truth_mr[i, 0], "MRI truth", None),
            (recon_mr[j, 0], f"MRI recon SSIM {item['mri_ssim']:.2f}", None),
            (unit_to_hu(truth_ct[i, 0]), "CT truth (HU)", CT_WINDOW),
            (unit_to_hu(recon_ct[j, 0]), f"CT recon SSIM {item['ct_ssim']:.2f}", CT_WINDOW),
        ]
        for col, (img, name, window) in enumerate(panels):
            ax = axes[row, col]
            lo, hi = window if window else (float(truth_mr[i].min()), float(truth_mr[i].max()))
            ax.imshow(img.detach().numpy(), cmap="gray", vmin=lo, vmax=hi)
            ax.set_title(name, fontsize=7)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return save_atomic(fig, path)
