"""One membership-inference cell: every selected method, every target centre, on one trained run.

The cell is a run directory (its defence is whatever the run was trained with: plain FedAvg, secure
aggregation, DP, ...). Signals are collected once per run and shared by the methods that read them.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedi2i.attacks.membership.baselines import (Scorer, score_grad_cosine, score_grad_diff, score_grad_norm,
                                                 score_loss, score_loss_global, score_loss_series)
from fedi2i.attacks.membership.candidates import OTHER_CENTRE, SAME_CENTRE, Candidates, build_candidates
from fedi2i.attacks.membership.collect import Progress, Signals, collect_signals
from fedi2i.attacks.membership.evaluation import evaluate_target, mean_auc, same_centre
from fedi2i.attacks.membership.fedmia import UNAVAILABLE_UNDER_SECAGG, score_fedmia_grad, score_fedmia_loss
from fedi2i.attacks.membership.exposure import CURVE_FAMILIES, curve_signals, round_exposure
from fedi2i.attacks.membership.figures import exposure_figure, roc_figure
from fedi2i.attacks.membership.settings import METHODS, MembershipSettings, SignalUnavailable
from fedi2i.config import load_config
from fedi2i.data.federation import FederatedData, load_federation
from fedi2i.errors import DataError, RecordError
from fedi2i.io import write_json, write_text
from fedi2i.fl.observer import ServerRecord

SCORERS: dict[str, Scorer] = {
    "fedmia-loss": score_fedmia_loss, "fedmia-grad": score_fedmia_grad, "loss": score_loss,
    "loss-global": score_loss_global, "loss-series": score_loss_series, "grad-norm": score_grad_norm,
    "grad-cosine": score_grad_cosine, "grad-diff": score_grad_diff,
}
RESULTS_JSON = "membership.json"
SIGNALS_NPZ = "signals.npz"  # the raw signal arrays, candidate order as build_candidates(data, settings)


def load_run_data(run_dir: Path) -> FederatedData:
    """The federation a run trained on, from the config.yaml it wrote."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise RecordError(f"{run_dir} has no config.yaml: pass the data the run trained on explicitly")
    config = load_config(path)
    return load_federation(config.data, config.seed, progress=False)


def choose_rounds(record: ServerRecord, wanted: list[int] | str) -> list[int]:
    recorded = record.rounds()
    if not recorded:
        raise RecordError("the curious-server record holds no round (train with record_rounds set)")
    if wanted == "all":
        return recorded
    missing = sorted(set(wanted) - set(recorded))
    if missing:
        raise RecordError(f"round(s) {missing} were not recorded; recorded rounds: {recorded}")
    return sorted(set(wanted))


def check_data_matches(record: ServerRecord, rounds: list[int], data: FederatedData) -> list[str]:
    """The data must be what the run trained on: same centres, same slice counts, same image size."""
    clients = sorted(record.meta.get("clients") or data.train)
    unknown = sorted(set(clients) - set(data.train))
    if unknown:
        raise DataError(f"the run trained centre(s) {', '.join(unknown)} that the data given does not have")
    size = record.meta.get("image_size")
    for c in clients:
        if size is not None and data.train[c].mr.shape[-1] != size:
            raise DataError(f"the run trained on {size}x{size} slices, the data given has "
                            f"{data.train[c].mr.shape[-1]}: load the data with the run's config")
    view = record.round(rounds[0])
    for c, n in view.num_examples.items():
        if c in data.train and int(n) != len(data.train[c]):
            raise DataError(f"centre {c} trained on {n} slices but the data given has {len(data.train[c])} "
                            "training slices: this is not the data the run trained on")
    return clients


