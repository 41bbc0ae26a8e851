"""The Routine Load jobs' column lists: what Doris reads from each topic."""

from __future__ import annotations

import re
from pathlib import Path

JOBS = Path(__file__).resolve().parents[2] / "doris" / "routine_load" / "jobs"


def routine_load_columns(job: str, *, computed: bool = False) -> list[str]:
    """Columns of ``jobs/<job>.sql``; those Doris computes (``x = NOW()``) only if ``computed``."""
    sql = (JOBS / f"{job}.sql").read_text()
    body = re.search(r"COLUMNS\s*\((.*?)\)\s*(?:,\s*DELETE ON [^\n]*\s*)?PROPERTIES", sql, re.S)
    assert body, f"no COLUMNS list in {job}.sql"
    columns = [c.strip() for c in body.group(1).split(",") if c.strip()]
    return [c.split("=")[0].strip().strip("`") for c in columns if computed or "=" not in c]
