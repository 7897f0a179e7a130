"""The ``fedi2i`` command line: data, train, attack, audit, flower."""

from __future__ import annotations

from fedi2i.cli import (  # noqa: F401  (each module registers its commands)
    attack_inversion,
    attack_membership,
    attack_poison,
    audit_cmd,
    data_cmd,
    flower_cmd,
    predict_cmd,
    train_cmd,
)
from fedi2i.cli.app import app

__all__ = ["app"]
