"""Markdown cells and tables shared by the quality and the speed reports (percent with one decimal)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path


def percent_cell(value: float, spread: float = math.nan) -> str:
    """``value`` (a fraction) in percent with one decimal, ``± spread`` when given; ``–`` for NaN."""
    if math.isnan(value):
        return "–"
    text = f"{100 * value:.1f}"
    return f"{text} ± {100 * spread:.1f}" if not math.isnan(spread) else text


def plain_cell(value: float, digits: int = 1) -> str:
    """``value`` with thousands separators and ``digits`` decimals; ``–`` for NaN."""
    return "–" if math.isnan(value) else f"{value:,.{digits}f}"


def markdown_table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table: header row, separator, one row per line."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return out


def failures_section(title: str, what: str, failed: Mapping[str, str]) -> list[str]:
    """A ``## title`` section with a ``what | Error`` table (``|`` in errors escaped); empty when nothing failed."""
    if not failed:
        return []
    rows = [[name, error.replace("|", "\\|")] for name, error in failed.items()]
    return ["", f"## {title}", "", *markdown_table([what, "Error"], rows)]


def write_lines(path: str | Path, lines: Sequence[str]) -> Path:
    """Write ``lines`` (and a final newline) to ``path``; return the path."""
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path
