"""Does a reconstruction show the victim's anatomy? In-mask scores against an other-patient reference.

Evaluation only (it reads true images). Whole-slice 2D SSIM rewards the air around the head and is unsound
both ways: an empty image scores well on it, correct anatomy over a noisy background scores badly, and
another patient's slice scores far above an empty one. So each reconstruction is scored

* **inside the dilated head mask** of the slice it is compared with: SSIM as SynthRAD2023 defines it
  (``fedi2i.metrics.ssim``: clip to the known intensity box, everything outside the mask set to the box
  minimum, 7-pixel SSIM map averaged over mask pixels), and the Pearson correlation of the pixels inside
  the mask (blind to the intensity scale and offset that train-mode normalisation hides from the
  attacker). The MRI box is mapped linearly onto the HU range first, which leaves SSIM unchanged (SSIM is
  invariant to one affine map of both images and their data range);
* **against the reference it must beat:** the same reconstruction scored on other patients' slices of the
  victim's centre at the same axial level (each other patient's slice nearest in relative level, and its
  neighbours within ``LEVEL_WINDOW``; the best of them counts, which gives the other patients the benefit
  of a level mismatch). The **margin** is the score on the true slice minus the mean of those scores over
  the other patients: an empty image, or another patient's slice, sits at the reference (margin about 0
  or below); only anatomy of this patient lifts it;
* **aligned:** each comparison first moves the reconstruction by the integer shift (up to 1/16 of the
  image) that best correlates with the slice it is compared with: anatomy recovered a few pixels off is
  still the patient's anatomy. Own slice and references get the same search;
* **re-identification:** the rank of the true patient among the centre's patients at that level, by the
  in-mask SSIM (rank 1: the reconstruction is nearest to its own slice; chance: 1 / patients).

The margin's 95 % interval is a clustered bootstrap over patients, two-way: the victim patients of the
batch (a patient's slices are resampled together) and the reference patients. One slice still gets an
interval, over the reference patients: is its own score above the spread of other patients'?
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from fedi2i.data.slices import HU_MAX, HU_MIN, SliceSet
from fedi2i.metrics import ssim as synthrad_ssim

DILATION_PX = 2  # the head mask grown by this many pixels: the outline of the head is anatomy too
LEVEL_WINDOW = 1  # an other patient's slices within +-this many of the matched level compete
N_BOOT = 2000
MIN_REFERENCE_PATIENTS = 3  # fewer other patients give no spread to resample: no interval
CT_BOX = (-1.0, 1.0)
MODALITIES = ("mri", "ct")
METRICS = ("ssim", "corr")


def dilated(mask: np.ndarray, px: int = DILATION_PX) -> np.ndarray:
    """Head mask [H, W] grown by ``px`` pixels (a disk; 8-connected steps)."""
    m = np.asarray(mask) > 0
    return ndimage.binary_dilation(m, structure=np.ones((3, 3), bool), iterations=px) if px > 0 else m


def _to_hu(img: np.ndarray, box: tuple[float, float]) -> np.ndarray:
    lo, hi = box
    return HU_MIN + (np.clip(img, lo, hi) - lo) / (hi - lo) * (HU_MAX - HU_MIN)


def masked_ssim(truth: np.ndarray, recon: np.ndarray, mask: np.ndarray, box: tuple[float, float]) -> float:
    """SSIM inside ``mask`` (SynthRAD2023 definition, 2D), images in the intensity ``box`` [lo, hi]."""
    return synthrad_ssim(_to_hu(truth, box), _to_hu(recon, box), mask)


def masked_corr(truth: np.ndarray, recon: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of the pixels inside ``mask``; 0 where either image is constant there."""
    m = np.asarray(mask) > 0
    a, b = np.asarray(truth, np.float64)[m], np.asarray(recon, np.float64)[m]
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 1e-12 else 0.0


