"""`make bench`: what bearer-token auth (`PACSFLOW_AUTH=jwt`) costs pacsflow's reads.

Two `pacsflow dev` on loopback ports of their own (tests/bench/versus.py's `start_pacsflow`), viewer
and analytics off, the same data stored in each by dcmtk's storescu: one with `PACSFLOW_AUTH=off`,
one with `PACSFLOW_AUTH=jwt` and a real OpenID Connect issuer (tests/support/issuer.py, RS256 with
RSA 2048). Both stay up, idle but for the one measured: they are measured in turn, never at once,
the order swapped every round.

With auth on, every request carries one token, as a signed-in viewer's do: pacsflow verifies it
once and remembers it until it expires, so what the figures show is the steady state. Reported for
auth off and on (the target: on within 10 % of off):

- the QIDO-RS study list as OHIF asks it, single frames of the CT series' instances and the frames
  of the multi-frame instance (OHIF's Accept): req/s at 16 connections (wrk, one thread; the median
  of the rounds, and the median of each round's on/off ratio, both runs of a pair back to back),
  the web process' CPU time a request under wrk, and p50 / p99 one request at a time (aiohttp);
- a cold verification: study lists one at a time, each with a token never seen before, interleaved
  with ones carrying the remembered token; and the signature check alone (PyJWT in this process);
- with ``--profile``: the share of the auth-on web process' busy time (py-spy samples) spent
  checking the token, a figure that other load on the machine does not move as it moves req/s.

Everything is printed, and written to tests/bench/results/auth-<time>.json.

    python -m tests.bench.auth [--instances 50] [--frames 20] [--seconds 4] [--rounds 5] [--profile]
    python -m tests.bench.auth --reads qido --rounds 11 --seconds 3 --cold 0   # one read, more rounds
    python -m tests.bench.auth --quick     # tiny sizes: checks the bench runs, figures mean nothing
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pydicom.uid import CTImageStorage

from tests.bench.read import OHIF_FRAMES, OHIF_STUDY_LIST, WRK, load, multiframe, pct, wrk
from tests.bench.versus import (
    RESULTS,
    ROOT,
    Series,
    Server,
    _cmdline,
    parse_args,
    say,
    start_pacsflow,
    storescu,
)
from tests.support import dicomdata
from tests.support.issuer import Issuer
from tests.support.services import DCMTK, wait_for

SEED = 20261201
CONNECTIONS = 16
AUDIENCE = "pacsflow"
TARGET_RATIO = 0.9
# Longer than any run: a token that expired mid-run would turn the figures into 401s. pacsflow
# still judges it again every 5 minutes (tokens.py), as it would a viewer's.
TOKEN_SECONDS = 3600


# --- data -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Data:
    ct: Series
    multiframe: Series
    frames: int
    studies: list[Series]

    def every(self) -> list[Series]:
        return [self.ct, self.multiframe, *self.studies]

    def files(self) -> list[Path]:
        return [f for s in self.every() for f in s.files]

    def describe(self) -> str:
        return (
            f"a {self.ct.count}-instance CT series (512x512, 16-bit), a {self.frames}-frame 512x512 "
            f"instance, {len(self.studies)} one-instance studies (64x64): {len(self.every())} studies"
        )


def make_data(folder: Path, instances: int, frames: int, studies: int) -> Data:
    def stored(name: str, number: int, datasets: Callable[[str, str], list[Any]]) -> Series:
        study, series = dicomdata.uid(SEED, number), dicomdata.uid(SEED, number, 1)
        files = dicomdata.write_all(datasets(study, series), folder / name)
        return Series(name, study, series, len(files), tuple(files))

    ct = stored("ct", 1, lambda st, se: dicomdata.ct_series(st, se, instances, rows=512, columns=512))
    mf = stored("mf", 2, lambda st, se: [multiframe(st, se, frames)])
    # The study list has more than the two studies above to list, as a viewer's usually does.
    listed = [
        stored(f"list-{n}", 100 + n, lambda st, se, n=n: [  # type: ignore[misc]
            dicomdata.image(CTImageStorage, st, se, f"{se}.1", 1, patient_name=f"List^P{n:02d}",
                            study_date=f"2025{1 + n % 12:02d}{1 + n % 28:02d}", accession=f"L{n}")
        ])
        for n in range(studies)
    ]  # fmt: skip
    return Data(ct, mf, frames, listed)


# --- the two servers --------------------------------------------------------------------------


@dataclass
class Target:
    """One pacsflow and what its requests carry: nothing (auth off) or one bearer token."""

    name: str
    server: Server
    headers: dict[str, str]
    seen: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def web_pid(self) -> int:
        """pacsflow's web process, where the token is checked (a restarted one has a new pid)."""
        found = [pid for pid in self.server.pids() if _cmdline(pid)[-2:] == ["pipeline", "web"]]
        if not found:
            raise SystemExit(f"{self.server.name}: no `pipeline web` process under pacsflow dev")
        return found[0]

    def record(self, read: str, figure: str, values: Sequence[float]) -> None:
        self.seen.setdefault(read, {}).setdefault(figure, []).extend(values)


