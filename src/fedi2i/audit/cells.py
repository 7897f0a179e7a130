"""What each kind of audit cell does: train a run, or run one attack on the runs it needs."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from fedi2i.audit.exposure_plan import ROUND_CURVE_DEFENCES, exposure_cells
from fedi2i.audit.plan import TRAIN_RUNS, AuditCell, audit_settings, train_key
from fedi2i.config import Config, config_from_dict, set_dotted
from fedi2i.data.federation import FederatedData, load_federation
from fedi2i.training import RunOptions, train


class AuditContext:
    """The audit's config, output folder and data (loaded once, shared by every cell)."""

    def __init__(self, config: Config, out_dir: Path) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.settings = audit_settings(config)

    @cached_property
    def data(self) -> FederatedData:
        return load_federation(self.config.data, self.config.seed)

    def run_dir(self, defence: str) -> Path:
        return self.out_dir / "runs" / ("centralised" if defence == "centralised" else f"fedavg-{defence}")

    def run_config(self, defence: str) -> Config:
        raw = self.config.model_dump(mode="json")
        raw["federation"]["strategy"] = "fedavg"
        for key, value in TRAIN_RUNS.get(defence, {}).items():
            set_dotted(raw, key, value)
        return config_from_dict(raw, source=f"audit run {defence}")


def _train_action(ctx: AuditContext, defence: str):
    def action() -> dict[str, Any]:
        result = train(ctx.run_config(defence), ctx.run_dir(defence), ctx.data,
                       RunOptions(centralised=defence == "centralised"))
        m = result.metrics
        tests = m.get("test") or {}
        patients = {c: {pid: {k: v[k] for k in ("mae", "psnr", "ssim")} for pid, v in tests[c]["patients"].items()}
                    for c in ctx.config.data.unseen_centres if c in tests}
        return {"run_dir": str(result.run_dir), "unseen": m.get("unseen"), "seen": m.get("seen"),
                "unseen_patients": patients,
                "dp": m.get("dp"), "train_seconds": m.get("train_seconds_this_call"),
                "figures": sorted(str(p) for p in (result.run_dir / "figures").glob("*.png"))}
    return action


def _membership_action(ctx: AuditContext, defence: str):
    def action() -> dict[str, Any]:
        from fedi2i.attacks.membership.run import run_membership
        from fedi2i.attacks.membership.settings import settings_from_config

        out = ctx.out_dir / "membership" / defence
        settings = settings_from_config(ctx.config.attacks)
        if defence not in ROUND_CURVE_DEFENCES:  # the report draws no round curve of it: skip its cost
            settings = settings.model_copy(update={"exposure_rounds": None})
        return run_membership(ctx.run_dir(defence), ctx.data, settings, out)
    return action


def _inversion_cells(ctx: AuditContext) -> list[AuditCell]:
    """Trained-model cells attack the FedAvg baseline's final model; early-round cells need no run.

    Methods that attack the same threat setting share one recorded victim round, written by the first
    of them: the others run after it (in a parallel audit too), so none reads a victim half-written.
    """
    from dataclasses import asdict

    from fedi2i.attacks.inversion import InversionSettings, plan_inversion, run_inversion_cell

    settings = InversionSettings.from_config(ctx.config)
    cells = []
    first_of_victim: dict[tuple[Any, ...], str] = {}
    for cell in plan_inversion(settings):
        trained = cell.stage == "trained"
        victim = (cell.batch_size, cell.local_steps, cell.stage, cell.defence, cell.noise_multiplier, cell.client)
        first = first_of_victim.setdefault(victim, f"inversion/{cell.key}")

        def action(cell=cell, trained=trained) -> dict[str, Any]:
            return run_inversion_cell(ctx.config, ctx.data, cell, ctx.out_dir / "inversion",
                                      base_run_dir=ctx.run_dir("none") if trained else None, settings=settings)
        cells.append(AuditCell(key=f"inversion/{cell.key}", kind="inversion", title=f"inversion {cell.key}",
                               needs=[train_key("none")] if trained else [], params=asdict(cell), action=action,
                               after=[first] if first != f"inversion/{cell.key}" else []))
    return cells


def _poison_cells(ctx: AuditContext) -> list[AuditCell]:
    from fedi2i.attacks.poisoning import load_poison_settings, plan_poison, run_poison_cell

    settings = load_poison_settings(ctx.config)
    cells = []
    for cell in plan_poison(ctx.config, settings, ctx.data):
        def action(cell=cell) -> dict[str, Any]:
            return run_poison_cell(ctx.config, ctx.data, cell, ctx.out_dir / "poison")
        cells.append(AuditCell(key=f"poison/{cell.key}", kind="poison", title=f"poison {cell.key}",
                               params=cell.as_dict(), action=action))
    return cells


def build_cells(ctx: AuditContext) -> list[AuditCell]:
    """Training runs first (each attack cell names the run it reads), then the attacks."""
    s = ctx.settings
    cells: list[AuditCell] = []
    defences = list(s.defences)
    if s.centralised_baseline:
        defences.append("centralised")
    for defence in defences:
        cells.append(AuditCell(key=train_key(defence), kind="train", title=f"train {defence}",
                               action=_train_action(ctx, defence)))
    if s.membership:
        for defence in s.defences:
            cells.append(AuditCell(key=f"membership/{defence}", kind="membership",
                                   title=f"membership {defence}", needs=[train_key(defence)],
                                   action=_membership_action(ctx, defence)))
        cells.extend(exposure_cells(ctx))
    if s.inversion:
        cells.extend(_inversion_cells(ctx))
    if s.poisoning:
        cells.extend(_poison_cells(ctx))
    return cells
