"""Gradient-inversion findings: recovered anatomy read as SSIM above an empty image."""

from __future__ import annotations

from typing import Any

from fedi2i.audit.findings.common import STUDY, Comparison, Threat, fmt, level, ok_results, signed

def inversion_rows(cells: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return list(ok_results(cells, "inversion").values())


def inversion_margin(row: dict[str, Any]) -> float:
    """SSIM above an empty (all-background) image on the same slices, best of MRI and CT.

    Raw 2D SSIM counts the air around the head: an all-background image already scores 0.2-0.8, so only
    the excess over that level is recovered anatomy. Rows without the level fall back to raw SSIM.
    """
    empty = row.get("background") or {}
    return max(row[f"{m}_ssim"] - (empty.get(f"{m}_ssim") or 0.0) for m in ("mri", "ct")
               if row.get(f"{m}_ssim") is not None)


def best_inversion(rows: list[dict[str, Any]], defence: str, methods: tuple[str, ...] | None = None
                   ) -> dict[str, Any] | None:
    """The most revealing row of a defence: largest SSIM excess over an empty image."""
    chosen = [r for r in rows if r.get("defence") == defence and (methods is None or r.get("method") in methods)
              and r.get("mri_ssim") is not None]
    return max(chosen, key=inversion_margin) if chosen else None


def _inversion_text(row: dict[str, Any]) -> str:
    return (f"{signed(inversion_margin(row))} SSIM over an empty image ({row['method']}, batch {row['batch']}; "
            f"raw MRI SSIM {row['mri_ssim']:.2f}, CT SSIM {fmt(row.get('ct_ssim'))})")


def inversion_findings(cells: dict[str, dict[str, Any]]) -> tuple[list[Threat], list[Comparison]]:
    """The inversion threat row and the DLG comparisons."""
    threats: list[Threat] = []
    comps: list[Comparison] = []
    inv = inversion_rows(cells)
    best_none = best_inversion(inv, "none")
    best_dlg = best_inversion(inv, "none", ("dlg",))
    inv_def = [(best_inversion(inv, d), d) for d in ("secagg", "dp")]
    inv_def = [(r, d) for r, d in inv_def if r is not None]
    if best_none is not None:
        if inv_def:
            r, d = min(inv_def, key=lambda x: inversion_margin(x[0]))
            defended_txt = _inversion_text(r)
            dname = {"secagg": "secure aggregation", "dp": "differential privacy"}[d]
        else:
            defended_txt, dname = "not measured", "secure aggregation"
        threats.append(Threat(
            "Gradient inversion (curious server reconstructs a centre's images from its update)",
            _inversion_text(best_none), dname, defended_txt,
            level(inversion_margin(best_none), 0.5, STUDY["dlg_ssim"])))
    if best_dlg is not None:
        s, p = best_dlg["mri_ssim"], best_dlg["mri_psnr"]
        comps.append(Comparison("DLG recovers only coarse anatomy", "SSIM <= 0.16, PSNR <= 11 dB",
                                f"best DLG MRI SSIM {signed(s).lstrip('+')}, PSNR {p:.1f} dB",
                                "reproduced" if s <= STUDY["dlg_ssim"] + 0.05 else "exceeded"))
    if best_none is not None:
        excess = inversion_margin(best_none)
        comps.append(Comparison("Stronger inversion than DLG (not in the study)", "SSIM <= 0.16 with DLG",
                                f"best {best_none['method']} (batch {best_none['batch']}): {signed(excess)} SSIM over "
                                f"an empty image (raw SSIM {max(best_none['mri_ssim'], best_none.get('ct_ssim') or 0):.2f})",
                                "exceeded" if excess > STUDY["dlg_ssim"] else "reproduced"))
    return threats, comps
