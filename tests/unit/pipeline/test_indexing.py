from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, time

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from pipeline.agents.index import batches
from pipeline.indexing import UnindexableInstance, index_instance, parse_da, parse_tm, state_record
from pipeline.models import StorageEvent
from tests.support import dicomdata

STUDY, SERIES = dicomdata.uid(8, 1), dicomdata.uid(8, 1, 1)
NOW = datetime(2026, 2, 3, 4, 5, 6, tzinfo=UTC)


def event(**overrides: object) -> StorageEvent:
    sop = f"{SERIES}.1"
    fields = dict(
        TransferSyntax="1.2.840.10008.1.2.1",
        SopInstanceUID=sop,
        StudyInstanceUID=STUDY,
        SeriesInstanceUID=SERIES,
        PatientID="PAT-CT",
        FileName=f"{sop}.dcm",
        FileSize=1234,
        FilePath=f"default/{STUDY}/{SERIES}/{sop}.dcm",
        TenantID="default",
        SopClassUID="1.2.840.10008.5.1.4.1.1.2",
        SourceAE="A",
        SourceIP="127.0.0.1",
        ReceivedTime="2026-02-03T04:05:00.000001Z",
        TraceID="t",
        NodeID="n",
    )
    fields.update(overrides)
    return StorageEvent(**fields)


def header(**attributes: object):  # type: ignore[no-untyped-def]
    ds = dicomdata.ct_series(STUDY, SERIES, 1)[0]
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def test_rows_and_records_from_a_header() -> None:
    result = index_instance(event(), header(), NOW)
    assert result.instance.sop_uid == f"{SERIES}.1"
    assert (result.instance.rows, result.instance.columns, result.instance.number_of_frames) == (64, 64, 1)
    assert result.instance.received_time == datetime(2026, 2, 3, 4, 5, 0, 1, tzinfo=UTC)
    assert result.series.study_date == date(2026, 1, 15)
    assert result.series.study_time == time(10, 15)
    assert result.series.patient_name == "Doe^Jane"
    assert result.series.modality == "CT"
    assert result.image.image_position_patient == "0.0\\0.0\\1.0"
    assert result.image.width == 64
    assert result.image.created_time == "2026-02-03 04:05:06.000"  # DATETIME(3): indexed, to the ms
    record = state_record(result.series, 7, NOW)
    assert record.series_related_instances == 7
    assert record.study_date == "2026-01-15"
    assert record.study_time == "10:15:00"


def test_bad_optional_values_become_null_and_long_ones_are_clipped() -> None:
    with dicomdata.lenient_writing():
        ds = header(StudyDate="2026-13-45", SeriesNumber=None, StudyDescription="x" * 200)
    # As read from a file: converted only when accessed, and this one does not convert.
    ds[0x00101020] = RawDataElement(Tag(0x00101020), "DS", 12, b"not-a-number", 0, False, True)
    result = index_instance(event(), ds, NOW)
    assert result.series.study_date is None
    assert result.series.series_number is None
    assert result.series.patient_size is None
    assert result.series.study_description == "x" * 64


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"SopInstanceUID": f"{SERIES}.2"}, "is not the event's"),
        ({"StudyInstanceUID": "../etc"}, "not a valid UID"),
        ({"TenantID": "a/b"}, "tenant is not valid"),
    ],
)
def test_an_event_that_does_not_hold_is_unindexable(changes: dict[str, str], message: str) -> None:
    with pytest.raises(UnindexableInstance, match=message):
        index_instance(event(**changes), header(), NOW)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("101500", time(10, 15)),
        ("1015", time(10, 15)),
        ("10", time(10)),
        ("101500.123", time(10, 15, 0, 123000)),
        ("10:15:00", time(10, 15)),
        ("235960", time(23, 59, 59)),
        ("", None),
        ("ab", None),
        ("2561", None),
    ],
)
def test_parse_tm(value: str, expected: time | None) -> None:
    assert parse_tm(value) == expected


def test_parse_da() -> None:
    assert parse_da("20260115") == date(2026, 1, 15)
    assert parse_da("2026011") is None
    assert parse_da("20260230") is None


def test_batches_fill_up_to_size_or_wait_no_longer_than_within() -> None:
    async def scenario() -> list[list[int]]:
        queue: asyncio.Queue[int] = asyncio.Queue()

        async def source():  # type: ignore[no-untyped-def]
            while True:
                yield await queue.get()

        for n in range(5):
            queue.put_nowait(n)
        got: list[list[int]] = []
        generator = batches(source(), 3, 0.05)
        got.append(await anext(generator))
        got.append(await anext(generator))  # 2 left: returned after `within`
        queue.put_nowait(9)
        got.append(await anext(generator))
        await generator.aclose()
        return got

    assert asyncio.run(scenario()) == [[0, 1, 2], [3, 4], [9]]


def test_batches_end_with_their_source_after_yielding_what_was_collected() -> None:
    async def scenario() -> list[list[int]]:
        async def source():  # type: ignore[no-untyped-def]
            for n in range(4):
                yield n

        return [batch async for batch in batches(source(), 3, 0.05)]

    assert asyncio.run(scenario()) == [[0, 1, 2], [3]]
