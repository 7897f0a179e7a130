"""Turn audit cell results into the numbers a reader needs: exposure per threat and the study comparison.

Every number is read from cell results; nothing is assumed. One module per part of the study (membership,
quality, inversion, poisoning), each returning its threat rows and comparisons; ``summarise`` puts them in
the report's order. Cells are passed as stored (``CellStore.all``); the parts read them through the typed
models of ``fedi2i.audit.schema``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fedi2i.audit.findings.common import STUDY, Comparison, Threat, level_of_interval, verdict_range
from fedi2i.audit.findings.inversion import inversion_findings
from fedi2i.audit.findings.membership import membership_aucs, membership_findings
from fedi2i.audit.findings.poisoning import poisoning_parts, single_run_status
from fedi2i.audit.findings.quality import quality, quality_findings, unusable_numbers
from fedi2i.audit.schema import PoisonEffect

__all__ = ["STUDY", "Comparison", "Threat", "as_dicts", "level_of_interval", "membership_aucs",
           "poison_effects", "quality", "single_run_status", "summarise", "unusable_numbers", "verdict_range"]


def summarise(cells: dict[str, dict[str, Any]], detection: dict[str, Any] | None = None
              ) -> tuple[list[Threat], list[Comparison]]:
    """The security officer's table and the point-by-point comparison with the study."""
    threats: list[Threat] = []
    comps: list[Comparison] = []
    poison_threats, poison_comps, _ = poisoning_parts(cells, detection)
    for part_threats, part_comps in (membership_findings(cells), quality_findings(cells),
                                     inversion_findings(cells), (poison_threats, poison_comps)):
        threats += part_threats
        comps += part_comps
    return threats, comps


def poison_effects(cells: dict[str, dict[str, Any]], detection: dict[str, Any] | None = None
                   ) -> list[PoisonEffect]:
    """Every attacked poisoning configuration against its rule's clean runs, paired by seed, with the ratio's
    interval where there are enough seeds, and whether a study finding reads it."""
    return poisoning_parts(cells, detection)[2]


def as_dicts(items: list[Any]) -> list[dict[str, Any]]:
    return [asdict(i) for i in items]
