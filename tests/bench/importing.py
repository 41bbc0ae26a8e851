"""`pacsflow import` against C-STORE: the same files into the same kind of stack, in one run.

Starts what tests/bench/capacity.py starts (its embedded broker, PostgreSQL, one `pacsflow scp`
process with `pacsflow dev`'s broker settings), then stores one batch of generated CT instances
twice, each into a storage root of its own on the same filesystem (every file fsynced, renamed,
its folder fsynced, its events in an fsynced outbox, both ways):

1. `pacsflow import FOLDER --jobs N` (a process of its own, as a user runs it): the command's
   wall time (start, listing, the end's drain to Kafka included) and the rate it reports itself;
2. dcmtk's storescu (TCP_NODELAY=1) to the SCP on 1 association, then on N (one storescu process
   each), the files split between them.

Instances/s of each are printed with the settings. A second run of the import over the same folder
(everything skipped: the journal's cost) is timed too.

    python -m tests.bench.importing [--instances 2000] [--size 64] [--jobs 4]
    python -m tests.bench.importing --quick    # tiny sizes: checks the bench runs, figures mean nothing
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.bench.capacity import WORK, load, make_batch, say, stack
from tests.bench.versus import describe, storescu
from tests.support.services import clean_environment


def run_import(env: dict[str, str], folder: Path, jobs: int, failures: Path) -> tuple[float, str]:
    """Seconds `pacsflow import` took (the whole command), and what it printed."""
    started = time.perf_counter()
    command = ["import", str(folder), "--jobs", str(jobs), "--failures", str(failures)]
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *command],
        env={**clean_environment(), **env, "PACSFLOW_LOG_FORMAT": "json"},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    spent = time.perf_counter() - started
    if done.returncode != 0:
        said = done.stdout[-3000:] + done.stderr[-2000:]
        raise SystemExit(f"pacsflow import failed ({done.returncode}): {said}")
    return spent, done.stdout


def own_rate(printed: str) -> float:
    """The instances/s the import's summary reports (listing and the end's drain left out)."""
    found = re.search(r"rate\s+([\d.]+) instances/s", printed)
    return float(found.group(1)) if found else 0.0


def stored(root: Path) -> int:
    return sum(1 for _ in root.rglob("*.dcm"))


def bench(args: argparse.Namespace) -> dict[str, Any]:
    batch = make_batch("import", 1, args.instances, args.studies, 1, args.size)
    folder = batch.files[0].parent
    figures: dict[str, Any] = {}
    with stack(WORK.parent / "importing", partitions=4) as running:
        import_env = {**running.env, "PACSFLOW_DATA_DIR": str(running.folder / "import-var")}
        import_env.pop("PACSFLOW_STORAGE_ROOT")
        import_root = running.folder / "import-var" / "storage"
        say(f"pacsflow import --jobs {args.jobs} ({load()}) ...")
        spent, printed = run_import(import_env, folder, args.jobs, running.folder / "failures.tsv")
        assert stored(import_root) == len(batch.files), "the import did not store every file"
        figures["import"] = {
            "instances_per_s": round(len(batch.files) / spent, 1),
            "own_rate_instances_per_s": own_rate(printed),
            "seconds": round(spent, 2),
        }
        say(f"  {figures['import']}")
        again, _ = run_import(import_env, folder, args.jobs, running.folder / "failures.tsv")
        figures["import_again_all_skipped_s"] = round(again, 2)
        say(f"  again, all skipped: {again:.2f} s")
        server = running.server()
        scp_root = running.folder / "var" / "storage"
        for associations in sorted({1, args.jobs}):
            say(f"storescu, {associations} association(s) ({load()}) ...")
            before = stored(scp_root)
            seconds = storescu(server, list(batch.files), associations)
            assert stored(scp_root) >= min(len(batch.files), before + 1)
            figures[f"c_store_{associations}"] = {
                "instances_per_s": round(len(batch.files) / seconds, 1),
                "seconds": round(seconds, 2),
            }
            say(f"  {figures[f'c_store_{associations}']}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--size", type=int, default=64, help="rows and columns of each CT image")
    parser.add_argument("--jobs", type=int, default=4, help="--jobs, and associations")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the bench runs")
    args = parser.parse_args()
    if args.quick:
        args.instances, args.studies = 40, 2
    batch_bytes = args.size * args.size * 2
    settings = {
        "instances": args.instances,
        "studies": args.studies,
        "image": f"{args.size}x{args.size} CT, 16-bit (~{batch_bytes / 1024:.0f} KiB of pixels each)",
        "import": f"pacsflow import --jobs {args.jobs} (threads), a process of its own",
        "c_store": "dcmtk storescu -R, TCP_NODELAY=1, a process per association, to one `pacsflow scp`",
        "durability": "both: file fsynced, renamed, folder fsynced; events in the fsynced SQLite outbox",
        "stack": "capacity.py's: Tansu (memory), embedded PostgreSQL, 4 partitions; no worker",
        "cpus": os.cpu_count(),
    }
    for line in describe(settings):
        say(line)
    figures = bench(args)
    c_store = figures[f"c_store_{args.jobs}"]["instances_per_s"]
    say("")
    say(f"{'way in':<44} {'instances/s':>12}")
    say(f"{'pacsflow import (whole command)':<44} {figures['import']['instances_per_s']:>12}")
    say(f"{'pacsflow import (its own rate)':<44} {figures['import']['own_rate_instances_per_s']:>12}")
    say(f"{'C-STORE, 1 association':<44} {figures['c_store_1']['instances_per_s']:>12}")
    if args.jobs != 1:
        say(f"{f'C-STORE, {args.jobs} associations':<44} {c_store:>12}")
    say(f"import / C-STORE ({args.jobs}): {figures['import']['instances_per_s'] / c_store:.2f}")


if __name__ == "__main__":
    main()
