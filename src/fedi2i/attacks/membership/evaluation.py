"""ROC metrics of membership scores for one target centre: per slice and per patient, for all
non-members and separately for same-centre and other-centre non-members, with a patient-clustered
bootstrap interval (slices of one patient are not independent, so resampling slices would overstate
the precision).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata
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


def rank_auc(label: np.ndarray, scores: np.ndarray) -> float:
    """AUC as the Mann-Whitney statistic (ties count one half); much faster than sklearn for resampling."""
    ranks = rankdata(scores)
    n_pos = int(label.sum())
    n_neg = len(label) - n_pos
    return float((ranks[label == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap_auc(label: np.ndarray, scores: np.ndarray, cluster: np.ndarray, n: int, seed: int
                  ) -> list[float] | None:
    """95% interval of the AUC, resampling whole patients (members and non-members separately)."""
    if n <= 0:
        return None
    rng = np.random.default_rng([seed, 15485863])
    pos = np.unique(cluster[label == 1])
    neg = np.unique(cluster[label == 0])
    rows = {c: np.flatnonzero(cluster == c) for c in np.unique(cluster)}
    aucs = []
    for _ in range(n):
        take = np.concatenate([rows[c] for c in rng.choice(pos, len(pos))] +
                              [rows[c] for c in rng.choice(neg, len(neg))])
        aucs.append(rank_auc(label[take], scores[take]))
    lo, hi = np.percentile(aucs, [2.5, 97.5])
    return [float(lo), float(hi)]


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
