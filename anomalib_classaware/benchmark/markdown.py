"""Markdown cells and tables shared by the quality and the speed reports (percent with one decimal)."""

from __future__ import annotations

import math
from collections.abc import Sequence


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
