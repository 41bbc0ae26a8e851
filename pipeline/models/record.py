"""The base of every record on pacsflow's topics: typed, flat JSON, checked when read.

A ``msgspec.Struct`` rather than a ``faust.Record``: the SCP and the web server publish records
too, and neither should load Faust to do it. Decoding checks every field's type, so a malformed
event is refused where it is read, with the field named.
"""

from __future__ import annotations

from typing import Self

import msgspec


def _plain(value: object) -> object:
    # Uid and TenantId are str subclasses, which msgspec does not encode as they are.
    if isinstance(value, str):
        return str(value)
    raise NotImplementedError(f"{type(value).__name__} is not a JSON value")


_ENCODER = msgspec.json.Encoder(enc_hook=_plain)


class Record(msgspec.Struct, kw_only=True):
    def dumps(self) -> bytes:
        """The record as flat JSON: its fields, in their declared order, nothing else."""
        return _ENCODER.encode(self)

    @classmethod
    def loads(cls, raw: bytes | str) -> Self:
        """The record ``raw`` holds; ValueError naming what is wrong when it holds no such record."""
        try:
            return msgspec.json.decode(raw, type=cls)
        except msgspec.DecodeError as exc:
            raise ValueError(f"not a {cls.__name__}: {exc}") from exc

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return cls.__struct_fields__
