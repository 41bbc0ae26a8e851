"""Whole numbers in URLs and query parameters, read strictly."""

from __future__ import annotations

import re

_WHOLE = re.compile(r"[+-]?[0-9]{1,18}")


def whole(text: str) -> int | None:
    """``text`` as a number when it is ASCII digits with an optional sign, and nothing else; None
    otherwise. ``int()`` alone also takes Arabic-Indic digits, ``'1_000'`` and ``' 5\\n'``."""
    return int(text) if _WHOLE.fullmatch(text) else None
