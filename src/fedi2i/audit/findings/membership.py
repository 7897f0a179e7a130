"""Membership findings: led by the AUC against same-centre non-members (membership itself), with the
patient-clustered bootstrap interval the membership attack stored beside it."""

from __future__ import annotations

import math
from typing import Any

from fedi2i.audit.findings.common import (CHANCE_AUC, CONFOUND, FEDMIA_METHODS, STUDY, Comparison, Threat, fmt,
                                          interval_status, level, level_of_interval, parts_dict, parts_text,
                                          typed_results)
from fedi2i.audit.intervals import Interval
from fedi2i.audit.schema import MembershipResult


def membership_results(cells: dict[str, dict[str, Any]]) -> dict[str, MembershipResult]:
    """The finished membership cells, by key (``membership/none``, ``membership/secagg``, ...)."""
    return typed_results(cells, "membership", MembershipResult)


def membership_aucs(result: MembershipResult, methods: tuple[str, ...] | None = None,
                    level: str = "slice", same_centre: bool = False) -> list[float]:
    """Every available method's AUC at ``level`` over the target centres (against same-centre non-members
    with ``same_centre``, else against all non-members)."""
    values = []
    for name, method in result.available().items():
        if methods is not None and name not in methods:
            continue
        for centre in method.centres.values():
            scores = getattr(centre, level)
            v = scores.auc_same_centre if same_centre else scores.auc
            if v is not None:
                values.append(float(v))
    return values


def same_centre_intervals(result: MembershipResult, methods: tuple[str, ...] | None = None
                          ) -> dict[str, Interval | None]:
    """Slice-level AUC against same-centre non-members, with the patient-clustered bootstrap interval the
    membership attack stored beside it, per centre (and per method when several are read). None where no
    interval was computed (bootstrap turned off)."""
    out: dict[str, Interval | None] = {}
    for name, method in result.available().items():
        if methods is not None and name not in methods:
            continue
        for centre, block in method.centres.items():
            if block.slice.auc_same_centre is not None:
                label = centre if methods is not None and len(methods) == 1 else f"{name} {centre}"
                out[label] = Interval.from_ci(block.slice.auc_same_centre, block.slice.auc_same_centre_ci95)
    return out


def _best_interval(parts: dict[str, Interval | None], point: float | None) -> Interval | None:
    """The interval of the part that holds the best same-centre AUC, if it has one."""
    return next((v for v in parts.values() if v and point is not None and v.point == point), None)


def _best_text(parts: dict[str, Interval | None], point: float | None) -> str:
    """The best same-centre AUC with its interval, if the part that holds it has one."""
    iv = _best_interval(parts, point)
    return iv.text() if iv else fmt(point)


def _best_level(parts: dict[str, Interval | None], point: float | None) -> str:
    """Exposure level of the best same-centre AUC, read at both ends of its interval where it has one (the
    best of many methods and centres is the most optimistic point; its interval says how sure it is)."""
    iv = _best_interval(parts, point)
    return level_of_interval(iv, 0.8, 0.6) if iv else level(point, 0.8, 0.6)


def mean_same_centre(result: MembershipResult | None, method: str) -> Interval | None:
    """One method's same-centre AUC as a mean over the target centres, with its stratified 95% interval."""
    m = result.available().get(method) if result is not None else None
    mean = m.same_centre_mean if m is not None else None
    return Interval.from_ci(mean.auc, mean.ci95) if mean is not None else None


def _iv_text(iv: Interval | None) -> str:
    return iv.text() if iv else "n/a"


def secagg_statement(cells: dict[str, dict[str, Any]]) -> str | None:
    """What secure aggregation removes (FedMIA on each centre's update) and what it leaves: the exposure of the
    aggregate model every centre receives. None without a SecAgg membership cell."""
    membership = membership_results(cells)
    secure = membership.get("membership/secagg")
    if secure is None:
        return None
    plain = membership.get("membership/none")
    fedmia, plain_global = mean_same_centre(plain, "fedmia-loss"), mean_same_centre(plain, "loss-global")
    secure_global = mean_same_centre(secure, "loss-global")
    removed = (f"FedMIA-I's per-update exposure (same-centre AUC {_iv_text(fedmia)} without it, mean over "
               "centres)" if fedmia else "FedMIA's per-update exposure")
    return (f"Under secure aggregation the server never sees a centre's own update, so {removed} is gone. "
            f"It does not protect the aggregate model that every centre receives: the loss attack on the global "
            f"model still reaches a same-centre AUC of {_iv_text(secure_global)} under secure aggregation "
            f"({_iv_text(plain_global)} without it). Only a defence that limits what the model memorises, such as "
            "differential privacy, lowers that exposure.")


def best_available_auc(result: MembershipResult) -> float | None:
    """Best same-centre AUC over methods: the membership signal itself, not the scanner confound
    (non-members from another centre can be rejected because of their scanner alone)."""
    values = membership_aucs(result, same_centre=True)
    return max(values) if values else None


