"""The only composition root: ``pacsflow scp | worker | web | dev | topics | doris | analytics | ...``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline import __version__, lifecycle, log
from pipeline import settings as settings_module
from pipeline.errors import PacsflowError, SettingsError
from pipeline.settings import Settings

_NEEDS_KAFKA = {"scp", "worker", "topics", "reconcile", "status", "analytics"}
_NEEDS_DATABASE = {"worker", "web", "migrate", "reconcile"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pacsflow",
        description="A DICOMweb service built as a Kafka stream-processing pipeline. "
        "Settings come from PACSFLOW_* environment variables (see README).",
    )
    parser.add_argument("--version", action="version", version=f"pacsflow {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    commands.add_parser("dev", help="the whole system on one machine (embedded broker and database)")
    commands.add_parser("scp", help="the DICOM C-STORE SCP")
    commands.add_parser("worker", help="the Faust worker (agents and tables)")
    commands.add_parser("web", help="the DICOMweb server")
    commands.add_parser("topics", help="create pacsflow's Kafka topics and list them")
    commands.add_parser("migrate", help="apply the database migrations not applied yet")
    reconcile = commands.add_parser("reconcile", help="re-publish events of files the index lacks")
    reconcile.add_argument("--tenant", help="only this tenant's files")
    commands.add_parser("status", help="topic offsets, the workers' lag and the dead-letter count")
    commands.add_parser("settings", help="print the effective settings")
    doris = commands.add_parser(
        "doris", help="Apache Doris: the tables and Routine Load jobs fed from the topics"
    )
    doris_commands = doris.add_subparsers(dest="doris_command", required=True, metavar="doris-command")
    doris_sql = doris_commands.add_parser("sql", help="print the CREATE TABLE and Routine Load statements")
    doris_sql.add_argument(
        "--brokers", help="the brokers Doris reads (default: the ${KAFKA_BROKERS} placeholder the files hold)"
    )
    doris_apply = doris_commands.add_parser(
        "apply", help="create the database, tables and jobs Doris lacks, update those that changed"
    )
    doris_apply.add_argument("--dry-run", action="store_true", help="print what would be done, do nothing")
    doris_apply.add_argument(
        "--only", choices=("tables", "jobs"), help="the tables (and database) only, or the jobs only"
    )
    doris_commands.add_parser("status", help="each Routine Load job's state, lag and error rows")
    commands.add_parser("analytics", help="the analytics sink: the Doris-bound topics into Parquet tables")
    sql = commands.add_parser("sql", help="run a query over the analytics tables (DuckDB, Doris table names)")
    sql.add_argument("query", help='for example "SELECT count(*) FROM dicom_image_meta"')
    sql.add_argument("--format", choices=("table", "csv", "json"), default="table")
    report = commands.add_parser("report", help="run an analyst report; without a name, list them")
    report.add_argument("name", nargs="?")
    report.add_argument("--format", choices=("table", "csv", "json"), default="table")
    viewer = commands.add_parser(
        "viewer-config", help="print an OHIF app-config.js for a viewer hosted elsewhere, aimed at pacsflow"
    )
    viewer.add_argument(
        "--dicomweb",
        help="pacsflow's DICOMweb URL as the browser reaches it "
        "(default: PACSFLOW_PUBLIC_URL, else http://127.0.0.1:<port>, plus /dicomweb)",
    )
    viewer.add_argument("--router-basename", default="/", help="the path OHIF is served under (default: /)")
    _nginx_parser(commands)
    _import_parser(commands)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _import_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    imports = commands.add_parser(
        "import",
        help="store the DICOM files of folders, zip files and DICOMDIRs as a C-STORE would; "
        "run again to go on after a stop",
    )
    imports.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="a folder (recursively), a .zip file or a DICOMDIR",
    )
    imports.add_argument("--tenant", help="the tenant to store into (default: PACSFLOW_DEFAULT_TENANT)")
    imports.add_argument("--jobs", type=_positive, default=4, help="files stored at a time (default: 4)")
    imports.add_argument(
        "--failures",
        type=Path,
        default=Path("pacsflow-import-failures.tsv"),
        help="where each failure is listed, path and reason (default: ./pacsflow-import-failures.tsv)",
    )
    imports.add_argument(
        "--log-every",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="when stdout is no terminal: a progress line this often (default: 5)",
    )


def _nginx_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    nginx = commands.add_parser(
        "nginx-config",
        help="write nginx's configuration (HTTPS, balancing over the web processes, the viewer's files)",
    )
    nginx.add_argument(
        "--out", required=True, type=Path, help="the folder nginx runs from (nginx.conf in it)"
    )
    nginx.add_argument(
        "--upstream",
        required=True,
        action="append",
        metavar="HOST:PORT",
        help="a `pacsflow web`; repeat for each",
    )
    nginx.add_argument(
        "--resolver",
        default="",
        help="DNS server that re-resolves the upstreams every 10 s (Docker: 127.0.0.11)",
    )
    nginx.add_argument(
        "--http-port", type=int, default=8080, help="plain HTTP, redirected to HTTPS (default: 8080)"
    )
    nginx.add_argument("--https-port", type=int, default=8443, help="HTTPS and HTTP/2 (default: 8443)")
    nginx.add_argument("--server-name", default="_", help="nginx's server_name (default: _, any)")
    nginx.add_argument(
        "--tls-cert", type=Path, help="PEM certificate chain (default: a self-signed one, made once)"
    )
    nginx.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    nginx.add_argument("--user", default="", help="user nginx's workers run as when it starts as root")


def _run(command: str, settings: Settings, args: argparse.Namespace) -> None:
    if command in _NEEDS_KAFKA and not settings.kafka_bootstrap:
        raise SettingsError(
            "PACSFLOW_KAFKA_BOOTSTRAP is empty: set it to your Kafka brokers (host:port), "
            "or run `pacsflow dev`, which starts an embedded broker"
        )
    if command in _NEEDS_DATABASE and not settings.database_url:
        raise SettingsError(
            "PACSFLOW_DATABASE_URL is empty: set it to your PostgreSQL (postgresql://user@host/db), "
            "or run `pacsflow dev`, which starts an embedded PostgreSQL"
        )
    if command == "scp" and settings.scp_processes > 1:
        from ingress.scp import tls
        from pipeline import listeners
        from pipeline.dev.supervisor import run_replicas

        if settings.scp_tls_cert:
            tls.server_context(settings)  # a bad certificate is said once, here, not by each process
        # Bound here and handed to every process: the kernel refuses the ports to anyone else.
        handed = listeners.listen_all(settings.env, listeners.scp(settings))
        replicas = run_replicas("scp", settings.scp_processes, settings.env, "PACSFLOW_SCP_PROCESSES", handed)
        lifecycle.run(replicas, fast=False)
    elif command == "scp":
        from ingress.scp.server import serve as serve_scp

        lifecycle.run(serve_scp(settings))
    elif command == "web" and settings.http_processes > 1:
        from pipeline import listeners
        from pipeline.dev.supervisor import run_replicas

        handed = listeners.listen_all(settings.env, {listeners.INHERITED_FD: listeners.http(settings)})
        replicas = run_replicas(
            "web", settings.http_processes, settings.env, "PACSFLOW_HTTP_PROCESSES", handed
        )
        lifecycle.run(replicas, fast=False)
    elif command == "web":
        from egress.wado.app import serve as serve_web

        lifecycle.run(serve_web(settings))
    elif command == "worker":
        from pipeline.worker import run as run_worker

        run_worker(settings)
    elif command == "dev":
        from pipeline.dev.stack import run as run_dev

        lifecycle.run(run_dev(settings), fast=False)
    elif command == "topics":
        from pipeline.topics import ensure_topics

        async def create() -> None:
            created = await ensure_topics(settings)
            print("created:", ", ".join(created) or "none (all existed)")

        lifecycle.run(create())
    elif command == "migrate":
        from pipeline.stores.postgres import migrate

        async def apply() -> None:
            applied = await migrate(settings.database_url)
            print("applied: " + ", ".join(applied) if applied else "database schema is up to date")

        lifecycle.run(apply())
    elif command == "reconcile":
        from pipeline.reconcile import reconcile

        async def check() -> None:
            report = await reconcile(settings, args.tenant)
            print("\n".join(report.lines()))

        lifecycle.run(check())
    elif command == "status":
        from pipeline.status import status

        async def show() -> None:
            print("\n".join(await status(settings)))

        lifecycle.run(show())
    elif command == "viewer-config":
        from egress.viewer.config import fixed
        from egress.viewer.site import sign_in

        dicomweb = args.dicomweb or f"{settings.public_base}/dicomweb"
        print(fixed(dicomweb, args.router_basename, sign_in(settings)), end="")
    elif command == "nginx-config":
        from egress.proxy.nginx import Proxy, write

        proxy = Proxy(
            tuple(args.upstream),
            args.resolver,
            args.http_port,
            args.https_port,
            args.server_name,
            args.tls_cert,
            args.tls_key,
            args.user,
        )
        print(write(args.out, proxy, settings))
    elif command == "doris":
        _doris(args.doris_command, settings, args)
    elif command == "analytics":
        from analytics.sink import serve as serve_sink

        lifecycle.run(serve_sink(settings))
    elif command == "sql":
        from analytics.query import print_sql

        print_sql(settings, args.query, args.format)
    elif command == "report":
        from analytics.reports import print_report

        print_report(settings, args.name, args.format)
    elif command == "import":
        from ingress.importer.run import Options, run_import
        from pipeline.models import TenantId

        options = Options(
            paths=args.paths,
            tenant=TenantId(args.tenant) if args.tenant else settings.default_tenant,
            jobs=args.jobs,
            failures=args.failures,
            log_every=args.log_every,
        )
        raise SystemExit(run_import(settings, options))
    elif command == "settings":
        for name, setting in settings_module.SETTINGS:
            print(f"{setting.env}={getattr(settings, name)}")


def _doris(command: str, settings: Settings, args: argparse.Namespace) -> None:
    if command == "sql":
        from doris.schema import script

        print(script(args.brokers), end="")
    elif command == "apply":
        from doris.apply import run as apply

        apply(settings, dry_run=args.dry_run, only=args.only)
    elif command == "status":
        from doris.status import report

        print("\n".join(report(settings)))


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        settings = settings_module.load()
    except SettingsError as exc:
        print(f"pacsflow: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    log.configure(settings, args.command)
    try:
        _run(args.command, settings, args)
    except PacsflowError as exc:
        log.get("pacsflow").error("failed", command=args.command, error=str(exc))
        print(f"pacsflow {args.command}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