def generalisation_gap(sig: Signals, cands: Candidates, clients: list[str]) -> dict[str, Any]:
    """How much there is to detect: members vs held-out patients of the same centre.

    ``target_model`` / ``final_global_model``: mean per-slice loss (training loss units) of members and
    non-members. With a handful of patients per centre this raw gap is dominated by which patients are
    harder, so ``calibrated`` gives the gap FedMIA-I sees: the mean log-ratio of the other centres' loss
    to the target's loss (last round), for members minus same-centre non-members;
    ``exp(gap) - 1`` is how much better the target's model fits its own patients than held-out ones.
    """
    out: dict[str, Any] = {}
    for k, c in enumerate(clients):
        labels = cands.labels_for(c)
        member, same = labels.label == 1, labels.group == SAME_CENTRE
        entry: dict[str, Any] = {}
        models = []
        last = None
        if sig.loss_target is not None:
            present = np.where(np.isfinite(sig.loss_target[:, k]).all(axis=1))[0]
            if len(present):
                last = int(present[-1])
                models.append(("target_model", sig.loss_target[last, k]))
        if sig.loss_final is not None:
            models.append(("final_global_model", sig.loss_final))
        for name, loss in models:
            values = loss[labels.index]
            block: dict[str, Any] = {"member_loss": float(values[member].mean())}
            for group in (SAME_CENTRE, OTHER_CENTRE):
                sel = labels.group == group
                block[f"{group}_loss"] = float(values[sel].mean()) if sel.any() else None
            entry[name] = block
        if last is not None and not sig.secure and same.any():
            row = sig.loss_target[last][:, labels.index]
            refs = [j for j in range(len(clients)) if j != k and np.isfinite(row[j]).all()]
            if refs:
                ratio = np.log(row[refs]).mean(0) - np.log(row[k])
                gap = float(ratio[member].mean() - ratio[same].mean())
                entry["calibrated"] = {
                    "round": sig.rounds[last], "member_log_ratio": float(ratio[member].mean()),
                    "same_centre_log_ratio": float(ratio[same].mean()), "gap": gap,
                    "relative_fit": float(np.exp(gap) - 1)}
        out[c] = entry
    return out


def _families(settings: MembershipSettings, secure: bool) -> set[str]:
    needed: set[str] = set()
    for m in settings.methods:
        if secure and METHODS[m].needs_individual_updates:
            continue
        needed |= METHODS[m].signals
    return needed


def score_methods(sig: Signals, cands: Candidates, clients: list[str], settings: MembershipSettings
                  ) -> tuple[dict[str, Any], dict[str, dict[str, dict[str, np.ndarray]]]]:
    """Metrics of every method on every target centre (+ the ROC inputs for the figures)."""
    results: dict[str, Any] = {}
    curves: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for method in settings.methods:
        if sig.secure and METHODS[method].needs_individual_updates:
            results[method] = {"available": False, "reason": UNAVAILABLE_UNDER_SECAGG}
            continue
        centres: dict[str, Any] = {}
        curves[method] = {}
        unavailable: dict[str, str] = {}
        blocks = {}
        for k, c in enumerate(clients):
            labels = cands.labels_for(c, shuffle_seed=settings.seed if settings.shuffle_labels else None)
            try:
                scores = SCORERS[method](sig, k, labels.index, settings)
            except SignalUnavailable as exc:
                unavailable[c] = str(exc)
                continue
            centres[c], curves[method][c] = evaluate_target(scores, labels, settings.bootstrap, settings.seed)
            blocks[c] = same_centre(labels, scores)
        entry: dict[str, Any] = {"available": bool(centres), "summary": METHODS[method].summary,
                                 "target_model": sig.target_source, "centres": centres}
        if centres:  # slice level, mean over centres, each centre's patients resampled on their own
            entry["same_centre_mean"] = {k: v for k, v in mean_auc(blocks, settings.bootstrap, settings.seed).items()
                                         if k != "centres"}
        if unavailable:
            entry["unavailable_centres"] = unavailable
            if not centres:
                entry["reason"] = next(iter(unavailable.values()))
        if centres:
            for level in ("slice", "patient"):
                aucs = [v[level]["auc"] for v in centres.values()]
                same = [v[level]["auc_same_centre"] for v in centres.values()
                        if v[level]["auc_same_centre"] is not None]
                entry[f"{level}_auc_mean"] = float(np.mean(aucs))
                entry[f"{level}_auc_range"] = [float(min(aucs)), float(max(aucs))]
                entry[f"{level}_auc_same_centre_mean"] = float(np.mean(same)) if same else None
        results[method] = entry
    return results, curves


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def markdown_table(result: dict[str, Any]) -> str:
    """Per-centre AUC per method: all non-members (same-centre non-members in brackets), slice and patient."""
    clients = result["clients"]
    head = f"| method | level | {' | '.join(clients)} | mean |"
    lines = [f"Membership AUC ({'secure aggregation' if result['secure'] else 'individual updates visible'}; "
             "all non-members, same-centre non-members in brackets)", "", head,
             "|" + "---|" * (len(clients) + 3)]
    for method, entry in result["methods"].items():
        if not entry["available"]:
            lines.append(f"| {method} | - | " + " | ".join("unavailable" for _ in clients) + " | - |")
            continue
        for level in ("slice", "patient"):
            cells = []
            for c in clients:
                v = entry["centres"].get(c, {}).get(level)
                cells.append("n/a" if v is None else f"{_fmt(v['auc'])} ({_fmt(v['auc_same_centre'])})")
            lines.append(f"| {method} | {level} | {' | '.join(cells)} | {_fmt(entry[f'{level}_auc_mean'])} |")
    return "\n".join(lines) + "\n"


