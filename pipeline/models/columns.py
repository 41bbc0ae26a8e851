"""Doris column types for record fields, and the Doris tables the records fill.

A field's Doris type is its Python type's (``str`` VARCHAR(64), ``int`` INT, ``float`` DOUBLE)
unless an alias below says otherwise; it is NULL exactly when the field may be ``None``. The
CREATE TABLE and Routine Load SQL in ``doris/routine_load/`` is generated from these and the
records (``pacsflow doris sql``); nothing else states a column.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Annotated, Literal

if typing.TYPE_CHECKING:
    from pipeline.models.record import Record


@dataclasses.dataclass(frozen=True)
class Doris:
    """A field's Doris type where the default for its Python type is wrong."""

    type: str


Date = Annotated[str, Doris("DATE")]
"""``YYYY-MM-DD``."""
DateTime = Annotated[str, Doris("DATETIME")]
"""``YYYY-MM-DD HH:MM:SS``, UTC."""
DateTimeMs = Annotated[str, Doris("DATETIME(3)")]
"""``YYYY-MM-DD HH:MM:SS.fff``, UTC: when an object was received and when it was indexed, whose
difference (the ingest latency) is well under a second."""
BigInt = Annotated[int, Doris("BIGINT")]
TinyInt = Annotated[int, Doris("TINYINT")]
Char1 = Annotated[str, Doris("VARCHAR(1)")]
Text8 = Annotated[str, Doris("VARCHAR(8)")]
Text16 = Annotated[str, Doris("VARCHAR(16)")]
Hash = Annotated[str, Doris("VARCHAR(20)")]
Text32 = Annotated[str, Doris("VARCHAR(32)")]
TraceId = Annotated[str, Doris("VARCHAR(36)")]
Text128 = Annotated[str, Doris("VARCHAR(128)")]
Text256 = Annotated[str, Doris("VARCHAR(256)")]
"""Free text of DICOM's LO and PN VRs: 64 characters can take 256 bytes in UTF-8, and Doris
counts VARCHAR lengths in bytes."""
Path = Annotated[str, Doris("VARCHAR(512)")]

_DEFAULTS = {str: "VARCHAR(64)", int: "INT", float: "DOUBLE"}


@dataclasses.dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool
    expression: str | None = None
    """Set by the load job rather than read from the record (``NOW()``)."""

    @property
    def kind(self) -> str:
        """The type without its length or precision: ``VARCHAR``, ``DATETIME``, ``INT``, ..."""
        return self.type.split("(")[0]


def _column(name: str, hint: object) -> Column:
    nullable = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        parts = [a for a in typing.get_args(hint) if a is not type(None)]
        nullable = len(parts) < len(typing.get_args(hint))
        (hint,) = parts
    doris = None
    if typing.get_origin(hint) is Annotated:
        hint, *extras = typing.get_args(hint)
        doris = next((e for e in extras if isinstance(e, Doris)), None)
    if doris is None and hint not in _DEFAULTS:
        raise TypeError(f"field {name}: no Doris type for {hint!r}")
    return Column(name, doris.type if doris else _DEFAULTS[hint], nullable)  # type: ignore[index]


def record_columns(record: type[Record]) -> list[Column]:
    """The record's fields as Doris columns, in the record's order."""
    hints = typing.get_type_hints(record, include_extras=True)
    return [_column(name, hints[name]) for name in record.__struct_fields__]


@dataclasses.dataclass(frozen=True)
class DorisTable:
    """A Doris table, the topic that fills it and the Routine Load job that reads the topic."""

    name: str
    record: type[Record]
    topic: str
    job: str
    model: Literal["UNIQUE", "DUPLICATE"]
    """UNIQUE: the last record of a key replaces the row; DUPLICATE: every record is a row."""
    key: tuple[str, ...]
    description: str
    computed: tuple[Column, ...] = ()
    merge_deletes: bool = False
    """Records with ``deleted = 1`` remove their key's row (``WITH MERGE ... DELETE ON``)."""

    @property
    def loaded(self) -> list[Column]:
        """The job's columns: the record's fields, then those the job computes."""
        return [*record_columns(self.record), *self.computed]

    @property
    def columns(self) -> list[Column]:
        """The table's columns: Doris wants the key first, in key order."""
        by_name = {c.name: c for c in self.loaded}
        return [by_name[k] for k in self.key] + [c for c in self.loaded if c.name not in self.key]
