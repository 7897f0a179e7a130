"""A tiny self-contained HTML writer: inline CSS, figures embedded as base64 PNG, no external resources."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from pathlib import Path

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #1d2330; line-height: 1.45; padding: 0 1em; }
h1 { border-bottom: 3px solid #2a5599; padding-bottom: .3em; }
h2 { color: #2a5599; margin-top: 2em; border-bottom: 1px solid #d5dbe6; }
table { border-collapse: collapse; margin: .8em 0; font-size: 0.92em; }
th, td { border: 1px solid #d5dbe6; padding: .35em .7em; text-align: left; vertical-align: top; }
th { background: #eef2f8; }
.verdict-high { background: #fde2e1; color: #8a1c14; font-weight: bold; }
.verdict-medium { background: #fff3d6; color: #7a5200; font-weight: bold; }
.verdict-low { background: #e3f4e5; color: #1d6b2a; font-weight: bold; }
.tag-reproduced { color: #1d6b2a; font-weight: bold; }
.tag-exceeded { color: #8a1c14; font-weight: bold; }
.tag-not-reproduced { color: #7a5200; font-weight: bold; }
.tag-inconclusive { color: #555555; font-weight: bold; }
.fig { display: inline-block; margin: .5em; text-align: center; font-size: .85em; color: #555; }
.fig img { max-width: 520px; border: 1px solid #d5dbe6; }
.error { color: #8a1c14; }
pre { background: #f5f7fa; padding: .8em; overflow-x: auto; font-size: .8em; }
.small { font-size: .85em; color: #555; }
"""


def esc(value: object) -> str:
    return html.escape(str(value))


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], raw_columns: set[int] | None = None) -> str:
    """An HTML table; cells in ``raw_columns`` are trusted HTML (already escaped by the caller)."""
    raw_columns = raw_columns or set()
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if i in raw_columns else esc(c)}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(path: Path | str, caption: str) -> str:
    """Embed a PNG as a data URI so the report is one file that works offline."""
    path = Path(path)
    if not path.exists():
        return f'<div class="fig error">missing figure {esc(path.name)}</div>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<div class="fig"><img alt="{esc(caption)}" src="data:image/png;base64,{data}"><br>{esc(caption)}</div>'


def page(title: str, sections: Iterable[str]) -> str:
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(sections)}</body></html>")
