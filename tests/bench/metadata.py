"""`make bench`: series metadata. One CT series of N instances (512x512, 16-bit) is sent on one
association to a running worker; reported: the time from the last instance's receipt until the
series' metadata files are current, what the last regeneration cost (read, build, write with
gzip and fsync) and the sizes of the file and its gzip, and the on-demand build of the same
series (what the web server answers while a file is not current), median of 10.

    python -m tests.bench.metadata [--instances 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from datetime import UTC, datetime

import asyncpg

from pipeline.models import TenantId, Uid
from pipeline.regeneration import MetadataBuilder
from pipeline.stores.files import StorageLayout
from tests.bench.index import RESULTS, ROOT, WORK, Stack, say, send, sql
from tests.support import dicomdata
from tests.support.services import wait_for


async def on_demand_ms(stack: Stack, study: str, series: str, times: int) -> list[float]:
    builder = MetadataBuilder(
        StorageLayout(WORK / "metadata" / "var" / "storage"),
        "http://127.0.0.1:8080",
        TenantId("default"),
        1024,
    )
    conn = await asyncpg.connect(stack.dsn)
    try:
        spent = []
        for _ in range(times):
            started = time.perf_counter()
            built = await builder.series(conn, TenantId("default"), Uid(study), Uid(series))
            spent.append((time.perf_counter() - started) * 1000)
            assert built is not None
        return spent
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=500)
    args = parser.parse_args()
    count = args.instances
    say(f"pacsflow metadata benchmark: one CT series of {count} instances, 512x512")
    stack = Stack("metadata")
    try:
        stack.env["PACSFLOW_LOG_LEVEL"] = "info"
        stack.start_workers(1)
        run = uuid.uuid4().int % 10**9
        study, series = dicomdata.uid(run, 1), dicomdata.uid(run, 1, 1)
        folder = WORK / "data" / "metadata"
        files = dicomdata.write_all(dicomdata.ct_series(study, series, count, rows=512, columns=512), folder)
        wait_for(lambda: stack.workers[0].events("partitions_assigned"), 60, "the worker to join its group")
        say(f"  sending {count} instances on one association ...")
        send(stack.port, files, 1)

        def current() -> bool:
            rows = asyncio.run(
                sql(
                    stack.dsn,
                    "SELECT version = built_version AND version = study_built_version AND json_status = 1"
                    " AS ok FROM dicom_json_meta",  # the run's own database: this series only
                )
            )
            return bool(rows) and bool(rows[0]["ok"]) and stack.indexed() == count

        wait_for(current, 300, "the series metadata to be current", interval=0.2)
        lag = asyncio.run(
            sql(
                stack.dsn,
                "SELECT extract(epoch FROM (SELECT built_time FROM dicom_json_meta)"
                " - (SELECT max(received_time) FROM dicom_instance_meta)) AS s",
            )
        )[0]["s"]
        last = [e for e in stack.workers[0].events("metadata_regenerated") if e["instances"] == count][-1]
        regenerations = len(stack.workers[0].events("metadata_regenerated"))
        spent = asyncio.run(on_demand_ms(stack, study, series, 10))
    finally:
        stack.close()
    regenerate_ms = float(last["read_ms"]) + float(last["build_ms"]) + float(last["write_ms"])  # type: ignore[arg-type]
    summary = {
        "instances": count,
        "last_received_to_metadata_current_ms": round(float(lag) * 1000),
        "regenerations_during_ingest": regenerations,
        "regenerate_ms": round(regenerate_ms, 1),
        "regenerate_read_build_write_ms": [last["read_ms"], last["build_ms"], last["write_ms"]],
        "series_json_bytes": last["study_bytes"],
        "series_json_gz_bytes": last["study_gzip_bytes"],
        "on_demand_build_ms_median": round(statistics.median(spent), 1),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"metadata-{summary['when'].replace(':', '')}.json"
    out.write_text(json.dumps(summary, indent=2))
    say("")
    say("| metric | pacsflow |")
    say("|---|---|")
    lag_ms = summary["last_received_to_metadata_current_ms"]
    parts = " / ".join(str(x) for x in summary["regenerate_read_build_write_ms"])  # type: ignore[union-attr]
    say(f"| last instance received -> series metadata current ({count} instances) | {lag_ms} ms |")
    say(
        f"| regenerate a {count}-instance series (read / build / write+gzip+fsync) | "
        f"{summary['regenerate_ms']} ms ({parts}) |"
    )
    sizes = f"{summary['series_json_bytes']} / {summary['series_json_gz_bytes']}"
    say(f"| series metadata file, .json / .json.gz | {sizes} bytes |")
    say(f"| on-demand build of the same series, median of 10 | {summary['on_demand_build_ms_median']} ms |")
    say(f"| regenerations while the series arrived | {regenerations} |")
    say(f"\n(results in {out.relative_to(ROOT)})")


if __name__ == "__main__":
    main()
