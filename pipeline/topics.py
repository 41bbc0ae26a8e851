"""Topic names (wire names: renaming one creates a new topic) and the key of every event."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from pipeline.settings import Settings

STORAGE_QUEUE = "storage_queue"
LOG_QUEUE = "log_queue"
DICOM_STATE_QUEUE = "dicom_state_queue"
DICOM_IMAGE_QUEUE = "dicom_image_queue"
CONVERSION_QUEUE = "conversion_queue"
CONVERSION_LOG = "conversion_log"
WADO_ACCESS_LOG = "wado_access_log"
STORAGE_DLQ = "storage_dlq"

ALL = (
    STORAGE_QUEUE,
    LOG_QUEUE,
    DICOM_STATE_QUEUE,
    DICOM_IMAGE_QUEUE,
    CONVERSION_QUEUE,
    CONVERSION_LOG,
    WADO_ACCESS_LOG,
    STORAGE_DLQ,
)

DORIS_BOUND = (LOG_QUEUE, DICOM_STATE_QUEUE, DICOM_IMAGE_QUEUE, WADO_ACCESS_LOG, CONVERSION_LOG)
"""Read by Doris's Routine Load jobs and, on one machine, by the analytics sink."""
ANALYTICS_GROUP = "pacsflow-analytics"
"""The analytics sink's consumer group: its committed offsets are what the Parquet files hold."""


# What a broker that is down, hung or restarting looks like from a client: retried, never fatal.
BROKER_FAILURES: tuple[type[BaseException], ...] = (KafkaError, OSError, TimeoutError)


def study_key(study_uid: str) -> bytes:
    """Events are keyed by study UID: a study's events share a partition, in order."""
    return study_uid.encode("ascii")


async def ensure_topics(settings: Settings) -> list[str]:
    """Create pacsflow's topics that do not exist yet; return the names created.

    Safe to call at every (re)connection: an embedded broker that restarted has lost its topics,
    and a broker that auto-creates topics would give them the wrong partition count.
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap,
        request_timeout_ms=int(settings.kafka_request_timeout_s * 1000),
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in ALL if name not in existing]
        if missing:
            response = await admin.create_topics(
                [NewTopic(n, settings.kafka_partitions, settings.kafka_replication) for n in missing]
            )
            for topic, code, message in (e[:3] for e in response.topic_errors):
                # Another process may have created it between our list and create.
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise for_code(code)(f"creating topic {topic}: {message}")
        return missing
    finally:
        await admin.close()
