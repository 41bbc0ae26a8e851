"""A query's answer, and the one way it is printed: ``table`` (aligned text), ``csv`` or ``json``.

Values are made plain once, where the answer is read (``plain``): dates and times become text in
Doris's own formats (``YYYY-MM-DD``, ``YYYY-MM-DD HH:MM:SS``), decimals numbers, so that every
format, and a web page given the answer as JSON, shows the same values.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

Format = Literal["table", "csv", "json"]
FORMATS: tuple[Format, ...] = ("table", "csv", "json")


@dataclasses.dataclass(frozen=True)
class Result:
    """Column names and rows of plain values (str, int, float, bool, None, lists of these)."""

    columns: list[str]
    rows: list[list[Any]]

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def plain(value: object) -> Any:
    """``value`` as a JSON value."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return str(value)


def result(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> Result:
    return Result(list(columns), [[plain(v) for v in row] for row in rows])


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        # Three decimals at most: a ratio or a duration, read by a person; csv and json keep all.
        return f"{value:.3f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _table(answer: Result) -> str:
    cells = [[_cell(v) for v in row] for row in answer.rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(answer.columns)]
    numeric = [
        bool(answer.rows) and all(isinstance(row[i], (int, float)) or row[i] is None for row in answer.rows)
        for i in range(len(answer.columns))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if right else v.ljust(w) for v, w, right in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    lines = [line(answer.columns), line(["-" * w for w in widths]), *(line(row) for row in cells)]
    noun = "row" if len(answer.rows) == 1 else "rows"
    return "\n".join([*lines, f"({len(answer.rows)} {noun})"]) + "\n"


def _csv(answer: Result) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(answer.columns)
    for row in answer.rows:
        writer.writerow(
            ["" if v is None else json.dumps(v) if isinstance(v, (list, dict)) else v for v in row]
        )
    return out.getvalue()


def render(answer: Result, fmt: Format) -> str:
    if fmt == "table":
        return _table(answer)
    if fmt == "csv":
        return _csv(answer)
    if fmt == "json":
        return json.dumps(answer.records(), ensure_ascii=False, indent=2) + "\n"
    raise ValueError(f"no output format {fmt!r}: one of {', '.join(FORMATS)}")
