"""The audit's exposure-vs-federation-size part: smaller FedAvg federations, the overfitting dial.

For each size n in ``attacks.membership.exposure_sizes`` one cell trains the FedAvg baseline with the first n
training patients of every centre (``data.train_patients = n``; the held-out non-members are the same at
every size) and attacks it with the curve's two attacks (FedMIA-I, the loss attack on the global model).
Train and attack share a cell: nothing else reads the smaller run. The full federation
(``membership/none``) is the curve's last point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from fedi2i.audit.plan import AuditCell
from fedi2i.config import Config
from fedi2i.data.federation import FederatedData

# The federations whose exposure-vs-round curve the report draws (its series: both attacks without a defence,
# the global-model attack under secure aggregation); the other membership cells skip the curve.
ROUND_CURVE_DEFENCES = ("none", "secagg")


class Context(Protocol):
    """What the cells need of the audit's context (``fedi2i.audit.cells.AuditContext``)."""

    config: Config
    out_dir: Path

    @property
    def data(self) -> FederatedData: ...

    def run_config(self, defence: str) -> Config: ...

SIZE_PREFIX = "membership/size-"


def size_key(n: int) -> str:
    return f"{SIZE_PREFIX}{n}"


def exposure_cells(ctx: Context) -> list[AuditCell]:
    """One cell per federation size of the curve (none when ``exposure_sizes`` is empty)."""
    from fedi2i.attacks.membership.settings import settings_from_config

    settings = settings_from_config(ctx.config.attacks)
    return [AuditCell(key=size_key(n), kind="membership", title=f"membership exposure, {n} patients per centre",
                      params={"train_patients": n}, action=_size_action(ctx, n))
            for n in sorted(set(settings.exposure_sizes))]


def _size_action(ctx: Context, n: int):
    def action() -> dict[str, Any]:
        from fedi2i.attacks.membership.exposure import CURVE_METHODS
        from fedi2i.attacks.membership.run import run_membership
        from fedi2i.attacks.membership.settings import settings_from_config
        from fedi2i.training import RunOptions, train

        base = ctx.run_config("none")
        config = base.model_copy(update={"data": base.data.model_copy(update={"train_patients": n})})
        data = ctx.data.with_train_patients(n)
        run_dir = ctx.out_dir / "runs" / f"fedavg-none-size{n}"
        trained = train(config, run_dir, data, RunOptions(native_eval=False))
        settings = settings_from_config(ctx.config.attacks).model_copy(
            update={"methods": list(CURVE_METHODS), "exposure_rounds": None})
        result = run_membership(run_dir, data, settings, ctx.out_dir / "membership" / f"size-{n}")
        unseen = trained.metrics.get("unseen") or {}
        return {**result, "train_patients": n, "train_seconds": trained.metrics.get("train_seconds_this_call"),
                "unseen": unseen}
    return action
