"""`make bench-analytics` (second half): each report over 100,000 instance rows, on DuckDB.

The data: studies of a realistic mix (CT, MR, CR, DX, US, MG; three tenants; several transfer
syntaxes) received over two weeks. One instance of each series is made by ``tests.support.dicomdata``
and turned into its records by the product's own functions (the SCP's ``events_for``, the index
agent's ``index_instance`` and ``state_record``); the series' other instances are that record with
their own UIDs, numbers, sizes and times (the product's functions take ~7 ms an instance: 12
minutes for 100,000). Also: 2% of instances sent twice, 1% of series deleted, series records
superseded as the index publishes them, access log rows (half as many as instances) and
conversion records. Written as Parquet in ``analytics.layout``, one file per table and day (what
the sink's compaction leaves), under ``var/bench/reports``.

Each report runs 3 times (connection, views, transpilation and query: what `pacsflow report`
does); the median is printed.

    python -m tests.bench.reports [--rows 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import msgspec
from pydicom.uid import (
    UID,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
)

from analytics import layout, query, reports
from pipeline.indexing import deleted_image_record, state_record
from pipeline.models import DORIS_TABLES, ConversionRecord, WadoAccessLog
from pipeline.models.formats import doris_datetime
from tests.support import dicomdata
from tests.support.analytics_rows import Rows, stored_and_indexed

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "var" / "bench" / "reports"
RESULTS = Path(__file__).resolve().parent / "results"
START = datetime(2026, 1, 5, tzinfo=UTC)
DAYS = 14
JPEG2000_PART2 = "1.2.840.10008.1.2.4.92"
NO_CODEC = "no codec installed here decodes JPEG 2000 Part 2"
US_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
MG_STORAGE = "1.2.840.10008.5.1.4.1.1.1.2"
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"

# modality: (SOP class, series per study, instances per series (low, high), rows/columns)
MODALITIES = {
    "CT": (CTImageStorage, (2, 4), (80, 300), 512),
    "MR": (MRImageStorage, (4, 8), (20, 40), 256),
    "CR": (CR_STORAGE, (1, 2), (1, 2), 2048),
    "DX": (DigitalXRayImageStorageForPresentation, (1, 2), (1, 2), 2048),
    "US": (US_STORAGE, (1, 1), (10, 40), 640),
    "MG": (MG_STORAGE, (1, 1), (4, 4), 3328),
}
MODALITY_WEIGHTS = {"CT": 25, "MR": 20, "CR": 25, "DX": 15, "US": 10, "MG": 5}
TENANTS = {"default": 60, "hospital_a": 30, "hospital_b": 10}
SYNTAXES = {
    ExplicitVRLittleEndian: 70,
    JPEGLSLossless: 12,
    JPEG2000Lossless: 10,
    RLELossless: 6,
    JPEG2000_PART2: 2,
}
ROUTES = {
    "{p}/studies": (20, None, 3_000),
    "{p}/studies/{{study}}/series": (10, "study", 2_000),
    "{p}/studies/{{study}}/series/{{series}}/metadata": (25, "study", 60_000),
    "{p}/studies/{{study}}/series/{{series}}/instances/{{instance}}/frames/{{frames}}": (
        40,
        "study",
        400_000,
    ),
    "{p}/studies/{{study}}/series/{{series}}/instances/{{instance}}": (5, "study", 500_000),
}


def say(message: str) -> None:
    print(message, flush=True)


def pick(rng: random.Random, weights: dict[str, int]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def latency_s(rng: random.Random) -> float:
    """Receipt to indexing: mostly a second or two, a long tail when a batch waits."""
    return min(rng.lognormvariate(0.3, 0.8), 90.0)


def generate(rows: Rows, target: int, rng: random.Random) -> dict[str, int]:
    """Studies until ``target`` instance rows; their access log and conversion records."""
    made = {"studies": 0, "series": 0, "instances": 0, "resent": 0, "deleted_series": 0}
    studies: list[tuple[str, str, list[str]]] = []
    while made["instances"] < target:
        study_no = made["studies"] + 1
        tenant, modality = pick(rng, TENANTS), pick(rng, MODALITY_WEIGHTS)
        sop_class, series_range, count_range, size = MODALITIES[modality]
        syntax = pick(rng, SYNTAXES)
        study = dicomdata.uid(9, study_no)
        received = START + timedelta(seconds=rng.uniform(0, DAYS * 86_400))
        series_uids = []
        for series_no in range(1, rng.randint(*series_range) + 1):
            count = min(rng.randint(*count_range), target - made["instances"])
            if count <= 0:
                break
            series = dicomdata.uid(9, study_no, series_no)
            series_uids.append(series)
            # The first instance goes through the SCP's and the index's own functions.
            ds = dicomdata.image(
                sop_class,
                study,
                series,
                f"{series}.1",
                1,
                patient_id=f"P{study_no}",
                modality=modality,
                rows=16,
                columns=16,
                transfer_syntax=syntax,
            )
            log, indexed = stored_and_indexed(ds, tenant, received, received + timedelta(seconds=1))
            pixels = size * size * 2
            last = received
            for n in range(1, count + 1):
                sop = f"{series}.{n}"
                at = received + timedelta(seconds=0.05 * n)
                file_size = pixels // (1 if syntax == ExplicitVRLittleEndian else rng.randint(2, 3)) + 2_000
                path = f"{tenant}/{study}/{series}/{sop}.dcm"
                resent = [at + timedelta(hours=rng.uniform(1, 48))] if rng.random() < 0.02 else []
                for when in [at, *resent]:
                    last = when + timedelta(seconds=latency_s(rng))
                    rows.add(
                        msgspec.structs.replace(
                            log,
                            sop_uid=sop,
                            file_size=file_size,
                            file_path=path,
                            created_time=doris_datetime(when),
                            trace_id=f"{study_no}-{series_no}-{n}",
                        )
                    )
                    rows.add(
                        msgspec.structs.replace(
                            indexed.image,
                            sop_uid=sop,
                            instance_number=n,
                            space_size=file_size,
                            pixel_data_location=path,
                            created_time=doris_datetime(last),
                        )
                    )
                made["resent"] += len(resent)
                if syntax == JPEG2000_PART2 or (syntax == RLELossless and rng.random() < 0.5):
                    status = (
                        "failed" if syntax == JPEG2000_PART2 else pick(rng, {"converted": 95, "skipped": 5})
                    )
                    rows.add(
                        ConversionRecord(
                            tenant_id=tenant,
                            study_uid=study,
                            series_uid=series,
                            sop_uid=sop,
                            source_ts=syntax,
                            target_ts=ExplicitVRLittleEndian,
                            status=status,
                            reason=NO_CODEC if status == "failed" else None,
                            trace_id="bench",
                            worker_node_id="worker-1",
                            created_time=doris_datetime(last),
                        )
                    )
                if n % 50 == 0:  # the index publishes a series' count with each batch
                    rows.add(state_record(indexed.series, n, last))
            rows.add(state_record(indexed.series, count, last))
            if rng.random() < 0.01:
                gone = last + timedelta(days=1)
                for n in range(1, count + 1):
                    rows.add(
                        deleted_image_record(
                            tenant=tenant,
                            patient_id=f"P{study_no}",
                            study=study,
                            series=series,
                            sop=f"{series}.{n}",
                            study_date_origin="20260115",
                            sop_class_uid=str(UID(sop_class)),
                            transfer_syntax_uid=syntax,
                            file_path="",
                            file_size=0,
                            when=gone,
                        )
                    )
                rows.add(state_record(indexed.series, 0, gone, deleted=True))
                made["deleted_series"] += 1
            made["series"] += 1
            made["instances"] += count
        made["studies"] += 1
        studies.append((tenant, study, series_uids))
    made["access_log"] = access_log(rows, studies, target // 2, rng)
    return made


def access_log(rows: Rows, studies: list[tuple[str, str, list[str]]], count: int, rng: random.Random) -> int:
    for n in range(count):
        tenant, study, series = rng.choice(studies)
        route = pick(rng, {k: v[0] for k, v in ROUTES.items()})
        _, names, size = ROUTES[route]
        prefix = "/dicomweb" if tenant == "default" else "/tenants/{tenant}/dicomweb"
        status = pick(rng, {"200": 95, "404": 4, "500": 1})
        rows.add(
            WadoAccessLog(
                tenant_id=tenant,
                route=route.format(p=prefix),
                study_uid=study if names else None,
                series_uid=rng.choice(series) if names and series else None,
                sop_uid=None,
                status=int(status),
                bytes=int(size * rng.uniform(0.5, 1.5)) if status == "200" else 180,
                duration_ms=round(rng.lognormvariate(2.5, 0.9), 3),
                client_address="10.0.0.7",
                trace_id=f"bench-{n}",
                created_time=doris_datetime(START + timedelta(seconds=rng.uniform(0, DAYS * 86_400))),
                worker_node_id="web-1",
            )
        )
    return count


def timed(data_dir: Path, name: str) -> tuple[float, int]:
    times = []
    answer_rows = 0
    for _ in range(3):
        started = time.perf_counter()
        answer = reports.run(data_dir, name)
        times.append(time.perf_counter() - started)
        answer_rows = len(answer.rows)
    return statistics.median(times), answer_rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=100_000, help="instance rows (dicom_image_meta) to generate"
    )
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args()

    shutil.rmtree(WORK, ignore_errors=True)
    say(f"pacsflow reports benchmark: {args.rows} instance rows, generated under {WORK.relative_to(ROOT)}")
    started = time.perf_counter()
    rows = Rows()
    made = generate(rows, args.rows, random.Random(args.seed))
    rows.write(WORK)
    say(f"  generated and written in {time.perf_counter() - started:.1f} s: {json.dumps(made)}")
    say("  records: one real instance per series through events_for/index_instance, the rest cloned from it")

    written = {}
    for table in DORIS_TABLES:
        files = list(layout.table_dir(WORK, table).glob("**/*.parquet"))
        records = query.execute(WORK, f"SELECT count(*) FROM {table.name}").rows[0][0]  # noqa: S608
        written[table.name] = {"files": len(files), "current_rows": records}
    for name, numbers in written.items():
        say(f"  {name}: {numbers['current_rows']} rows as Doris holds them, {numbers['files']} files")

    query.execute(WORK, "SELECT count(*) FROM dicom_image_meta")  # the files into the page cache
    timings = {}
    for report in reports.catalogue():
        seconds, answer_rows = timed(WORK, report.name)
        timings[report.name] = {"median_ms": round(seconds * 1000, 1), "answer_rows": answer_rows}
    count_ms = timed_sql(WORK)

    summary = {
        "instance_rows": args.rows,
        "tables": written,
        "reports": timings,
        "count_instances_ms": round(count_ms * 1000, 1),
        "duckdb": duckdb.__version__,
        "duckdb_threads": query.execute(WORK, "SELECT current_setting('threads')").rows[0][0],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "note": "shared machine: other work ran beside it",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"reports-{summary['when'].replace(':', '')}.json"
    out.write_text(json.dumps(summary, indent=2))
    say("")
    say("| report | median of 3 | answer rows |")
    say("|---|---|---|")
    for name, t in timings.items():
        say(f"| {name} | {t['median_ms']} ms | {t['answer_rows']} |")
    say(f"| count of dicom_image_meta (pacsflow sql) | {summary['count_instances_ms']} ms | 1 |")
    say(
        f"\nDuckDB {summary['duckdb']}, {summary['duckdb_threads']} threads, {summary['cpus']} CPUs "
        f"({summary['machine']}, Python {summary['python']}); the machine is shared."
    )
    say(f"(results in {out.relative_to(ROOT)})")


def timed_sql(data_dir: Path) -> float:
    times = []
    for _ in range(3):
        started = time.perf_counter()
        query.execute(data_dir, "SELECT count(*) FROM dicom_image_meta")
        times.append(time.perf_counter() - started)
    return statistics.median(times)


if __name__ == "__main__":
    main()
