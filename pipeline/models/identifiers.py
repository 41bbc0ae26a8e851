"""Identifiers that may become part of a path: validated on construction, immutable.

A ``Uid`` or ``TenantId`` is a ``str`` that is known to be safe: nothing else is ever joined into a
storage path.
"""

from __future__ import annotations

import re

from pipeline.errors import InvalidIdentifier

# Always fullmatch: with match, ``$`` also matches before a final newline ("1.2.3\n").
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_TENANT = re.compile(r"[A-Za-z0-9_-]{1,64}")


class Uid(str):
    """A DICOM UID: digits and dots, at most 64 characters (DESIGN.md, 'Storage layout')."""

    __slots__ = ()

    def __new__(cls, value: object, what: str = "UID") -> Uid:
        text = value if isinstance(value, str) else "" if value is None else str(value)
        # Values padded to even length with NUL or space on the wire are still the same UID; no
        # other character is padding (a newline or tab is part of the value, and refused).
        text = text.rstrip("\x00 ")
        if not text:
            raise InvalidIdentifier(f"{what} is empty")
        if len(text) > 64 or not _UID.fullmatch(text):
            raise InvalidIdentifier(
                f"{what} is not a valid UID: {text[:80]!r} (digits and dots, at most 64 characters)"
            )
        return super().__new__(cls, text)


class TenantId(str):
    """A tenant id: letters, digits, ``_`` and ``-``, 1 to 64 characters."""

    __slots__ = ()

    def __new__(cls, value: object) -> TenantId:
        text = value if isinstance(value, str) else str(value)
        if not _TENANT.fullmatch(text):
            raise InvalidIdentifier(f"tenant is not valid: {text[:80]!r} (1-64 letters, digits, '_' or '-')")
        return super().__new__(cls, text)


__all__ = ["InvalidIdentifier", "TenantId", "Uid"]
