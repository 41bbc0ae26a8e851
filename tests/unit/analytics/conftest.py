"""A small, deliberately awkward history of two tenants, as the sink's Parquet files.

Three studies over two days; an instance sent twice; a series and an instance deleted; series
records superseded; records the sink wrote twice (same Kafka position, another file); DICOMweb
requests with errors; conversions converted, failed and skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, RLELossless

from pipeline.indexing import IndexedInstance, deleted_image_record, state_record
from pipeline.models import ConversionRecord, WadoAccessLog
from pipeline.models.formats import doris_datetime
from tests.support import dicomdata
from tests.support.analytics_rows import Row, Rows, stored_and_indexed
from tests.support.dicomdata import uid

T0 = datetime(2026, 3, 2, 10, 0, 0, tzinfo=UTC)
JPEG2000_PART2 = "1.2.840.10008.1.2.4.92"
ROUTE = "/dicomweb/studies/{study}/series/{series}/instances/{instance}"
METADATA = "/dicomweb/studies/{study}/series/{series}/metadata"


@dataclass
class Series:
    tenant: str
    study: str
    series: str
    modality: str
    syntax: str
    received: datetime
    latencies: list[int]
    """Seconds from each instance's receipt to its indexing."""


SERIES = [
    Series("default", uid(7, 1), uid(7, 1, 1), "CT", ExplicitVRLittleEndian, T0, [1, 1, 2, 3, 8]),
    Series("default", uid(7, 2), uid(7, 2, 1), "MR", RLELossless, T0 + timedelta(hours=1), [0, 2, 4]),
    Series("default", uid(7, 2), uid(7, 2, 2), "MR", RLELossless, T0 + timedelta(hours=1, minutes=5), [1, 1]),
    Series("alpha", uid(7, 3), uid(7, 3, 1), "CT", JPEG2000_PART2, T0 + timedelta(days=1), [3, 3, 3, 10]),
]


@dataclass
class History:
    data_dir: Path
    rows: list[Row]
    """Every record written, with its position, copies included."""


def _datasets(series: Series) -> list[Dataset]:
    sop_class = CTImageStorage if series.modality == "CT" else MRImageStorage
    spec = dicomdata.SeriesSpec(series.study, series.series, f"P-{series.study[-1]}", series.modality, 0)
    return [
        dicomdata.image(
            sop_class,
            spec.study_uid,
            spec.series_uid,
            f"{spec.series_uid}.{n}",
            n,
            patient_id=spec.patient_id,
            modality=series.modality,
            rows=8 * n,  # sizes differ, so that bytes add up to something checkable
            columns=8,
            transfer_syntax=series.syntax,
        )
        for n in range(1, len(series.latencies) + 1)
    ]


def _access(
    tenant: str, route: str, study: str | None, status: int, size: int, ms: float, n: int
) -> WadoAccessLog:
    return WadoAccessLog(
        tenant_id=tenant,
        route=route,
        study_uid=study,
        series_uid=None,
        sop_uid=None,
        status=status,
        bytes=size,
        duration_ms=ms,
        client_address="192.0.2.1",
        trace_id=f"trace-{n}",
        created_time=doris_datetime(T0 + timedelta(hours=3, seconds=n)),
        worker_node_id="web-1",
    )


def _conversion(
    indexed: IndexedInstance, target: str, status: str, reason: str | None, at: datetime
) -> ConversionRecord:
    image = indexed.image
    return ConversionRecord(
        tenant_id=image.tenant_id,
        study_uid=image.study_uid,
        series_uid=image.series_uid,
        sop_uid=image.sop_uid,
        source_ts=image.transfer_syntax_uid,
        target_ts=target,
        status=status,
        reason=reason,
        trace_id="t",
        worker_node_id="worker-1",
        created_time=doris_datetime(at),
    )


