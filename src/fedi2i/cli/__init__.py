"""The ``fedi2i`` command line: data, train, attack, audit, flower."""

from __future__ import annotations

from fedi2i.cli import audit_cmd, data_cmd, train_cmd  # noqa: F401  (registers commands)
from fedi2i.cli.app import app

__all__ = ["app"]