@dataclass(frozen=True)
class Candidates:
    """The centre's slices a reconstruction is compared with, as numpy arrays (MRI normalised, CT in [-1, 1]).

    ``level`` is each slice's relative axial position in its patient (0 = lowest kept slice, 1 = highest),
    so patients of different size or field of view are matched by anatomy, not by grid index.
    """

    mr: np.ndarray  # [N, H, W]
    ct: np.ndarray  # [N, H, W]
    mask: np.ndarray  # [N, H, W] bool, dilated
    patient: list[str]
    slice_index: list[int]
    level: np.ndarray  # [N]

    @classmethod
    def from_slices(cls, slices: SliceSet) -> "Candidates":
        patient = list(slices.patient)
        z = slices.slice_index.double().numpy()
        level = np.zeros(len(patient))
        for p in dict.fromkeys(patient):
            rows = np.array([i for i, q in enumerate(patient) if q == p])
            lo, hi = z[rows].min(), z[rows].max()
            level[rows] = (z[rows] - lo) / (hi - lo) if hi > lo else 0.5
        return cls(slices.mr[:, 0].double().numpy(), slices.ct[:, 0].double().numpy(),
                   np.stack([dilated(m) for m in slices.mask[:, 0].numpy()]), patient,
                   [int(z) for z in slices.slice_index.tolist()], level)

    @property
    def patients(self) -> list[str]:
        return list(dict.fromkeys(self.patient))

    def find(self, patient: str, slice_level: float) -> int:
        """Row of ``patient``'s slice nearest to the relative level."""
        rows = [i for i, p in enumerate(self.patient) if p == patient]
        return min(rows, key=lambda i: abs(self.level[i] - slice_level))

    def level_neighbours(self, patient: str, slice_level: float, window: int = LEVEL_WINDOW) -> list[int]:
        """``patient``'s slice nearest the level and its ``window`` neighbours on each side (by level)."""
        rows = sorted((i for i, p in enumerate(self.patient) if p == patient), key=lambda i: self.level[i])
        best = min(range(len(rows)), key=lambda k: abs(self.level[rows[k]] - slice_level))
        return rows[max(best - window, 0): best + window + 1]


