"""Per-category results as a printed table, a CSV file or a pandas ``DataFrame`` (fractions; the table in percent)."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

from .category_metrics import MEAN_KEY, PerCategoryResults

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)


def _columns(results: PerCategoryResults) -> list[str]:
    return list(next(iter(results.values()))) if results else []


def _format_value(value: float, percent: bool) -> str:
    if math.isnan(value):
        return "nan"
    return f"{100 * value:.1f}" if percent else f"{value:.4f}"


def per_category_metrics_table(results: PerCategoryResults, percent: bool = True) -> str:
    """Format per-category results as a plain-text table.

    Args:
        results: Results as in :attr:`PerCategoryEvaluator.last_results`.
        percent: Show percent with one decimal (default) instead of fractions with four.

    Returns:
        The table, one line per category and a final ``mean`` line below a rule.

    """
    columns = _columns(results)
    header = ["category", *columns]
    rows = [[category, *(_format_value(row[c], percent) for c in columns)] for category, row in results.items()]
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]

    def fmt(line: list[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )

    lines = [fmt(header), "-" * len(fmt(header))]
    for category, line in zip(results, rows, strict=True):
        if category == MEAN_KEY:
            lines.append("-" * len(fmt(header)))
        lines.append(fmt(line))
    return "\n".join(lines)


def print_per_category_table(results: PerCategoryResults, percent: bool = True) -> None:
    """Print per-category results as a table, through ``rich`` when it is installed.

    Args:
        results: Results as in :attr:`PerCategoryEvaluator.last_results`.
        percent: Show percent with one decimal (default) instead of fractions with four.

    """
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(per_category_metrics_table(results, percent))
        return
    unit = "%" if percent else "fraction"
    table = Table(title=f"Per-category test metrics ({unit})")
    table.add_column("category")
    columns = _columns(results)
    for column in columns:
        table.add_column(column, justify="right")
    categories = list(results)
    for position, (category, row) in enumerate(results.items()):
        next_is_mean = position + 1 < len(categories) and categories[position + 1] == MEAN_KEY
        cells = [_format_value(row[c], percent) for c in columns]
        table.add_row(category, *cells, end_section=next_is_mean, style="bold" if category == MEAN_KEY else None)
    Console().print(table)


def write_csv(results: PerCategoryResults, path: str | Path) -> Path:
    """Write per-category results as CSV: a ``category`` column, then one column per metric.

    Values are fractions with six decimals (``nan`` where undefined); rows follow ``results``
    (the ``mean`` row last). An existing file is overwritten.

    Args:
        results: Results as in :attr:`PerCategoryEvaluator.last_results`.
        path: Destination file; parent folders are created.

    Returns:
        The path written.

    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        logger.info("Overwriting per-category results in %s.", path)
    columns = _columns(results)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["category", *columns])
        for category, row in results.items():
            writer.writerow([category, *(f"{row[c]:.6f}" if not math.isnan(row[c]) else "nan" for c in columns)])
    logger.info("Per-category test metrics saved to %s.", path)
    return path


def results_to_dataframe(results: PerCategoryResults) -> pd.DataFrame:
    """Convert per-category results to a ``pandas.DataFrame`` indexed by category.

    Args:
        results: Results as in :attr:`PerCategoryEvaluator.last_results`.

    Returns:
        One row per category plus ``mean``, one column per metric (fractions).

    """
    import pandas as pd

    frame = pd.DataFrame.from_dict(results, orient="index", columns=_columns(results))
    frame.index.name = "category"
    return frame
