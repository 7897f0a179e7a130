"""The inversion experiment: plan of threat-setting cells, one cell end to end, results and table.

A cell = (method, batch size, local steps, early/trained model, client, defence). Running one trains
the victim round with the engine (or reuses it: every method attacks the same recorded round), builds
the observation from the record, runs the attack on the observation alone (with the public slices the
attacker may hold, ``attacker_prior``), and only then evaluates the reconstruction against the true batch
(``assess``: whole-slice SSIM/PSNR after Hungarian matching as the study scored it; the in-mask anatomy
margin over other patients with its interval; the objective gap; the budget curve).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from fedi2i.attacks.inversion.assess import assess, checkpoints, planned_iterations
from fedi2i.attacks.inversion.base import Progress
from fedi2i.attacks.inversion.figures import reconstruction_grid
from fedi2i.attacks.inversion.judge import LEAK_MARGIN, SEARCH_LIMITED, most_revealing, overall, read_cell
from fedi2i.attacks.inversion.matching import STUDY_PSNR_BOUND, STUDY_SSIM_BOUND, chance_level
from fedi2i.attacks.inversion.methods import run_attack
from fedi2i.attacks.inversion.observation import Observation, observe
from fedi2i.attacks.inversion.prior import Prior
from fedi2i.attacks.inversion.settings import InversionSettings
from fedi2i.attacks.inversion.victim import (VictimSetting, _with, dp_epsilon, dpsgd_observation,
                                             start_model, victim_batch, victim_round)
from fedi2i.config import Config
from fedi2i.data.federation import FederatedData
from fedi2i.data.slices import SliceSet
from fedi2i.errors import ConfigError
from fedi2i.io import read_json, write_text


@dataclass(frozen=True)
class InversionCell:
    """One threat setting attacked by one method."""

    method: str
    batch_size: int
    local_steps: int
    stage: str  # "early" (round 0) or "trained" (after a trained run)
    defence: str  # "none", "secagg", "dp" (clip + noise on the update) or "dpsgd" (Opacus)
    client: str | None = None  # None: the first training centre
    noise_multiplier: float | None = None  # dp / dpsgd only; None: from the settings or config

    @property
    def key(self) -> str:
        noise = f"-z{self.noise_multiplier:g}" if self.noise_multiplier is not None else ""
        client = f"-{self.client}" if self.client else ""
        return f"{self.method}-b{self.batch_size}-s{self.local_steps}-{self.stage}-{self.defence}{noise}{client}"


def plan_inversion(settings: InversionSettings) -> list[InversionCell]:
    """Cells: methods x batch sizes x defences at the base setting, then one axis at a time.

    The base setting is the first of ``local_steps``, ``stages`` and ``clients``. The other values of
    those axes are run without defence for ``axis_methods`` and ``axis_batch_sizes`` (default: every
    batch size). DP cells expand over
    the noise multiplier the settings give (one by default).
    """
    steps0, stage0 = settings.local_steps[0], settings.stages[0]
    clients = settings.clients or [None]
    client0 = clients[0]
    noise = settings.dp_noise_multiplier
    cells: list[InversionCell] = []
    for defence in settings.defences:
        for batch in settings.batch_sizes:
            for method in settings.methods:
                cells.append(InversionCell(method, batch, steps0, stage0, defence, client0,
                                           noise if defence in ("dp", "dpsgd") else None))
    axis_methods = [m for m in settings.axis_methods if m in settings.methods] or settings.axis_methods
    batches = settings.axis_batch_sizes or settings.batch_sizes
    for steps in settings.local_steps[1:]:
        cells += [InversionCell(m, b, steps, stage0, "none", client0) for b in batches for m in axis_methods]
    for stage in settings.stages[1:]:
        cells += [InversionCell(m, b, steps0, stage, "none", client0) for b in batches for m in axis_methods]
    for client in clients[1:]:
        cells += [InversionCell(m, b, steps0, stage0, "none", client) for b in batches for m in axis_methods]
    return list(dict.fromkeys(cells))


def _victim_setting(config: Config, cell: InversionCell, settings: InversionSettings) -> VictimSetting:
    noise = None
    if cell.defence in ("dp", "dpsgd"):
        noise = next(v for v in (cell.noise_multiplier, settings.dp_noise_multiplier, config.dp.noise_multiplier)
                     if v is not None)
    return VictimSetting(batch_size=cell.batch_size, local_steps=cell.local_steps, stage=cell.stage,
                         defence=cell.defence, noise_multiplier=noise, optimizer=settings.victim_optimizer,
                         lr=settings.victim_lr or config.train.lr, clip=settings.dp_clip or config.dp.clip,
                         seed=settings.seed)


def attacker_prior(data: FederatedData, attacked: list[str]) -> Prior:
    """Public slices for the attacker: the unseen centres' (no training saw them), else the training centres
    the observed update does not come from. Never a slice of an attacked centre."""
    public = [c for c in sorted(data.test) if c not in data.train and c not in attacked]
    parts = [data.test[c] for c in public]
    if not parts:
        parts = [SliceSet.concat([s for s in (data.train.get(c), data.val.get(c), data.test.get(c)) if s is not None])
                 for c in sorted(data.train) if c not in attacked]
    if not parts:
        raise ConfigError("the attacker's prior needs slices of a centre outside the attacked update (an unseen "
                          "centre, or a training centre not in it); set attacks.inversion.i2i.init: random")
    slices = SliceSet.concat(parts)
    prior = Prior(slices.mr.clone(), slices.ct.clone(), tuple(slices.centre), tuple(slices.patient))
    prior.check_disjoint(attacked)
    return prior


def _update_batch(obs: Observation, victim_dir: Path, data: FederatedData) -> tuple[torch.Tensor, torch.Tensor]:
    """Every true image behind the observed update, in the observation's client order (evaluation only)."""
    batches = [victim_batch(victim_dir, data, g.client) for g in obs.groups]
    if any(b is None for b in batches):
        raise ConfigError(f"{victim_dir} is not a victim round: its batches are unknown")
    return torch.cat([b.mr for b in batches]), torch.cat([b.ct for b in batches])  # type: ignore[union-attr]