def max_shift(size: int) -> int:
    """Largest shift searched when aligning: 1/16 of the image (4 px at 64, 1 px at 16)."""
    return max(1, size // 16)


class Shifted:
    """A reconstruction and its copies rolled by every integer shift within +-``limit`` px (flattened).

    A convolutional network's update hardly changes when the whole batch moves by a few pixels, so an
    attack may well recover the anatomy displaced; that is still the patient's anatomy. Each comparison
    uses the shift that best correlates inside the compared slice's mask; every candidate (own slice and
    references alike) gets its own best shift, so the alignment favours none of them.
    """

    def __init__(self, recon: np.ndarray, limit: int) -> None:
        self.shape = recon.shape
        self.shifts = [(dy, dx) for dy in range(-limit, limit + 1) for dx in range(-limit, limit + 1)]
        self.stack = np.stack([np.roll(recon, s, axis=(0, 1)).ravel() for s in self.shifts]).astype(np.float64)
        self.squares = self.stack * self.stack

    def aligned(self, truth: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The shifted copy with the largest Pearson correlation to ``truth`` inside ``mask``."""
        m = (np.asarray(mask) > 0).ravel().astype(np.float64)
        n = max(m.sum(), 1.0)
        t = np.asarray(truth, np.float64).ravel()
        a = (t - (t * m).sum() / n) * m  # centred inside the mask, zero outside
        sums = self.stack @ m
        var_b = self.squares @ m - sums * sums / n
        den = np.sqrt(max(float(a @ a), 0.0) * np.clip(var_b, 0.0, None))
        corr = np.where(den > 1e-12, (self.stack @ a) / np.maximum(den, 1e-12), 0.0)
        return self.stack[int(np.argmax(corr))].reshape(self.shape)


def _scores(cands: Candidates, row: int, recon: dict[str, Shifted], mr_box: tuple[float, float]
            ) -> dict[str, dict[str, float]]:
    mask = cands.mask[row]
    truths = {"mri": (cands.mr[row], mr_box), "ct": (cands.ct[row], CT_BOX)}
    out: dict[str, dict[str, float]] = {}
    for modality, shifted in recon.items():
        truth, box = truths[modality]
        moved = shifted.aligned(truth, mask)
        out[modality] = {"ssim": masked_ssim(truth, moved, mask, box), "corr": masked_corr(truth, moved, mask)}
    return out


@dataclass
class ItemScores:
    """One reconstruction against its true slice and the other patients' slices at that level."""

    patient: str
    own: dict[str, dict[str, float]]  # modality -> metric -> score on the true slice
    reference: dict[str, dict[str, dict[str, float]]]  # other patient -> modality -> metric -> best in window

    def margin(self, modality: str, metric: str) -> float:
        refs = [r[modality][metric] for r in self.reference.values()]
        return self.own[modality][metric] - (float(np.mean(refs)) if refs else 0.0)

    def rank(self, modality: str, metric: str = "ssim") -> int:
        """1 + other patients scoring at least as high as the true slice (ties count against it)."""
        own = self.own[modality][metric]
        return 1 + sum(r[modality][metric] >= own for r in self.reference.values())


def score_item(cands: Candidates, truth_row: int, mr: np.ndarray, ct: np.ndarray, mr_box: tuple[float, float],
               modalities: Sequence[str] = MODALITIES) -> ItemScores:
    """Score one reconstruction (``mr``, ``ct`` [H, W]) against candidate row ``truth_row`` and the reference."""
    own_patient = cands.patient[truth_row]
    limit = max_shift(mr.shape[-1])
    recon = {m: Shifted(img, limit) for m, img in (("mri", mr), ("ct", ct)) if m in modalities}
    own = _scores(cands, truth_row, recon, mr_box)
    reference: dict[str, dict[str, dict[str, float]]] = {}
    for p in cands.patients:
        if p == own_patient:
            continue
        per_row = [_scores(cands, i, recon, mr_box)
                   for i in cands.level_neighbours(p, float(cands.level[truth_row]))]
        reference[p] = {m: {k: max(s[m][k] for s in per_row) for k in METRICS} for m in modalities}
    return ItemScores(own_patient, own, reference)


def margin_interval(items: Sequence[ItemScores], modality: str, metric: str, n_boot: int = N_BOOT,
                    seed: int = 0) -> tuple[float, float | None, float | None]:
    """Mean margin over items and its 95 % interval: bootstrap over victim and reference patients.

    Victim patients are resampled as clusters (all their items together); reference patients are
    resampled from every patient that serves as a reference for some item. An item whose drawn references
    are all its own patient falls back to all its references. Returns (point, low, high); low and high are
    None with fewer than ``MIN_REFERENCE_PATIENTS`` reference patients.
    """
    if not items:
        raise ValueError("no reconstruction to score")
    point = float(np.mean([it.margin(modality, metric) for it in items]))
    victims = list(dict.fromkeys(it.patient for it in items))
    refs = sorted({p for it in items for p in it.reference})
    if len(refs) < MIN_REFERENCE_PATIENTS:
        return point, None, None
    own = np.array([it.own[modality][metric] for it in items])
    ref_matrix = np.full((len(items), len(refs)), np.nan)
    for i, it in enumerate(items):
        for j, p in enumerate(refs):
            if p in it.reference:
                ref_matrix[i, j] = it.reference[p][modality][metric]
    by_victim = [np.array([i for i, it in enumerate(items) if it.patient == v]) for v in victims]
    rng = np.random.default_rng([seed, 7919])
    stats = np.empty(n_boot)
    fallback = np.nanmean(ref_matrix, axis=1)
    for b in range(n_boot):
        rows = np.concatenate([by_victim[k] for k in rng.integers(0, len(victims), len(victims))])
        cols = rng.integers(0, len(refs), len(refs))
        drawn = ref_matrix[np.ix_(rows, cols)]
        counts = np.sum(~np.isnan(drawn), axis=1)
        with np.errstate(invalid="ignore"):
            ref_mean = np.where(counts > 0, np.nansum(drawn, axis=1) / np.maximum(counts, 1), fallback[rows])
        stats[b] = float(np.mean(own[rows] - ref_mean))
    low, high = np.quantile(stats, [0.025, 0.975])
    return point, float(low), float(high)


def summarise_items(items: Sequence[ItemScores], modalities: Sequence[str] = MODALITIES, n_boot: int = N_BOOT,
                    seed: int = 0) -> dict[str, object]:
    """Per modality and metric: mean own score, mean reference, margin with its 95 % interval; re-id ranks.

    ``deciding`` names the number the verdict reads: the in-mask SSIM margin of the modality with the larger
    point margin (a leak in either image is a leak), with its interval.
    """
    out: dict[str, object] = {}
    for m in modalities:
        entry: dict[str, object] = {}
        for k in METRICS:
            point, low, high = margin_interval(items, m, k, n_boot, seed)
            entry[k] = {"own": float(np.mean([it.own[m][k] for it in items])),
                        "reference": float(np.mean([it.own[m][k] - it.margin(m, k) for it in items])),
                        "margin": point, "ci95": None if low is None else [low, high]}
        ranks = [it.rank(m) for it in items]
        candidates = [1 + len(it.reference) for it in items]
        entry["reid"] = {"top1": float(np.mean([r == 1 for r in ranks])),
                         "chance": float(np.mean([1 / c for c in candidates])),
                         "mean_rank": float(np.mean(ranks)), "patients": int(max(candidates)), "ranks": ranks}
        out[m] = entry
    best = max(modalities, key=lambda m: out[m]["ssim"]["margin"])  # type: ignore[index]
    ssim = out[best]["ssim"]  # type: ignore[index]
    out["deciding"] = {"modality": best, "metric": "ssim", "margin": ssim["margin"], "ci95": ssim["ci95"]}
    out["items"] = len(items)
    out["victim_patients"] = len({it.patient for it in items})
    out["reference_patients"] = len({p for it in items for p in it.reference})
    out["dilation_px"] = DILATION_PX
    out["level_window"] = LEVEL_WINDOW
    return out
