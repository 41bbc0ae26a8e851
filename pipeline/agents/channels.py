"""The agents' view of pacsflow's topics: keyed by raw study UID, as every producer writes them."""

from __future__ import annotations

import faust


def study_keyed(app: faust.App, name: str, partitions: int | None = None) -> faust.TopicT:
    """A topic with raw study-UID keys and raw values: records are sent as ``record.dumps()`` and
    read with ``Record.loads`` (flat JSON, what Doris and operators read, with no Faust metadata)."""
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
    )
