"""DELETE of a study, a series or an instance (the routes of Microsoft's and Google's DICOM
services), through the pipeline: the request is accepted here and applied by the index agent.

The answer is 202 with what will be removed: the instances the index holds now. The deletion is
spooled in this process's durable outbox before the answer, as a ``DeletionEvent`` keyed by the
study, so the index agent applies it in order with that study's stores: an instance stored after
the request was accepted is kept. 404 when this tenant has none of what the request names.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import UTC, datetime

import orjson
from aiohttp import web

from egress.wado.access_log import TRACE_ID
from egress.wado.errors import NotFound
from egress.wado.keys import OUTBOX, POOL, PUBLISHER, SETTINGS
from egress.wado.urls import tenant_of, uid
from pipeline import topics
from pipeline.models import DeletionEvent, Uid
from pipeline.models.formats import iso_utc
from pipeline.outbox import Message
from pipeline.stores import postgres


async def delete(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    tenant = tenant_of(request, settings)
    study = uid(request, "study", "StudyInstanceUID")
    series = uid(request, "series", "SeriesInstanceUID") if "series" in request.match_info else None
    sop = uid(request, "instance", "SOPInstanceUID") if "instance" in request.match_info else None
    cutoff, doomed = await postgres.deletion_scope(request.app[POOL], tenant, study, series, sop)
    if not doomed:
        raise NotFound(f"tenant {tenant} has no {_named(study, series, sop)}")
    event = DeletionEvent(
        TenantID=tenant,
        StudyInstanceUID=study,
        SeriesInstanceUID=series,
        SopInstanceUID=sop,
        Cutoff=cutoff.isoformat(),
        RequestedTime=iso_utc(datetime.now(UTC)),
        TraceID=request.get(TRACE_ID, ""),
        NodeID=settings.node_id,
        SourceIP=request.remote or "",
    )
    message = Message(topics.STORAGE_QUEUE, topics.study_key(study), event.dumps())
    await asyncio.to_thread(request.app[OUTBOX].append, [message])
    request.app[PUBLISHER].notify()
    by_series: dict[str, list[str]] = defaultdict(list)
    for item in doomed:
        by_series[item.series_uid].append(item.sop_uid)
    body = {
        "status": "accepted",
        "StudyInstanceUID": study,
        "series": [
            {"SeriesInstanceUID": s, "SOPInstanceUIDs": sops} for s, sops in sorted(by_series.items())
        ],
        "instances": len(doomed),
        "traceId": event.TraceID,
    }
    return web.Response(status=202, body=orjson.dumps(body), content_type="application/json")


def _named(study: Uid, series: Uid | None, sop: Uid | None) -> str:
    if sop is not None:
        return f"instance {sop} in series {series} of study {study}"
    if series is not None:
        return f"series {series} in study {study}"
    return f"study {study}"


def add_routes(app: web.Application, prefixes: tuple[str, ...]) -> None:
    for prefix in prefixes:
        study = f"{prefix}/studies/{{study}}"
        app.router.add_delete(study, delete)
        app.router.add_delete(f"{study}/series/{{series}}", delete)
        app.router.add_delete(f"{study}/series/{{series}}/instances/{{instance}}", delete)