def membership_findings(cells: dict[str, dict[str, Any]]) -> tuple[list[Threat], list[Comparison]]:
    """The membership threat row and the study's two membership findings."""
    threats: list[Threat] = []
    comps: list[Comparison] = []
    membership = membership_results(cells)
    plain = membership.get("membership/none")
    secure = membership.get("membership/secagg")
    dp = membership.get("membership/dp")
    fedmia = membership_aucs(plain, ("fedmia-loss",)) if plain else []
    best_plain = best_available_auc(plain) if plain else None
    best_secure = best_available_auc(secure) if secure else None
    best_dp = best_available_auc(dp) if dp else None
    defended = [x for x in ((best_secure, "secure aggregation"), (best_dp, "differential privacy")) if x[0] is not None]
    best_def = min(defended) if defended else (None, "secure aggregation")
    def_parts = same_centre_intervals(secure if best_def[1] == "secure aggregation" else dp) if defended else {}
    plain_parts = same_centre_intervals(plain) if plain else {}
    threats.append(Threat(
        "Membership inference (curious server learns who was in a centre's training set)",
        f"best same-centre AUC (membership itself) "
        f"{_best_text(plain_parts, best_plain)}; beside it, FedMIA-I AUC up "
        f"to {fmt(max(fedmia) if fedmia else None)} against all non-members ({CONFOUND})",
        best_def[1], f"best same-centre AUC {_best_text(def_parts, best_def[0])}", _best_level(plain_parts, best_plain)))
    secure_global = mean_same_centre(secure, "loss-global")
    if secure is not None:
        fedmia_mean = mean_same_centre(plain, "fedmia-loss")
        threats.append(Threat(
            "Membership through the shared model (what secure aggregation does not protect)",
            f"FedMIA-I on each centre's update: same-centre AUC {_iv_text(fedmia_mean)}; loss attack on the global "
            f"model: {_iv_text(mean_same_centre(plain, 'loss-global'))} (means over centres, 95% CI over patients)",
            "secure aggregation",
            f"FedMIA removed (no individual update to attack); the aggregate model's own exposure remains: loss "
            f"attack on the global model, same-centre AUC {_iv_text(secure_global)}",
            level_of_interval(secure_global, 0.8, 0.6)))
    parts = same_centre_intervals(plain, ("fedmia-loss",)) if plain else {}
    if parts:
        beside = (f"; beside it, against all non-members {min(fedmia):.2f}-{max(fedmia):.2f}, {CONFOUND}"
                  if fedmia else "")
        comps.append(Comparison(
            "FedMIA exposes membership", "AUC 0.92-0.99 across centres",
            f"FedMIA-I AUC against same-centre non-members (membership itself; slice level, 95% CI over patients): "
            f"{parts_text(parts)}; mean over centres {_iv_text(mean_same_centre(plain, 'fedmia-loss'))}{beside}",
            interval_status(parts, *STUDY["fedmia_auc"]), parts_dict(parts)))
    elif fedmia:
        comps.append(Comparison("FedMIA exposes membership", "AUC 0.92-0.99 across centres",
                                f"no same-centre non-members, so membership itself is not measured; against all "
                                f"non-members {min(fedmia):.2f}-{max(fedmia):.2f}, {CONFOUND}", "not measured"))
    else:
        comps.append(Comparison("FedMIA exposes membership", "AUC 0.92-0.99", "not measured", "not measured"))
    secure_parts = same_centre_intervals(secure) if secure is not None else {}
    if secure_parts:
        comps.append(_secagg_comparison(secure, secure_parts))
    elif secure is not None:
        comps.append(Comparison("SecAgg brings membership inference to chance", "AUC 0.23-0.56",
                                "no same-centre AUC under secure aggregation", "not measured"))
    else:
        comps.append(Comparison("SecAgg brings membership inference to chance", "AUC 0.23-0.56", "not measured",
                                "not measured"))
    return threats, comps


def method_means(result: MembershipResult) -> dict[str, Interval]:
    """Each available method's same-centre AUC as a mean over the target centres, with its interval."""
    means = {name: mean_same_centre(result, name) for name in result.available()}
    return {name: iv for name, iv in means.items() if iv is not None}


def _secagg_comparison(secure: MembershipResult, parts: dict[str, Interval | None]) -> Comparison:
    """"SecAgg brings membership inference to chance", decided per method on the mean over centres.

    One centre's interval rests on its 8 members and 12 non-members and is about 0.25 wide, so no centre alone
    can show chance; the mean over centres (stratified bootstrap) can. Every method must stay below
    ``CHANCE_AUC`` with its whole interval. The per-centre range is shown beside it, so a single leaky centre
    stays visible. Results without the means (older cells) are decided per centre, as before.
    """
    fedmia_secure = membership_aucs(secure, FEDMIA_METHODS)
    ours = ("per-client FedMIA unavailable by construction; attacks on what the server sees, "
            if not fedmia_secure else f"FedMIA AUC up to {max(fedmia_secure):.2f}; ")
    means = method_means(secure)
    if means:
        ivs = [iv for iv in parts.values() if iv]
        beside = (f"; per centre and method {min(iv.point for iv in ivs):.2f}-{max(iv.point for iv in ivs):.2f}, "
                  f"intervals reaching {max(iv.high for iv in ivs):.2f}") if ivs else ""
        ours += (f"same-centre AUC, mean over centres per method (95% CI over patients; chance up to "
                 f"{CHANCE_AUC}): {parts_text(dict(means))}{beside}")
        decide: dict[str, Interval | None] = dict(means)
    else:
        ours += f"same-centre AUC (95% CI over patients; chance up to {CHANCE_AUC}): {parts_text(parts)}"
        decide = parts
    return Comparison("SecAgg brings membership inference to chance", "AUC 0.23-0.56", ours,
                      interval_status(decide, -math.inf, CHANCE_AUC, above="not reproduced"), parts_dict(decide))