def write_history(data_dir: Path) -> History:
    rows = Rows()
    indexed: dict[str, list[IndexedInstance]] = {}
    for series in SERIES:
        done = indexed.setdefault(series.series, [])
        for n, (ds, latency) in enumerate(zip(_datasets(series), series.latencies, strict=True)):
            received = series.received + timedelta(seconds=2 * n)
            log, instance = stored_and_indexed(
                ds, series.tenant, received, received + timedelta(seconds=latency)
            )
            rows.add(log)
            rows.add(instance.image)
            done.append(instance)
            if n == 1:  # the index publishes a series' count per batch: this one is superseded
                rows.add(state_record(instance.series, 2, received))
        last = done[-1]
        rows.add(
            state_record(
                last.series,
                len(done),
                datetime.fromisoformat(last.image.created_time).replace(tzinfo=UTC),
            )
        )
    rows.write(data_dir)

    # The first CT instance is sent again two hours later and indexed a second after.
    ct = SERIES[0]
    again_at = T0 + timedelta(hours=2)
    log, resent = stored_and_indexed(_datasets(ct)[0], ct.tenant, again_at, again_at + timedelta(seconds=1))
    rows.add(log)
    rows.add(resent.image)
    # The last CT instance is deleted, and the second MR series with both its instances.
    deleted_at = T0 + timedelta(hours=4)
    for instance in [indexed[ct.series][-1], *indexed[SERIES[2].series]]:
        image = instance.image
        rows.add(
            deleted_image_record(
                tenant=image.tenant_id,
                patient_id=image.patient_id,
                study=image.study_uid,
                series=image.series_uid,
                sop=image.sop_uid,
                study_date_origin=instance.series.study_date_origin,
                sop_class_uid=image.sop_class_uid,
                transfer_syntax_uid=image.transfer_syntax_uid,
                file_path=image.pixel_data_location or "",
                file_size=image.space_size,
                when=deleted_at,
            )
        )
    rows.add(state_record(indexed[ct.series][0].series, 4, deleted_at))
    rows.add(state_record(indexed[SERIES[2].series][0].series, 0, deleted_at, deleted=True))

    requests = [
        ("default", "/dicomweb/studies", None, 200, 1200, 5.5),
        ("default", "/dicomweb/studies", None, 200, 1300, 7.25),
        ("default", "/dicomweb/studies", None, 503, 180, 30.0),
        ("default", METADATA, ct.study, 200, 5000, 12.0),
        ("default", METADATA, ct.study, 200, 5100, 14.0),
        ("default", METADATA, uid(7, 99), 404, 150, 1.5),
        ("default", ROUTE, ct.study, 200, 40000, 20.0),
        ("default", ROUTE, ct.study, 200, 40100, 22.0),
        ("default", ROUTE, SERIES[1].study, 200, 30000, 18.0),
        ("default", ROUTE, SERIES[1].study, 500, 200, 2.0),
        ("alpha", "/tenants/{tenant}/dicomweb/studies", None, 200, 900, 4.0),
        ("alpha", "/tenants/{tenant}/dicomweb/studies", None, 200, 950, 4.5),
        (
            "alpha",
            "/tenants/{tenant}/dicomweb/studies/{study}/series/{series}/metadata",
            SERIES[3].study,
            200,
            7000,
            9.0,
        ),
    ]
    access = [rows.add(_access(*request, n)) for n, request in enumerate(requests)]

    later = T0 + timedelta(days=1, hours=2)
    target = ExplicitVRLittleEndian
    no_codec = "no codec installed here decodes JPEG 2000 Part 2 (1.2.840.10008.1.2.4.92)"
    conversions = [
        *(rows.add(_conversion(i, target, "converted", None, later)) for i in indexed[SERIES[1].series]),
        rows.add(_conversion(indexed[SERIES[2].series][0], target, "converted", None, later)),
        rows.add(
            _conversion(indexed[SERIES[2].series][1], target, "skipped", "deleted before its turn", later)
        ),
        *(rows.add(_conversion(i, target, "failed", no_codec, later)) for i in indexed[SERIES[3].series]),
    ]
    rows.write(data_dir)

    # Written again by a sink that was stopped before it committed them: they count once.
    for row in [rows.all[0], rows.all[1], rows.all[2], access[3], access[5], conversions[-1]]:
        rows.again(row)
    rows.write(data_dir)
    return History(data_dir, rows.all)


@pytest.fixture(scope="package")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    return write_history(tmp_path_factory.mktemp("analytics") / "var")
