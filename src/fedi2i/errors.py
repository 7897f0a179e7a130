"""Error types that carry a message a user can act on, and the CLI exit code of each class.

Exit codes: 2 usage or configuration, 3 input data, 4 run-folder state, 1 an internal bug (anything
that is not a ``Fedi2iError``).
"""

from __future__ import annotations


class Fedi2iError(Exception):
    """Base class: every error fedi2i raises on purpose derives from it."""

    exit_code = 2


class ConfigError(Fedi2iError, ValueError):
    """A configuration is invalid (unknown key, impossible setting, incompatible options)."""

    exit_code = 2


class DataError(Fedi2iError):
    """An input image or patient folder is missing, unreadable or inconsistent."""

    exit_code = 3

    def __init__(self, message: str, patient: str | None = None, path: str | None = None) -> None:
        where = []
        if patient:
            where.append(f"patient {patient}")
        if path:
            where.append(f"file {path}")
        prefix = f"[{', '.join(where)}] " if where else ""
        super().__init__(prefix + message)
        self.patient = patient
        self.path = path


class RunStateError(Fedi2iError):
    """A run folder cannot be used as asked: corrupt or foreign files, or a run of another configuration."""

    exit_code = 4


class UpdateRejected(Fedi2iError):
    """A client update cannot be aggregated (NaN/Inf, wrong shape)."""


class AggregationError(Fedi2iError):
    """A round cannot be aggregated (too few usable clients, too few survivors)."""


class SecAggAbort(AggregationError):
    """Secure aggregation aborted, e.g. fewer than the threshold of clients survived."""


class RecordError(RunStateError):
    """A curious-server record is missing what the caller asked for, or one of its files is unreadable."""