def csv_rows(result: dict[str, Any]) -> str:
    buf = io.StringIO()
    fields = ["method", "centre", "level", "auc", "auc_ci95_low", "auc_ci95_high", "tpr@1e-2", "tpr@1e-3",
              "n_members", "n_nonmembers", "auc_same_centre", "n_same_centre", "auc_other_centre",
              "n_other_centre"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for method, entry in result["methods"].items():
        for c, levels in entry.get("centres", {}).items():
            for level, v in levels.items():
                ci = v["auc_ci95"] or [None, None]
                writer.writerow({"method": method, "centre": c, "level": level, "auc_ci95_low": ci[0],
                                 "auc_ci95_high": ci[1], **{k: v[k] for k in fields[3:] if k in v}})
    return buf.getvalue()


def write_outputs(result: dict[str, Any], curves: dict[str, dict[str, dict[str, np.ndarray]]],
                  out_dir: Path, sig: Signals | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / RESULTS_JSON, result)
    if sig is not None:
        sig.save(out_dir / SIGNALS_NPZ)
    write_text(out_dir / "membership.csv", csv_rows(result))
    write_text(out_dir / "membership.md", markdown_table(result))
    subtitle = "secure aggregation: target = aggregate model" if result["secure"] else ""
    for method, per_centre in curves.items():
        if per_centre:
            aucs = {c: result["methods"][method]["centres"][c]["slice"]["auc"] for c in per_centre}
            roc_figure(method, per_centre, aucs, out_dir / f"roc_{method}.png", subtitle)


def run_membership(run_dir: Path, data: FederatedData | None = None, settings: MembershipSettings | None = None,
                   out_dir: Path | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Attack one trained run with every selected method; returns (and writes, if out_dir) the results.

    Returns a JSON-serialisable dict: ``methods[method]`` is ``{"available": False, "reason": ...}`` or
    holds ``centres[centre][level]`` (level "slice" or "patient") with ``auc``, ``tpr@1e-2``,
    ``tpr@1e-3``, ``n_members``, ``n_nonmembers``, ``auc_same_centre``, ``auc_other_centre`` and
    bootstrap intervals; plus the candidates, the generalisation gap and timings.
    """
    settings = settings or MembershipSettings()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    run_dir = Path(run_dir)
    record = ServerRecord(run_dir)
    rounds = choose_rounds(record, settings.rounds)
    data = data if data is not None else load_run_data(run_dir)
    clients = check_data_matches(record, rounds, data)
    cands = build_candidates(data, settings.max_slices_per_patient, settings.seed)
    secure = bool(record.meta.get("secure")) or record.round(rounds[0]).secure
    curve_rounds = choose_rounds(record, settings.exposure_rounds) if settings.exposure_rounds else None
    families = _families(settings, secure) | (CURVE_FAMILIES if curve_rounds else set())
    sig = collect_signals(record, rounds, clients, cands, families, settings.batch_size, settings.grad_chunk,
                          progress)
    methods, curves = score_methods(sig, cands, clients, settings)
    members = {c: len(cands.members(c)) for c in clients}
    result: dict[str, Any] = {
        "run_dir": str(run_dir), "secure": sig.secure, "rounds": rounds, "clients": clients,
        "target_model": sig.target_source, "settings": settings.model_dump(mode="json"),
        "candidates": {"slices": len(cands), "patients": len(cands.patients), "member_patients": members,
                       "nonmember_patients": len(cands.nonmembers())},
        "generalisation_gap": generalisation_gap(sig, cands, clients),
        "signal_seconds": sig.seconds, "methods": methods,
    }
    if curve_rounds:
        start = time.perf_counter()
        per_round = curve_signals(record, curve_rounds, clients, cands, sig, settings.batch_size, progress)
        result["exposure_round"] = round_exposure(per_round, cands, clients, settings)
        result["signal_seconds"]["exposure_round"] = time.perf_counter() - start
    if out_dir is not None:
        write_outputs(result, curves, Path(out_dir), sig)
        if curve_rounds:
            exposure_figure({m: points for m, points in result["exposure_round"]["methods"].items()}, "round",
                            "training round", Path(out_dir) / "exposure_round.png")
    return result
