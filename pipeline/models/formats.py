"""Value formats on the wire: the ones Doris's Routine Load columns expect."""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime


def doris_datetime(moment: datetime) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in UTC, the format of a Doris DATETIME column."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def doris_datetime_ms(moment: datetime) -> str:
    """``YYYY-MM-DD HH:MM:SS.fff`` in UTC, the format of a Doris DATETIME(3) column."""
    return moment.astimezone(UTC).isoformat(sep=" ", timespec="milliseconds").removesuffix("+00:00")


def doris_date(dicom_da: str | None) -> str | None:
    """A DICOM DA value (``YYYYMMDD``) as ``YYYY-MM-DD``; None when absent or not a real date."""
    text = (dicom_da or "").strip()
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:])).isoformat()
    except ValueError:
        return None


def iso_utc(moment: datetime) -> str:
    """ISO 8601 with microseconds in UTC, for times that latency is measured from."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def uid_hash(uid: str) -> str:
    """The ``*_uid_hash`` columns (VARCHAR(20)): the first 8 bytes of SHA-256, as a decimal number.

    Stable across processes and languages (unlike Python's ``hash``), and short enough to
    distribute and join on.
    """
    return str(int.from_bytes(hashlib.sha256(uid.encode("ascii")).digest()[:8], "big"))