def run_inversion_cell(config: Config, data: FederatedData, cell: InversionCell, out_dir: Path,
                       base_run_dir: Path | None = None, settings: InversionSettings | None = None,
                       progress: Progress | None = None) -> dict[str, Any]:
    """Run one cell; returns a JSON-serialisable result (scores, budget, timings, figure path).

    ``out_dir`` keeps the victim rounds (shared by cells), any base run trained for the "trained" stage
    (when ``base_run_dir`` is not given) and the figures.
    """
    settings = settings or InversionSettings.from_config(config)
    out_dir = Path(out_dir)
    client = cell.client or config.data.train_centres[0]
    if client not in data.train:
        raise ConfigError(f"client {client!r} is not a training centre; training centres: "
                          f"{', '.join(sorted(data.train))}")
    setting = _victim_setting(config, cell, settings)
    if cell.defence == "dpsgd":
        cfg = _with(config, {"model.norm": "group"})
        start = start_model(cfg, data, cell.stage, out_dir, settings.trained_rounds, None)
        obs, picks = dpsgd_observation(cfg, data, setting, client, start)
        truth = data.train[client].select(picks)
        victim_dir = None
    else:
        start = start_model(config, data, cell.stage, out_dir, settings.trained_rounds, base_run_dir)
        victim_dir = victim_round(config, data, setting, out_dir, start)
        obs = observe(victim_dir, start[1], client)
        truth = None
    uses_prior = cell.method == "i2i" and settings.i2i.init != "random"
    prior = attacker_prior(data, [g.client for g in obs.groups]) if uses_prior else None
    at = checkpoints(planned_iterations(cell.method, settings, obs.image_size))
    # --- the attack sees the observation (and the attacker's public prior) only ---
    recon = run_attack(obs, cell.method, settings, progress=progress, prior=prior, snapshot_at=at)
    # --- evaluation: the only step that reads the true images ---
    if truth is None:
        assert victim_dir is not None
        truth = victim_batch(victim_dir, data, client)
        update_batch = _update_batch(obs, victim_dir, data)
    else:
        update_batch = (truth.mr, truth.ct)
    assert truth is not None
    judged = assess(obs, recon, truth, data.train[client], update_batch, settings, seed=settings.seed)
    scores = judged["raw"]
    chance = chance_level(truth.mr, truth.ct, settings.mr_box, seed=settings.seed, n_recon=len(recon.mr))
    result: dict[str, Any] = {
        "key": cell.key, "method": cell.method, "batch": cell.batch_size, "steps": cell.local_steps,
        "stage": cell.stage, "defence": cell.defence, "noise_multiplier": setting.noise_multiplier,
        "round": obs.round, "client": client, "target": obs.target, "optimizer": obs.optimizer,
        "loss": obs.loss, "lr": obs.lr, "images_reconstructed": int(recon.mr.shape[0]),
        **{k: scores[k] for k in ("mri_ssim", "mri_psnr", "ct_ssim", "ct_psnr", "mri_ssim_max", "ct_ssim_max")},
        "per_item": scores["per_item"], "chance": chance,
        "anatomy": judged["anatomy"], "objective_gap": judged["objective_gap"], "budget_curve": judged["budget_curve"],
        "prior": {"init": settings.i2i.init, "source": prior.describe()} if prior is not None else None,
        "iterations": recon.iterations, "seconds": recon.seconds,
        "iterations_per_second": recon.iterations / recon.seconds if recon.seconds > 0 else None,
        "objective": recon.objective, "victim_run": str(victim_dir) if victim_dir else None,
        **{k: v for k, v in recon.extra.items() if isinstance(v, (int, float, str))},
    }
    if cell.defence in ("dp", "dpsgd"):
        result.update(_epsilons(config, data, cell, setting, client, settings.dp_delta))
    if settings.figures:
        title = (f"{cell.method}  B={cell.batch_size}  steps={cell.local_steps}  {cell.stage}  "
                 f"defence={cell.defence}  client={client}")
        path = reconstruction_grid(truth.mr, truth.ct, recon.mr, recon.ct, scores,
                                   out_dir / "figures" / f"{cell.key}.png", title)
        result["figure"] = str(path)
    return result


