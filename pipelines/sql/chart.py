"""Pick a chart for a result: a line over a time column, bars over a category, or none."""

from __future__ import annotations

import datetime as dt
import decimal
from dataclasses import dataclass

MAX_BARS = 50  # more categories than this make an unreadable bar chart


@dataclass(frozen=True)
class ChartSpec:
    kind: str  # "line" or "bar"
    x: str
    y: str


def _is_number(value) -> bool:
    return isinstance(value, (int, float, decimal.Decimal)) and not isinstance(value, bool)


def _column_kind(values: list) -> str | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    if all(isinstance(v, (dt.date, dt.datetime)) for v in present):
        return "time"
    if all(_is_number(v) for v in present):
        return "number"
    if all(isinstance(v, str) for v in present):
        return "category"
    return None


def choose_chart(columns: list[str], rows: list[list]) -> ChartSpec | None:
    """A chart when the result has a time or category column and a numeric column, and more than one row."""
    if len(rows) < 2 or len(columns) < 2:
        return None
    kinds = {name: _column_kind([row[i] for row in rows]) for i, name in enumerate(columns)}
    numbers = [name for name, kind in kinds.items() if kind == "number"]
    times = [name for name, kind in kinds.items() if kind == "time"]
    categories = [name for name, kind in kinds.items() if kind == "category"]
    if not numbers:
        return None
    y = numbers[-1]  # measures usually come after keys (`id, ..., total`)
    if times:
        return ChartSpec("line", times[0], y)
    if categories and len(rows) <= MAX_BARS:
        return ChartSpec("bar", categories[0], y)
    return None
