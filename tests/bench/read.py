"""`make bench`: the DICOMweb read path of `pacsflow web`: latencies one request at a time (a bounded
aiohttp client), throughput at 16 connections (wrk, which `make bench` installs; else aiohttp).

Data: one CT series of N instances (512x512, 16-bit), 50 one-instance studies for the study list,
and one multi-frame instance (100 frames of 512x512). Reported, each with the number of requests:

- series metadata of the N-instance series: the first request once the file is current ("cold":
  the first read of the file), then p50/p99 at concurrency 1 and req/s at concurrency 16 (gzip
  accepted, as browsers do); the same answered on demand (a client reaching pacsflow by another URL);
- QIDO-RS study search, the query OHIF's study list sends, p50/p99 and req/s, with and without Redis;
- frames with OHIF's Accept: single frames of the series' instances, frames/s and MB/s at
  concurrency 16, p50 at 1; frame 50 of the multi-frame instance.

Every loop is bounded in count and time and targets loopback only.

    python -m tests.bench.read [--instances 500] [--requests 400]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from pydicom.uid import CTImageStorage

from tests.bench.index import RESULTS, ROOT, WORK, Stack, say, send, sql
from tests.support import dicomdata
from tests.support.services import Service, free_port, port_open, wait_for

OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"
OHIF_STUDY_LIST = "limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060"
BOUND_S = 60.0
WRK = "/usr/bin/wrk"


async def load(
    urls: Callable[[int], str], count: int, concurrency: int, headers: dict[str, str]
) -> tuple[list[float], float, int]:
    """Latencies (ms), wall time (s) and body bytes of ``count`` GETs, ``concurrency`` at a time."""
    latencies: list[float] = []
    received = 0
    next_index = 0
    deadline = time.perf_counter() + BOUND_S
    async with aiohttp.ClientSession(headers=headers, auto_decompress=False) as session:

        async def worker() -> None:
            nonlocal next_index, received
            while next_index < count and time.perf_counter() < deadline:
                index = next_index
                next_index += 1
                started = time.perf_counter()
                async with session.get(urls(index)) as response:
                    body = await response.read()
                    if response.status != 200:
                        raise SystemExit(f"GET {urls(index)}: {response.status} {body[:300]!r}")
                latencies.append((time.perf_counter() - started) * 1000)
                received += len(body)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - started, received


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}


def wrk(
    urls: Sequence[str], headers: dict[str, str], seconds: int = 5, connections: int = 16
) -> tuple[float, float, int]:
    """req/s, MB/s and requests of wrk (one thread: the server has the other core)."""
    WORK.mkdir(parents=True, exist_ok=True)
    script = WORK / "rotate.lua"
    paths = ", ".join(
        json.dumps(urllib.parse.urlsplit(u).path + "?" + urllib.parse.urlsplit(u).query) for u in urls
    )
    script.write_text(
        f"paths = {{{paths}}}\ni = 0\n"
        "request = function()\n  i = i % #paths + 1\n  return wrk.format('GET', paths[i])\nend\n"
    )
    options = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
    output = subprocess.run(
        [WRK, "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), *options, urls[0]],
        capture_output=True, text=True, timeout=seconds + 30, check=True,
    ).stdout  # fmt: skip
    if "Non-2xx" in output:
        raise SystemExit(f"wrk saw errors:\n{output}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    amount, unit = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", output).groups()  # type: ignore[union-attr]
    done = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    return rps, float(amount) * _UNITS[unit] / 1e6, done


def measure(name: str, urls: Sequence[str], count: int, headers: dict[str, str]) -> dict[str, Any]:
    """p50/p99 one request at a time (aiohttp), throughput at 16 connections (wrk if installed)."""
    one, _, _ = asyncio.run(load(lambda i: urls[i % len(urls)], count, 1, headers))
    if Path(WRK).exists():
        rps, mb_s, requests = wrk(urls, headers)
        tool = "wrk"
    else:
        many, wall, received = asyncio.run(load(lambda i: urls[i % len(urls)], count, 16, headers))
        rps, mb_s, requests, tool = len(many) / wall, received / wall / 1e6, len(many), "aiohttp"
    result = {
        "requests": len(one) + requests,
        "p50_ms": pct(one, 0.5),
        "p99_ms": pct(one, 0.99),
        "rps_c16": round(rps, 1),
        "mb_s_c16": round(mb_s, 1),
        "load_tool_c16": tool,
    }
    say(f"  {name}: {result}")
    return result


def multiframe(study: str, series: str, frames: int) -> Any:
    ds = dicomdata.image(CTImageStorage, study, series, f"{series}.1", 1, rows=512, columns=512)
    ds.NumberOfFrames = frames
    pixels = (np.arange(512 * 512 * frames, dtype=np.uint32) * 7) % 4096
    ds.PixelData = pixels.astype("<u2").tobytes()
    return ds


def start_web(stack: Stack, name: str, **env: str) -> tuple[Service, str]:
    port = free_port()
    web = Service(
        "web",
        {**stack.env, "PACSFLOW_DATA_DIR": str(stack.folder / name), "PACSFLOW_HTTP_PORT": str(port), **env},
        stack.folder / f"{name}.log",
    ).start()
    wait_for(lambda: port_open(port), 30, "pacsflow web to listen")
    return web, f"http://127.0.0.1:{port}/dicomweb"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    count, requests = args.instances, args.requests
    say(f"pacsflow read-path benchmark: a {count}-instance CT series, 50 studies, a 100-frame instance")
    stack = Stack("read")
    webs: list[Service] = []
    summary: dict[str, Any] = {"instances": count}
    try:
        stack.env["PACSFLOW_LOG_LEVEL"] = "info"  # the worker says when it holds its partitions
        stack.start_workers(1)
        run = uuid.uuid4().int % 10**9
        study, series = dicomdata.uid(run, 1), dicomdata.uid(run, 1, 1)
        folder = WORK / "data" / "read"
        files = dicomdata.write_all(dicomdata.ct_series(study, series, count, rows=512, columns=512), folder)
        small = [
            dicomdata.image(CTImageStorage, dicomdata.uid(run, 100 + n), dicomdata.uid(run, 100 + n, 1),
                            dicomdata.uid(run, 100 + n, 1, 1), 1, patient_name=f"List^P{n}",
                            study_date=f"2025{1 + n % 12:02d}{1 + n % 28:02d}", accession=f"A{n}")
            for n in range(50)
        ]  # fmt: skip
        files += dicomdata.write_all(small, folder / "list")
        mf_study, mf_series = dicomdata.uid(run, 2), dicomdata.uid(run, 2, 1)
        files.append(dicomdata.write(multiframe(mf_study, mf_series, 100), folder / "mf" / "mf.dcm"))
        wait_for(lambda: stack.workers[0].events("partitions_assigned"), 60, "the worker to join its group")
        say(f"  sending {len(files)} instances ...")
        send(stack.port, files, 2)

        def current() -> bool:
            rows = asyncio.run(
                sql(
                    stack.dsn,
                    "SELECT count(*) FILTER (WHERE json_status = 1 AND version = built_version) AS n "
                    "FROM dicom_json_meta",
                )
            )
            return int(rows[0]["n"]) == 52 and stack.indexed() == len(files)

        wait_for(current, 300, "every series' metadata current", interval=0.2)
        web, root = start_web(stack, "web")
        webs.append(web)
        metadata_url = f"{root}/studies/{study}/series/{series}/metadata"
        gzip = {"Accept-Encoding": "gzip"}
        latencies, _, size = asyncio.run(load(lambda _: metadata_url, 1, 1, gzip))
        summary["series_metadata_first_ms"] = round(latencies[0], 2)
        summary["series_metadata_gzip_bytes"] = size
        say(f"  series metadata, first request: {latencies[0]:.2f} ms ({size} bytes gzipped)")
        summary["series_metadata_file"] = measure("series metadata (file)", [metadata_url], requests, gzip)
        proxied = {**gzip, "X-Forwarded-Host": "viewer.example.org"}
        summary["series_metadata_on_demand"] = measure(
            "series metadata (built on demand)", [metadata_url], requests // 4, proxied
        )
        studies_url = f"{root}/studies?{OHIF_STUDY_LIST}"
        summary["qido_study_list"] = measure("QIDO-RS study list (no Redis)", [studies_url], requests, {})
        sops = [f"{series}.{n}" for n in range(1, count + 1)]
        frame_urls = [f"{root}/studies/{study}/series/{series}/instances/{sop}/frames/1" for sop in sops]
        summary["frames_single"] = measure(
            "frames, single-frame instances",
            frame_urls,
            requests,
            {"Accept": OHIF_FRAMES},
        )
        mf_url = f"{root}/studies/{mf_study}/series/{mf_series}/instances/{mf_series}.1/frames/50"
        summary["frames_multiframe_50"] = measure(
            "frame 50 of 100", [mf_url], requests, {"Accept": OHIF_FRAMES}
        )
        cached, cached_root = start_web(
            stack, "web-redis", PACSFLOW_REDIS_URL="redis://127.0.0.1:6379/0",
            PACSFLOW_REDIS_PREFIX=f"bench-{run}:"
        )  # fmt: skip
        webs.append(cached)
        summary["qido_study_list_redis"] = measure(
            "QIDO-RS study list (Redis)", [f"{cached_root}/studies?{OHIF_STUDY_LIST}"], requests, {}
        )
    finally:
        for web in webs:
            web.stop()
        stack.close()
    summary["when"] = datetime.now(UTC).isoformat(timespec="seconds")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"read-{summary['when'].replace(':', '')}.json"
    out.write_text(json.dumps(summary, indent=2))
    say("")
    say("| metric | p50 (c=1) | p99 (c=1) | req/s (c=16) | MB/s (c=16) |")
    say("|---|---|---|---|---|")
    for key, label in (
        ("series_metadata_file", f"series metadata, {count} instances, regenerated file (gzip)"),
        ("series_metadata_on_demand", f"series metadata, {count} instances, built on demand (gzip)"),
        ("qido_study_list", "QIDO-RS study list (OHIF's query, 50 studies), no Redis"),
        ("qido_study_list_redis", "QIDO-RS study list, Redis cache"),
        ("frames_single", "frame of a single-frame 512x512 instance (OHIF Accept)"),
        ("frames_multiframe_50", "frame 50 of a 100-frame 512x512 instance"),
    ):
        m = summary[key]
        say(f"| {label} | {m['p50_ms']} ms | {m['p99_ms']} ms | {m['rps_c16']} | {m['mb_s_c16']} |")
    say(f"\nseries metadata, first request after regeneration: {summary['series_metadata_first_ms']} ms")
    say(f"(results in {out.relative_to(ROOT)})")


if __name__ == "__main__":
    main()