def start(work: Path, name: str, settings: dict[str, str]) -> Server:
    """`pacsflow dev` as `make bench` starts it, with ``settings`` on top."""
    (work / name).mkdir()
    common = {"PACSFLOW_VIEWER": "off", "PACSFLOW_ANALYTICS": "off"}
    server, _ = start_pacsflow(work / name, {**common, **settings})
    server.name = f"auth {name}"
    return server


def status(url: str, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def check_guard(target: Target) -> None:
    """Auth on must refuse a request without the token and take one with it, else the bench would
    compare two servers that do the same."""
    url = f"{target.server.dicomweb}/studies?{OHIF_STUDY_LIST}"
    without, with_token = status(url, {}), status(url, target.headers)
    if (without, with_token) != (401, 200):
        raise SystemExit(f"{target.server.name}: without a token {without}, with one {with_token}; "
                         "expected 401 and 200")  # fmt: skip


def get_json(url: str, headers: dict[str, str]) -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as response:
        return json.loads(response.read() or b"[]")


def settled(target: Target, series: Series) -> bool:
    """All of ``series`` in QIDO-RS and in its series metadata: the metadata is written after the
    fact, and that work must not overlap a measurement."""
    base = f"{target.server.dicomweb}/studies/{series.study}/series/{series.series}"
    try:
        last = get_json(f"{base}/instances?limit=1&offset={series.count - 1}", target.headers)
        return bool(last) and len(get_json(f"{base}/metadata", target.headers)) >= series.count
    except OSError:
        return False


# --- measurements -----------------------------------------------------------------------------


def reads(target: Target, data: Data) -> dict[str, list[str]]:
    """What each measured read asks for: one URL, or several taken in turn (wrk's script rotates)."""
    root = target.server.dicomweb
    ct, mf = data.ct, data.multiframe
    return {
        "qido": [f"{root}/studies?{OHIF_STUDY_LIST}"],
        "frames": [
            f"{root}/studies/{ct.study}/series/{ct.series}/instances/{ct.series}.{n}/frames/1"
            for n in range(1, ct.count + 1)
        ],
        "multiframe": [
            f"{root}/studies/{mf.study}/series/{mf.series}/instances/{mf.series}.1/frames/{n}"
            for n in range(1, data.frames + 1)
        ],
    }


LABELS = {
    "qido": "QIDO-RS study list (OHIF's query)",
    "frames": "frame 1 of each single-frame CT instance in turn (OHIF's Accept)",
    "multiframe": "each frame of the multi-frame instance in turn (OHIF's Accept)",
}
ACCEPT = {"qido": {}, "frames": {"Accept": OHIF_FRAMES}, "multiframe": {"Accept": OHIF_FRAMES}}


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process, all its threads (the signature checks' pool too)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def one_client(urls: Sequence[str], count: int, headers: dict[str, str]) -> list[float]:
    spent, _, _ = asyncio.run(load(lambda i: urls[i % len(urls)], count, 1, headers))
    return spent


def measure(targets: Sequence[Target], data: Data, read: str, args: argparse.Namespace) -> None:
    """Each round, each target in turn (the order swapped every round): one-client latencies, then
    wrk at 16 connections, and the web process' CPU time per request under wrk (it moves less than
    req/s when other work shares the 2 cores). A first pass over every URL warms the page cache and
    the token's memory."""
    say(f"{LABELS[read]} ...")
    for target in targets:
        urls = reads(target, data)[read]
        one_client(urls, len(urls), {**target.headers, **ACCEPT[read]})
    per_round = max(1, args.requests // args.rounds)
    for turn in range(args.rounds):
        for target in targets if turn % 2 == 0 else targets[::-1]:
            urls = reads(target, data)[read]
            headers = {**target.headers, **ACCEPT[read]}
            spent = one_client(urls, per_round, headers)
            web = target.web_pid()
            cpu = cpu_seconds(web)
            rps, mb_s, done = wrk(urls, headers, seconds=args.seconds, connections=CONNECTIONS)
            cpu_us = (cpu_seconds(web) - cpu) / done * 1e6
            target.record(read, "ms_one_client", spent)
            target.record(read, "rps", [rps])
            target.record(read, "mb_s", [mb_s])
            target.record(read, "wrk_requests", [done])
            target.record(read, "web_cpu_us", [cpu_us])
            target.record(read, "load_1min", [os.getloadavg()[0]])
            say(f"  round {turn + 1}/{args.rounds}, {target.server.name}: {rps:.0f} req/s at {CONNECTIONS} "
                f"connections ({done} requests, web process {cpu_us:.0f} us CPU a request); one client "
                f"p50 {pct(spent, 0.5):.2f} ms; load {os.getloadavg()[0]:.1f}")  # fmt: skip


async def _fresh_and_remembered(url: str, fresh: Sequence[str], same: str) -> tuple[list[float], list[float]]:
    """Latencies (ms) of requests one at a time, a new token and the remembered one alternately,
    so that both see the same server state."""
    cold: list[float] = []
    warm: list[float] = []
    async with aiohttp.ClientSession() as session:
        for token in fresh:
            for carried, into in ((token, cold), (same, warm)):
                started = time.perf_counter()
                async with session.get(url, headers={"Authorization": f"Bearer {carried}"}) as response:
                    body = await response.read()
                    if response.status != 200:
                        raise SystemExit(f"GET {url}: {response.status} {body[:300]!r}")
                into.append((time.perf_counter() - started) * 1000)
    return cold, warm


def cold_verification(target: Target, issuer: Issuer, count: int) -> dict[str, Any]:
    say(f"cold verification: {count} study lists with a new token each, {count} with the remembered one ...")
    fresh = [
        issuer.token(sub=f"bench-{n}", scope="dicomweb.read", expires_in=TOKEN_SECONDS) for n in range(count)
    ]
    same = target.headers["Authorization"].removeprefix("Bearer ")
    url = f"{target.server.dicomweb}/studies?{OHIF_STUDY_LIST}"
    cold, warm = asyncio.run(_fresh_and_remembered(url, fresh, same))
    # The signature and claims check alone, as tokens.py calls it (the key parsed once, as it is).
    key = load_pem_public_key(issuer.public_pem)
    started = time.perf_counter()
    for token in fresh:
        jwt.decode(token, key, algorithms=["RS256"], audience=AUDIENCE, issuer=issuer.url,  # type: ignore[arg-type]
                   options={"require": ["exp", "iss", "aud", "sub"]})  # fmt: skip
    decode_ms = (time.perf_counter() - started) * 1000 / count
    found = {
        "requests_each": count,
        "new_token_p50_ms": pct(cold, 0.5),
        "new_token_p99_ms": pct(cold, 0.99),
        "remembered_token_p50_ms": pct(warm, 0.5),
        "remembered_token_p99_ms": pct(warm, 0.99),
        "cost_p50_ms": round(pct(cold, 0.5) - pct(warm, 0.5), 3),
        "pyjwt_decode_rs256_ms": round(decode_ms, 3),
    }
    say(f"  new token p50 {found['new_token_p50_ms']} ms, remembered token p50 "
        f"{found['remembered_token_p50_ms']} ms: a verification costs about {found['cost_p50_ms']} ms "
        f"(PyJWT's RS256 decode alone: {found['pyjwt_decode_rs256_ms']} ms)")  # fmt: skip
    return found


def auth_sample(stack: list[str]) -> bool:
    """Whether a sample (frames outermost first) is the token check's own: below its deepest frame
    of egress/auth, no frame of the request's handler (the guard awaits it)."""
    deepest = max((i for i, frame in enumerate(stack) if "egress/auth/" in frame), default=None)
    if deepest is None:
        return False
    return not any("egress/wado/" in frame or "pipeline/" in frame for frame in stack[deepest + 1 :])


# Samples a second. py-spy pauses the process for each (--nonblocking tears stacks apart, which
# would put a handler's frames under the guard); shares stay true, only the pace slows.
PROFILE_RATE = 500


def profile(target: Target, data: Data, read: str, seconds: int) -> dict[str, Any]:
    """py-spy of the auth-on web process under wrk: the share of its busy samples spent checking the
    token. A share of samples does not move with other load on the machine, as req/s do."""
    urls = reads(target, data)[read]
    out = RESULTS / f"profile-auth-{read}.txt"
    spy = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "py-spy"), "record", "-p", str(target.web_pid()), "-d", str(seconds),
         "-r", str(PROFILE_RATE), "-f", "raw", "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    wrk(urls, {**target.headers, **ACCEPT[read]}, seconds=seconds + 1, connections=CONNECTIONS)
    _, err = spy.communicate(timeout=60)
    if spy.returncode != 0 or not out.exists():
        raise SystemExit(f"py-spy failed: {err.decode()[-1000:]}")
    total = in_auth = 0
    frames: dict[str, int] = {}
    for line in out.read_text().splitlines():
        joined, _, count = line.rpartition(" ")
        if joined.endswith("_worker (concurrent/futures/thread.py:81)"):
            continue  # an idle thread of the pool, waiting for work
        stack = joined.split(";")
        total += int(count)
        if auth_sample(stack):
            in_auth += int(count)
            frames[stack[-1]] = frames.get(stack[-1], 0) + int(count)
    share = in_auth / max(total, 1) * 100
    top = sorted(frames.items(), key=lambda item: -item[1])[:8]
    say(f"  profile of {read}, auth on: {share:.2f} % of {total} busy samples check the token "
        f"(raw in {out.relative_to(ROOT)})")  # fmt: skip
    for frame, samples in top:
        say(f"    {samples / max(total, 1) * 100:5.2f}%  {frame}")
    return {
        "busy_samples": total,
        "auth_samples": in_auth,
        "auth_share_percent": round(share, 2),
        "top_auth_leaf_frames": dict(top),
    }


# --- the run ----------------------------------------------------------------------------------


def summary(off: Target, on: Target) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for read in off.seen:
        entry: dict[str, Any] = {"label": LABELS[read]}
        for target, key in ((off, "off"), (on, "on")):
            seen = target.seen[read]
            entry[key] = {
                "rps_median": round(statistics.median(seen["rps"]), 1),
                "rps_rounds": [round(r, 1) for r in seen["rps"]],
                "mb_s_median": round(statistics.median(seen["mb_s"]), 1),
                "web_cpu_us_per_request_median": round(statistics.median(seen["web_cpu_us"])),
                "web_cpu_us_per_request_rounds": [round(c) for c in seen["web_cpu_us"]],
                "load_1min_rounds": [round(v, 2) for v in seen["load_1min"]],
                "wrk_requests": int(sum(seen["wrk_requests"])),
                "one_client_p50_ms": pct(seen["ms_one_client"], 0.5),
                "one_client_p99_ms": pct(seen["ms_one_client"], 0.99),
                "one_client_requests": len(seen["ms_one_client"]),
            }
        entry["ratio_on_off"] = round(entry["on"]["rps_median"] / entry["off"]["rps_median"], 3)
        # Each round's pair ran back to back: their ratio shares the load of the moment.
        pairs = zip(on.seen[read]["rps"], off.seen[read]["rps"], strict=True)
        entry["ratio_on_off_paired"] = [round(a / b, 3) for a, b in pairs]
        entry["ratio_on_off_paired_median"] = round(statistics.median(entry["ratio_on_off_paired"]), 3)
        # How far auth off's own rounds lie apart: a difference smaller than this is not seen.
        rounds = off.seen[read]["rps"]
        entry["off_rounds_spread"] = round((max(rounds) - min(rounds)) / statistics.median(rounds), 3)
        entry["web_cpu_us_added"] = (
            entry["on"]["web_cpu_us_per_request_median"] - entry["off"]["web_cpu_us_per_request_median"]
        )
        out[read] = entry
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not Path(WRK).exists():
        raise SystemExit("wrk is not installed: `make bench` installs it (Debian's wrk)")
    if not (DCMTK / "storescu").exists():
        raise SystemExit("dcmtk's storescu is not installed: `make install` installs dcmtk")
    (ROOT / "var" / "bench").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pacsflow-auth-", dir=ROOT / "var" / "bench"))
    servers: list[Server] = []
    try:
        data = make_data(work / "data", args.instances, args.frames, args.studies)
        say(f"data: {data.describe()}")
        with Issuer(audience=AUDIENCE) as issuer:
            say(f"issuer at {issuer.url}; starting pacsflow dev with auth off, then with auth on ...")
            servers.append(start(work, "off", {"PACSFLOW_AUTH": "off"}))
            servers.append(start(work, "on", {"PACSFLOW_AUTH": "jwt", "PACSFLOW_OIDC_ISSUER": issuer.url,
                                              "PACSFLOW_OIDC_AUDIENCE": AUDIENCE}))  # fmt: skip
            token = issuer.token(sub="bench-viewer", scope="dicomweb.read", expires_in=TOKEN_SECONDS)
            off = Target("off", servers[0], {})
            on = Target("on", servers[1], {"Authorization": f"Bearer {token}"})
            check_guard(on)
            for target in (off, on):
                started = time.perf_counter()
                storescu(target.server, data.files(), 2)
                for series in data.every():
                    wait_for(lambda t=target, s=series: settled(t, s), 300,
                             f"{target.server.name} to show {series.name}", 0.1)  # fmt: skip
                say(f"  {target.server.name}: {len(data.files())} instances stored and visible in "
                    f"{time.perf_counter() - started:.1f} s")  # fmt: skip
            for read in args.reads:
                measure((off, on), data, read, args)
            cold = cold_verification(on, issuer, args.cold) if args.cold else None
            profiles = {}
            if args.profile:
                say(f"profiles of the auth-on web process (py-spy, {PROFILE_RATE} samples/s) ...")
                profiles = {read: profile(on, data, read, args.seconds) for read in args.reads}
            jwks_fetches = issuer.jwks_fetches
        return {
            "machine": {"cores": os.cpu_count()},
            "dataset": {"description": data.describe(), "instances": len(data.files())},
            "reads": summary(off, on),
            "cold_verification": cold,
            "profiles": profiles,
            "issuer_jwks_fetches": jwks_fetches,
        }
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def report(result: dict[str, Any]) -> list[str]:
    lines = [
        "| read | auth off req/s | auth on req/s | on/off (of medians; paired) "
        "| web CPU a request, off / on (us) "
        "| off p50 / p99 ms (1 client) | on p50 / p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in result["reads"].values():
        off, on = entry["off"], entry["on"]
        lines.append(
            f"| {entry['label']} | {off['rps_median']:g} | {on['rps_median']:g} "
            f"| {entry['ratio_on_off']:.2f}; {entry['ratio_on_off_paired_median']:.2f} "
            f"| {off['web_cpu_us_per_request_median']} / {on['web_cpu_us_per_request_median']} "
            f"| {off['one_client_p50_ms']} / {off['one_client_p99_ms']} "
            f"| {on['one_client_p50_ms']} / {on['one_client_p99_ms']} |"
        )
    return lines


def verdict(entry: dict[str, Any]) -> str:
    ratio, paired, spread = (
        entry["ratio_on_off_paired_median"],
        entry["ratio_on_off_paired"],
        entry["off_rounds_spread"],
    )
    said = (
        f"{ratio:.2f} (rounds {min(paired):.2f} to {max(paired):.2f}; "
        f"auth off's rounds {spread * 100:.0f} % apart)"
    )
    if ratio >= TARGET_RATIO:
        return f"yes, {said}"
    if len(paired) < 3:
        return f"undecided, {said}: fewer than 3 rounds show no noise; run --rounds 3 or more"
    if spread > 1 - TARGET_RATIO:
        return f"undecided, {said}: the machine's noise is wider than the target; run it on a quiet machine"
    return f"NO, {said}"


QUICK = {"instances": 5, "frames": 3, "studies": 2, "seconds": 1, "rounds": 1, "requests": 10, "cold": 5}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=50, help="instances of the CT series (512x512)")
    parser.add_argument("--frames", type=int, default=20, help="frames of the multi-frame instance (512x512)")
    parser.add_argument("--studies", type=int, default=20, help="one-instance studies more in the study list")
    parser.add_argument("--seconds", type=int, default=4, help="seconds of each wrk run")
    parser.add_argument("--rounds", type=int, default=5, help="wrk runs per read and server, alternating")
    parser.add_argument("--requests", type=int, default=300, help="one-client requests per read and server")
    parser.add_argument("--reads", default=",".join(LABELS), help="which reads to measure, comma-separated")
    parser.add_argument(
        "--profile", action="store_true", help="at the end, py-spy: the share of the web's time auth takes"
    )
    parser.add_argument("--cold", type=int, default=200, help="requests with a new token each (0: skip)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes to check the bench works, not figures"
    )
    args = parse_args(parser, QUICK)
    args.reads = [r for r in args.reads.split(",") if r]
    unknown = sorted(set(args.reads) - set(LABELS))
    if unknown or not args.reads:
        raise SystemExit(f"--reads: {', '.join(unknown) or 'none given'}; choose from {','.join(LABELS)}")
    for name in ("instances", "frames", "seconds", "rounds", "requests"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be at least 1")
    settings = {k: v for k, v in vars(args).items()} | {"connections": CONNECTIONS, "cores": os.cpu_count()}
    say(f"pacsflow auth bench: {settings}")
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    result = run(args)
    result["load_1min"] = {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)}
    result["when"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["seconds"] = round(time.perf_counter() - started)
    result["settings"] = settings
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"auth-{'quick-' if args.quick else ''}{result['when'].replace(':', '')}.json"
    out.write_text(json.dumps(result, indent=2))
    say("")
    say(f"{os.cpu_count()} cores; wrk: 1 thread, {CONNECTIONS} connections, {args.seconds} s a run, "
        f"{args.rounds} rounds a server (median); one client: {args.requests} requests; "
        f"data: {result['dataset']['description']}; machine load {result['load_1min']['start']} at the "
        f"start, {result['load_1min']['end']} at the end")  # fmt: skip
    for line in report(result):
        say(line)
    say(f"\nauth on within {100 - TARGET_RATIO * 100:.0f} % of auth off (req/s, the median of each "
        "round's on/off pair):")  # fmt: skip
    for entry in result["reads"].values():
        added = entry["web_cpu_us_added"]
        share = added / entry["off"]["web_cpu_us_per_request_median"] * 100
        say(f"  {entry['label']}: {verdict(entry)}; the web process' CPU a request {added:+d} us "
            f"({share:+.1f} %)")  # fmt: skip
    for read, found in result["profiles"].items():
        say(f"  the token check's share of the auth-on web process' busy samples, {read}: "
            f"{found['auth_share_percent']} %")  # fmt: skip
    cold = result["cold_verification"]
    if cold:
        say(f"a token's first request: +{cold['cost_p50_ms']} ms at p50 (new token p50 "
            f"{cold['new_token_p50_ms']} ms, remembered {cold['remembered_token_p50_ms']} ms); "
            f"PyJWT's RS256 check alone {cold['pyjwt_decode_rs256_ms']} ms")  # fmt: skip
    say(f"\n{result['seconds']} s; results in {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
