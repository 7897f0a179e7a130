"""Turn audit cell results into the numbers a reader needs: exposure per threat and the study comparison.

Every number is read from cell results; nothing is assumed. One module per part of the study (membership,
quality, inversion, poisoning), each returning its threat rows and comparisons; ``summarise`` puts them in
the report's order.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fedi2i.audit.findings.common import STUDY, Comparison, Threat
from fedi2i.audit.findings.inversion import inversion_findings, inversion_margin
from fedi2i.audit.findings.membership import membership_aucs, membership_findings
from fedi2i.audit.findings.poisoning import poisoning_findings, single_run_status
from fedi2i.audit.findings.quality import quality, quality_findings, unusable_numbers

__all__ = ["STUDY", "Comparison", "Threat", "as_dicts", "inversion_margin", "membership_aucs", "quality",
           "single_run_status", "summarise", "unusable_numbers"]


def summarise(cells: dict[str, dict[str, Any]], detection: dict[str, Any] | None = None
              ) -> tuple[list[Threat], list[Comparison]]:
    """The security officer's table and the point-by-point comparison with the study."""
    threats: list[Threat] = []
    comps: list[Comparison] = []
    for part_threats, part_comps in (membership_findings(cells), quality_findings(cells),
                                     inversion_findings(cells), poisoning_findings(cells, detection)):
        threats += part_threats
        comps += part_comps
    return threats, comps


def as_dicts(items: list[Any]) -> list[dict[str, Any]]:
    return [asdict(i) for i in items]
