"""ROC metrics of membership scores for one target centre: per slice and per patient, for all
non-members and separately for same-centre and other-centre non-members, with a patient-clustered
bootstrap interval (slices of one patient are not independent, so resampling slices would overstate
the precision).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from fedi2i.attacks.membership.candidates import OTHER_CENTRE, SAME_CENTRE, TargetLabels
from fedi2i.metrics import roc_summary

FPRS = (1e-2, 1e-3)


def patient_scores(scores: np.ndarray, patient: np.ndarray, label: np.ndarray, group: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean slice score per patient (the score of a patient), with its label, group and id."""
    ids = np.array(list(dict.fromkeys(patient.tolist())))
    mean = np.array([scores[patient == p].mean() for p in ids])
    first = np.array([np.flatnonzero(patient == p)[0] for p in ids])
    return mean, label[first], group[first], ids


def weighted_auc(scores: np.ndarray, label: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC (ties count one half) of B weighted versions of one sample at once: weights [B, n] -> [B].

    A bootstrap resample is the original sample with integer multiplicities, so all resamples share
    one sort: per group of tied scores, AUC = sum_g pos_g * (neg below g + neg_g / 2) / (P * N).
    Written by hand because no library vectorises a clustered bootstrap of the AUC.
    """
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    w = weights[:, order]
    pos = np.add.reduceat(w * (label[order] == 1), starts, axis=1)
    neg = np.add.reduceat(w * (label[order] == 0), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    total = pos.sum(1) * neg.sum(1)
    return (pos * (below + 0.5 * neg)).sum(1) / np.where(total > 0, total, np.nan)


def bootstrap_aucs(label: np.ndarray, scores: np.ndarray, cluster: np.ndarray, n: int,
                   rng: np.random.Generator) -> np.ndarray:
    """AUC of ``n`` resamples [n] that draw whole patients (members and non-members separately)."""
    ids, which = np.unique(cluster, return_inverse=True)
    counts = np.zeros((n, len(ids)))
    for cls in (0, 1):
        members = np.unique(which[label == cls])
        counts[:, members] = rng.multinomial(len(members), np.full(len(members), 1 / len(members)), size=n)
    return weighted_auc(scores, label, counts[:, which])


def bootstrap_auc(label: np.ndarray, scores: np.ndarray, cluster: np.ndarray, n: int, seed: int
                  ) -> list[float] | None:
    """95% interval of the AUC, resampling whole patients (members and non-members separately)."""
    if n <= 0:
        return None
    aucs = bootstrap_aucs(label, scores, cluster, n, np.random.default_rng([seed, 15485863]))
    lo, hi = np.percentile(aucs, [2.5, 97.5])
    return [float(lo), float(hi)]


def same_centre(labels: TargetLabels, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label, score, patient) of a target's members and its own held-out patients only: membership itself.
    ``scores`` [N] are indexed by the whole candidate list."""
    keep = (labels.label == 1) | (labels.group == SAME_CENTRE)
    return labels.label[keep], scores[labels.index][keep], labels.patient[keep]


def mean_auc(blocks: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], n_boot: int, seed: int
             ) -> dict[str, Any]:
    """Mean over centres of the AUC of each centre's (label, score, patient) block, with a 95% interval.

    Each centre's patients are resampled on their own (a stratified, patient-clustered bootstrap), so the
    interval of the mean narrows with the number of centres. Returns ``auc``, ``ci95`` (None with
    ``n_boot`` 0) and ``centres``: each centre's AUC and its own interval.
    """
    usable = {c: b for c, b in blocks.items() if b[0].any() and not b[0].all()}
    if not usable:
        return {"auc": None, "ci95": None, "centres": {}}
    centres = {c: {"auc": float(roc_auc_score(lab, sc)), "ci95": bootstrap_auc(lab, sc, pat, n_boot, seed)}
               for c, (lab, sc, pat) in usable.items()}
    ci = None
    if n_boot > 0:
        draws = np.mean([bootstrap_aucs(lab, sc, pat, n_boot, np.random.default_rng([seed, 15485863, i]))
                         for i, (lab, sc, pat) in enumerate(usable.values())], axis=0)
        ci = [float(v) for v in np.percentile(draws, [2.5, 97.5])]
    return {"auc": float(np.mean([v["auc"] for v in centres.values()])), "ci95": ci, "centres": centres}


def _block(label: np.ndarray, scores: np.ndarray, cluster: np.ndarray, group: np.ndarray,
           n_boot: int, seed: int) -> dict[str, Any]:
    """AUC and TPR at low FPR on all non-members, plus AUC on same-/other-centre non-members."""
    summary = roc_summary(label, scores, FPRS)
    out: dict[str, Any] = {
        "auc": summary.auc,
        "tpr@1e-2": summary.tpr_at_fpr[f"{FPRS[0]:g}"],
        "tpr@1e-3": summary.tpr_at_fpr[f"{FPRS[1]:g}"],
        "n_members": summary.n_positive, "n_nonmembers": summary.n_negative,
        # TPR at FPR f is only resolved with at least 1/f non-members
        "min_resolvable_fpr": 1.0 / summary.n_negative,
        "auc_ci95": bootstrap_auc(label, scores, cluster, n_boot, seed),
    }
    for name in (SAME_CENTRE, OTHER_CENTRE):
        keep = (label == 1) | (group == name)
        negatives = int(((label == 0) & keep).sum())
        out[f"n_{name}"] = negatives
        if negatives and label[keep].any():
            out[f"auc_{name}"] = float(roc_auc_score(label[keep], scores[keep]))
            out[f"auc_{name}_ci95"] = bootstrap_auc(label[keep], scores[keep], cluster[keep], n_boot, seed)
        else:
            out[f"auc_{name}"] = None
            out[f"auc_{name}_ci95"] = None
    return out


def evaluate_target(scores: np.ndarray, labels: TargetLabels, n_boot: int, seed: int
                    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metrics of one method on one target centre; also returns the ROC inputs for the figures."""
    s = scores[labels.index]
    if not np.isfinite(s).all():
        raise ValueError("membership scores contain NaN/Inf")
    slice_level = _block(labels.label, s, labels.patient, labels.group, n_boot, seed)
    p_scores, p_label, p_group, p_ids = patient_scores(s, labels.patient, labels.label, labels.group)
    patient_level = _block(p_label, p_scores, p_ids, p_group, n_boot, seed)
    curves = {"label": labels.label, "score": s, "group": labels.group}
    return {"slice": slice_level, "patient": patient_level}, curves