def _epsilons(config: Config, data: FederatedData, cell: InversionCell, setting: VictimSetting, client: str,
              delta: float) -> dict[str, Any]:
    """(epsilon, delta) of one round and of a whole training run with the same DP settings."""
    z = setting.noise_multiplier or 0.0
    if cell.defence == "dp":  # one Gaussian release of the whole update per round (client-level DP)
        q, per_round = 1.0, 1
    else:  # DP-SGD: S subsampled steps per round, batch B out of the centre's training slices
        q, per_round = cell.batch_size / max(len(data.train[client]), 1), cell.local_steps
    return {"dp_delta": delta, "dp_clip": setting.clip,
            "dp_epsilon_round": dp_epsilon(z, q, per_round, delta),
            "dp_epsilon_training": dp_epsilon(z, q, per_round * config.train.rounds, delta),
            "dp_sample_rate": q}


def run_inversion_grid(config: Config, data: FederatedData, out_dir: Path,
                       settings: InversionSettings | None = None, base_run_dir: Path | None = None,
                       on_cell: Callable[[InversionCell, dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Every planned cell (a finished cell's JSON is reused), then results.json/csv and table.md."""
    settings = settings or InversionSettings.from_config(config)
    out_dir = Path(out_dir)
    results = []
    for cell in plan_inversion(settings):
        path = out_dir / "cells" / f"{cell.key}.json"
        if path.exists():
            result = read_json(path, hint='delete it to rerun that cell')
        else:
            result = run_inversion_cell(config, data, cell, out_dir, base_run_dir, settings)
            _write_text(path, json.dumps(result, indent=2, default=_json_default))
        results.append(result)
        if on_cell is not None:
            on_cell(cell, result)
    write_inversion_results(results, out_dir)
    return results


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return float(value)


def _write_text(path: Path, text: str) -> Path:
    write_text(path, text)
    return path


TABLE_COLUMNS = ("method", "batch", "steps", "stage", "client", "defence", "mri_ssim", "mri_psnr",
                 "ct_ssim", "ct_psnr", "iterations", "seconds")


def _raw(result: dict[str, Any]) -> float:
    return max(result["mri_ssim"], result.get("ct_ssim") or 0.0)


def verdict(results: list[dict[str, Any]]) -> str:
    """Plain statement of what the settings show, read from the in-mask anatomy margin and the objective gap.

    Raw whole-slice SSIM (the study's number, SSIM <= 0.16 for DLG) is quoted, but decides nothing: the air
    around the head inflates it. A setting leaks where the in-mask margin over other patients' slices is
    above ``LEAK_MARGIN`` with its whole 95 % interval; "low" needs the interval below it and a search that
    found an answer as good as the truth.
    """
    if not results:
        return "No inversion results."
    best_raw = max(results, key=_raw)
    lines = [f"Best raw whole-slice SSIM (the study's measure): MRI {best_raw['mri_ssim']:.3f}, CT "
             f"{best_raw.get('ct_ssim') or 0.0:.3f} ({best_raw['method']}, batch {best_raw['batch']}, defence "
             f"{best_raw['defence']}); {sum(_raw(r) > STUDY_SSIM_BOUND for r in results)} of {len(results)} "
             f"settings are above the study's bound (SSIM <= {STUDY_SSIM_BOUND}, PSNR <= {STUDY_PSNR_BOUND:.0f} dB), "
             "which the air around the head alone can explain."]
    readings = [x for x in (read_cell(r) for r in results) if x is not None]
    if len(readings) < len(results):
        lines.append(f"{len(results) - len(readings)} setting(s) were scored by an older fedi2i (no in-mask score): "
                     "delete their cell files to recompute them.")
    if readings:
        best = most_revealing(readings)
        assert best is not None
        leaks = [r for r in readings if r.leak]
        limited = [r for r in readings if r.verdict == SEARCH_LIMITED]
        lines.append(f"Anatomy (in-mask SSIM above other patients' slices at the same level): {len(leaks)} of "
                     f"{len(readings)} settings recover this patient's anatomy (margin above {LEAK_MARGIN} with its "
                     f"whole 95% interval); {len(limited)} are search-limited (the true images explain the update "
                     f"at least twice as well as the reconstruction, so a leak is not excluded). Most revealing: "
                     f"{best.text()}. Overall: {overall(readings)}.")
    return " ".join(lines)


def write_inversion_table(results: list[dict[str, Any]], path_md: Path) -> Path:
    """Markdown table method x batch x defence (and the other axes), with the verdict."""
    order = {"none": 0, "secagg": 1, "dp": 2, "dpsgd": 3}
    rows = sorted(results, key=lambda r: (r["stage"], r["steps"], str(r["client"]), order.get(r["defence"], 9),
                                          r["method"], r["batch"]))
    head = ["method", "batch", "steps", "model", "client", "defence", "MRI SSIM", "CT SSIM",
            "in-mask SSIM over other patients [95% CI]", "re-identified (chance)", "objective gap", "reading",
            "iterations", "seconds"]
    lines = ["# Gradient inversion: what the reconstructions show", "",
             "MRI/CT SSIM: whole-slice 2D SSIM against the true batch after Hungarian matching (the study's "
             "measure; the air around the head inflates it). In-mask SSIM over other patients: SSIM inside the "
             "dilated head mask on the true slice minus the same on other patients' slices at the same level "
             "(best modality; 0 = no closer to this patient than to another), with its 95% interval over "
             "patients. Re-identified: share of slices whose own patient scores highest. Objective gap: how many "
             "times better the true batch explains the update than the reconstruction (large: search-limited).",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        defence = r["defence"] + (f" (z={r['noise_multiplier']:g}, eps={_fmt_eps(r.get('dp_epsilon_round'))}/round)"
                                  if r["defence"] in ("dp", "dpsgd") else "")
        reading = read_cell(r)
        if reading is None:
            extra = "not scored | - | - | older result"
        else:
            gap = "-" if reading.gap_ratio is None else f"{reading.gap_ratio:.3g}x"
            ci = ("no interval" if reading.low is None or reading.high is None
                  else f"[{reading.low:+.3f}, {reading.high:+.3f}]")
            extra = (f"{reading.modality.upper()} {reading.margin:+.3f} {ci} | "
                     f"{reading.reid_top1:.0%} ({reading.reid_chance:.0%}) | {gap} | {reading.verdict}")
        lines.append(f"| {r['method']} | {r['batch']} | {r['steps']} | {r['stage']} | {r['client']} | {defence} | "
                     f"{r['mri_ssim']:.3f} | {r['ct_ssim']:.3f} | {extra} | {r['iterations']} | {r['seconds']:.0f} |")
    lines += ["", verdict(results), ""]
    return _write_text(Path(path_md), "\n".join(lines))


def _fmt_eps(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "?"
    return "inf" if not math.isfinite(v) else f"{v:.3g}"


def write_inversion_results(results: list[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    """results.json (everything), results.csv (the table's columns) and table.md."""
    out_dir = Path(out_dir)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*TABLE_COLUMNS, "noise_multiplier", "dp_epsilon_round", "key"],
                            extrasaction="ignore")
    writer.writeheader()
    for r in results:
        writer.writerow(r)
    return {"json": _write_text(out_dir / "results.json", json.dumps(results, indent=2, default=_json_default)),
            "csv": _write_text(out_dir / "results.csv", buf.getvalue()),
            "table": write_inversion_table(results, out_dir / "table.md")}


def cell_from_dict(raw: dict[str, Any]) -> InversionCell:
    return InversionCell(**{k: raw[k] for k in asdict(InversionCell("dlg", 1, 1, "early", "none")) if k in raw})


def attack_recorded_round(run_dir: Path, round_index: int, client: str, method: str,
                          settings: InversionSettings, data: FederatedData | None = None,
                          out_dir: Path | None = None, images: int | None = None,
                          progress: Progress | None = None) -> dict[str, Any]:
    """Attack one client's update in one recorded round of any run (what ``fedi2i attack inversion`` does).

    The observation comes from the record alone. The evaluation then compares the reconstruction with
    the client's batch where the run is a victim round (``victim.json``), otherwise with every training
    slice of the client (each reconstruction paired with a distinct best-matching slice).
    """
    from fedi2i.config import load_config
    from fedi2i.data.federation import load_federation

    run_dir = Path(run_dir)
    obs = observe(run_dir, round_index, client, images)
    config_path = run_dir / "config.yaml"
    if data is None:
        if not config_path.exists():
            raise ConfigError(f"{run_dir} has no config.yaml: cannot load the true images to score the attack")
        config = load_config(config_path)
        data = load_federation(config.data, config.seed, progress=False)
    if client not in data.train:
        raise ConfigError(f"client {client!r} has no training data; training centres: "
                          f"{', '.join(sorted(data.train))}")
    prior = (attacker_prior(data, [g.client for g in obs.groups])
             if method == "i2i" and settings.i2i.init != "random" else None)
    at = checkpoints(planned_iterations(method, settings, obs.image_size))
    recon = run_attack(obs, method, settings, progress=progress, prior=prior, snapshot_at=at)
    truth = victim_batch(run_dir, data, client)
    scope, update_batch = "batch", None
    if truth is None:
        truth, scope = data.train[client], "all training slices"
    else:
        update_batch = _update_batch(obs, run_dir, data)
    judged = assess(obs, recon, truth, data.train[client], update_batch, settings, seed=settings.seed)
    scores = judged["raw"]
    out_dir = Path(out_dir or run_dir / "attacks" / "inversion")
    key = f"{method}-r{round_index}-{client}"
    result: dict[str, Any] = {
        "key": key, "method": method, "round": round_index, "client": client, "target": obs.target,
        "batch": obs.items, "steps": obs.steps, "stage": f"round {round_index}",
        "defence": "secagg" if obs.secure else ("dp" if obs.clipped else "none"),
        "noise_multiplier": obs.dp.get("noise_multiplier") if obs.clipped else None,
        "optimizer": obs.optimizer, "loss": obs.loss, "lr": obs.lr, "truth_scope": scope,
        "truth_items": len(truth), "images_reconstructed": int(recon.mr.shape[0]),
        **{k: scores[k] for k in ("mri_ssim", "mri_psnr", "ct_ssim", "ct_psnr", "mri_ssim_max", "ct_ssim_max")},
        "per_item": scores["per_item"], "anatomy": judged["anatomy"], "objective_gap": judged["objective_gap"],
        "budget_curve": judged["budget_curve"],
        "prior": {"init": settings.i2i.init, "source": prior.describe()} if prior is not None else None,
        "iterations": recon.iterations, "seconds": recon.seconds,
        "iterations_per_second": recon.iterations / recon.seconds if recon.seconds > 0 else None,
        "objective": recon.objective,
    }
    if settings.figures:
        result["figure"] = str(reconstruction_grid(
            truth.mr, truth.ct, recon.mr, recon.ct, scores, out_dir / "figures" / f"{key}.png",
            f"{method}  round {round_index}  client {client}  ({obs.target})"))
    _write_text(out_dir / f"{key}.json", json.dumps(result, indent=2, default=_json_default))
    return result
