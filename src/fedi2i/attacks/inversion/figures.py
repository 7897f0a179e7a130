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


def budget_curve_figure(curves: dict[str, list[dict]], path: Path, title: str = "") -> Path:
    """Score and update distance against the attacker's iterations, one line per run (curves only, no image).

    ``curves``: label -> the ``points`` of a cell's ``budget_curve`` (iteration, best in-mask SSIM margin,
    distance). Left: the in-mask SSIM margin over other patients (0: no closer to this patient than to
    another; the dotted line is the leak figure). Right: the cosine distance of the reconstruction's update
    to the observed one (lower is a better answer), log scale.
    """
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    from fedi2i.attacks.inversion.judge import LEAK_MARGIN

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for label, points in curves.items():
        its = [max(p["iteration"], 1) for p in points]
        left.plot(its, [p["best"] for p in points], marker="o", ms=3, label=label)
        dist = [(i, p["distance"]) for i, p in zip(its, points) if p.get("distance") is not None]
        if dist:
            right.plot([d[0] for d in dist], [max(d[1], 1e-6) for d in dist], marker="o", ms=3, label=label)
    left.axhline(LEAK_MARGIN, color="grey", ls=":", lw=1)
    left.axhline(0.0, color="grey", lw=0.5)
    left.set(xscale="log", xlabel="attacker iterations", ylabel="in-mask SSIM over other patients")
    right.set(xscale="log", yscale="log", xlabel="attacker iterations", ylabel="update distance (1 - cosine)")
    for ax in (left, right):
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    left.legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_atomic(fig, path)
