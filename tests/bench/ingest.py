"""`make bench`: C-STORE ingest into `pacsflow scp`, 1 and 4 associations, with dcmtk's storescu.

Data: deterministic 512x512 16-bit CT slices made with pydicom (cached under ./var/bench/data).
pacsflow runs with a Tansu broker on loopback, storing to ./var/bench (the disk a real install
uses), every file fsynced. Each run reports instances/s and MB/s, and the time until the last
event of the run was on the broker (the outbox drained). Results go to tests/bench/results/.

    python -m tests.bench.ingest [--instances 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from tests.support import dicomdata
from tests.support.dimse import c_echo
from tests.support.services import DCMTK, Broker, Service, free_port, read_topic, wait_for

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "var" / "bench"
RESULTS = Path(__file__).resolve().parent / "results"


def say(message: str) -> None:
    print(message, flush=True)


def make_data(count: int) -> list[Path]:
    folder = WORK / "data" / f"ct512-{count}"
    files = sorted(folder.glob("*.dcm"))
    if len(files) == count:
        return files
    say(f"generating {count} CT slices of 512x512 16-bit in {folder} ...")
    shutil.rmtree(folder, ignore_errors=True)
    study = dicomdata.uid(777, 1)
    datasets = dicomdata.ct_series(study, dicomdata.uid(777, 1, 1), count, rows=512, columns=512)
    return dicomdata.write_all(datasets, folder)


def store(port: int, groups: list[list[Path]]) -> float:
    """Send each group on its own association, all at once; return the wall time."""
    started = time.perf_counter()
    senders = [
        subprocess.Popen(
            [str(DCMTK / "storescu"), "-aec", "PACSFLOW", "-to", "60", "127.0.0.1", str(port), *map(str, g)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for g in groups
    ]
    for sender in senders:
        _, err = sender.communicate(timeout=600)
        if sender.returncode != 0:
            raise SystemExit(f"storescu failed: {err[-500:]}")
    return time.perf_counter() - started


def run(instances: int, repeat: int) -> dict[str, object]:
    if not (DCMTK / "storescu").exists():
        raise SystemExit("dcmtk is missing: run `make bench` (it installs it) or apt-get install dcmtk")
    files = make_data(instances)
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    shutil.rmtree(WORK / "run", ignore_errors=True)
    (WORK / "run").mkdir(parents=True)
    broker = Broker(WORK / "run" / "tansu.log").start()
    port = free_port()
    scp = Service(
        "scp",
        {
            "PACSFLOW_DATA_DIR": str(WORK / "run" / "var"),
            "PACSFLOW_SCP_PORT": str(port),
            "PACSFLOW_KAFKA_BOOTSTRAP": broker.bootstrap,
            "PACSFLOW_LOG_LEVEL": "warning",  # per-instance lines cost time on a hot path
        },
        WORK / "run" / "scp.log",
    ).start()
    results: dict[str, list[float]] = {}
    published = 0
    try:
        wait_for(lambda: c_echo(port) or not scp.alive(), 30, "pacsflow scp to answer C-ECHO")
        if not scp.alive():
            raise SystemExit(f"pacsflow scp exited: see {scp.log_path}")
        for associations in (1, 4):
            groups = [files[i::associations] for i in range(associations)]
            for attempt in range(1, repeat + 1):
                seconds = store(port, groups)
                published += len(files)
                drained_at = _drained(broker, published)
                key = f"{associations}"
                results.setdefault(f"ips_{key}", []).append(len(files) / seconds)
                results.setdefault(f"mbs_{key}", []).append(megabytes / seconds)
                results.setdefault(f"drain_{key}", []).append(drained_at)
                say(
                    f"  {associations} association(s), run {attempt}/{repeat}: {len(files)} instances in "
                    f"{seconds:.2f} s = {len(files) / seconds:.1f} instances/s, "
                    f"{megabytes / seconds:.1f} MB/s; events on the broker {drained_at:.2f} s after"
                )
                shutil.rmtree(WORK / "run" / "var" / "storage", ignore_errors=True)
    finally:
        scp.stop()
        broker.stop()
    return {
        "instances": instances,
        "instance_bytes": files[0].stat().st_size,
        "repeat": repeat,
        **{name: round(statistics.median(values), 2) for name, values in results.items()},
    }


def _drained(broker: Broker, expected: int) -> float:
    """Seconds until all ``expected`` events can be read back (an upper bound: includes the read)."""
    started = time.perf_counter()
    asyncio.run(read_topic(broker.bootstrap, "storage_queue", expected, 120))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=200, help="instances per run (default 200)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration; the median is kept")
    args = parser.parse_args()
    say(f"pacsflow ingest benchmark: {args.instances} instances x {args.repeat} runs, 1 and 4 associations")
    summary = run(args.instances, args.repeat)
    summary["when"] = datetime.now(UTC).isoformat(timespec="seconds")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"ingest-{summary['when'].replace(':', '')}.json"
    out.write_text(json.dumps(summary, indent=2))
    say("")
    say("| metric (median) | pacsflow |")
    say("|---|---|")
    say(f"| C-STORE, 1 association, instances/s | {summary['ips_1']} |")
    say(f"| C-STORE, 4 associations, instances/s | {summary['ips_4']} |")
    say(f"| C-STORE, 1 association, MB/s | {summary['mbs_1']} |")
    say(f"| C-STORE, 4 associations, MB/s | {summary['mbs_4']} |")
    say(
        f"| all events readable on the broker after the last store, s (1 / 4) "
        f"| {summary['drain_1']} / {summary['drain_4']} |"
    )
    say(f"\n({summary['instance_bytes']} bytes per instance; results in {out.relative_to(ROOT)})")


if __name__ == "__main__":
    sys.exit(main())
