"""The agents' view of pacsflow's topics: keyed by raw study UID, as every producer writes them."""

from __future__ import annotations

from typing import Any

import faust


def study_keyed(
    app: faust.App, name: str, value_type: type[Any], partitions: int | None = None
) -> faust.TopicT:
    """A topic with raw study-UID keys; values are raw bytes or flat JSON records (what Doris and
    operators read, with no Faust metadata)."""
    return app.topic(
        name,
        key_type=bytes,
        value_type=value_type,
        key_serializer="raw",
        value_serializer="raw" if value_type is bytes else "json",
        partitions=partitions,
    )
