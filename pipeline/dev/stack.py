"""What `pacsflow dev` runs, in order: broker, PostgreSQL, SCP, worker, web, analytics sink."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import socket
import sys
from collections.abc import Mapping

from ingress.scp import tls
from pipeline import lifecycle, listeners, log
from pipeline.dev import broker, postgres
from pipeline.dev.supervisor import ChildSpec, Supervisor, run_to_end
from pipeline.settings import ENV_FILE, Settings

_log = log.get(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _service(name: str, env: Mapping[str, str]) -> ChildSpec:
    return ChildSpec(name, [sys.executable, "-m", "pipeline", name], env)


def plan(
    settings: Settings, dicom: Mapping[str, socket.socket], http: socket.socket
) -> tuple[list[ChildSpec], Settings]:
    """The children to start, the SCP serving on the ``dicom`` listeners (by the variable that hands
    each down) and web on the ``http`` one, and the settings they will see (embedded broker and
    database filled in)."""
    env = {k: v for k, v in settings.env.items() if k != ENV_FILE}
    env["PACSFLOW_DATA_DIR"] = str(settings.data_dir)
    # glibc gives each thread that allocates its own arena (up to 8 a core), and each keeps what
    # its thread freed: the SCP's association threads would hold a dataset's worth of memory each.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    env["PACSFLOW_STORAGE_ROOT"] = str(settings.storage_root)
    specs: list[ChildSpec] = []
    effective = settings
    if not settings.kafka_bootstrap:
        port = settings.dev_broker_port or free_port()
        bootstrap = f"127.0.0.1:{port}"
        env["PACSFLOW_KAFKA_BOOTSTRAP"] = bootstrap
        # Tansu forms a consumer group only after a session timeout: keep it short unless set.
        # Tansu holds every fetch for the whole wait, even with records ready: a short wait is
        # what keeps ingest -> visible under half a second. Empty means unset, as in the settings.
        embedded = {
            "PACSFLOW_KAFKA_SESSION_TIMEOUT_S": "3",
            "PACSFLOW_KAFKA_HEARTBEAT_INTERVAL_S": "0.5",
            "PACSFLOW_KAFKA_FETCH_WAIT_S": "0.05",
        }
        env.update({name: value for name, value in embedded.items() if not env.get(name)})
        effective = dataclasses.replace(effective, kafka_bootstrap=bootstrap)
        specs.append(
            ChildSpec(
                "broker",
                broker.argv(port),
                {**env, "RUST_LOG": "warn"},
                probe=lambda: broker.answers(bootstrap),
                stop_signal=signal.SIGTERM,
                stop_timeout_s=5,
            )
        )
    if not settings.database_url:
        port = settings.dev_postgres_port or free_port()
        pgdata = settings.data_dir / "postgres"
        user = postgres.system_user()
        postgres.initialise(pgdata, user)
        env["PACSFLOW_DATABASE_URL"] = postgres.dsn(port)
        effective = dataclasses.replace(effective, database_url=postgres.dsn(port))
        specs.append(
            ChildSpec(
                "postgres",
                postgres.argv(pgdata, port),
                env,
                probe=lambda: postgres.answers(port),
                user=user,
                stop_signal=signal.SIGINT,  # SIGINT: PostgreSQL's fast shutdown
            )
        )
    # Topics exist before anything publishes. With an external Kafka, and after a broker restart,
    # the outbox creates them at its (re)connection.
    created_topics = lambda: _one_shot("topics", env)  # noqa: E731
    specs = [dataclasses.replace(s, after_ready=created_topics) if s.name == "broker" else s for s in specs]
    # Each SCP and web process is a child of this supervisor, told to be one: a `pacsflow scp` that
    # ran its own replicas would add a process that only supervises.
    migrated: list[bool] = []

    async def migrate_once() -> None:  # not again at each restart of the first SCP process
        if not migrated:
            await _one_shot("migrate", env)
            migrated.append(True)

    scp_env = {**env, "PACSFLOW_SCP_PROCESSES": "1"}
    web_env = {**env, "PACSFLOW_HTTP_PROCESSES": "1"}
    specs += [
        dataclasses.replace(
            _service("scp", scp_env),
            name=_replica("scp", n, settings.scp_processes),
            listeners=dicom,
            before_start=migrate_once if n == 0 else None,
        )
        for n in range(settings.scp_processes)
    ]
    specs.append(dataclasses.replace(_service("worker", env), after_ready=lambda: _reconcile_soon(env)))
    specs += [
        dataclasses.replace(
            _service("web", web_env),
            name=_replica("web", n, settings.http_processes),
            listeners={listeners.INHERITED_FD: http},
        )
        for n in range(settings.http_processes)
    ]
    if settings.analytics:
        specs.append(_service("analytics", env))
    return specs, effective


def _replica(command: str, n: int, count: int) -> str:
    return command if count == 1 else f"{command}-{n}"


async def _one_shot(command: str, env: Mapping[str, str]) -> None:
    await run_to_end([sys.executable, "-m", "pipeline", command], env)
    _log.info("one_shot_done", command=command)


_background: set[asyncio.Task[None]] = set()


async def _reconcile_soon(env: Mapping[str, str]) -> None:
    """Bring the index up to every file on disk (an embedded broker forgets on restart), without
    holding up the start."""

    async def run() -> None:
        try:
            await _one_shot("reconcile", env)
        except Exception as exc:  # a report, not a reason to stop the system
            _log.warning("reconcile_failed", error=f"{type(exc).__name__}: {exc}")

    task = asyncio.create_task(run())
    _background.add(task)
    task.add_done_callback(_background.discard)


def _metrics_ports(settings: Settings) -> Settings:
    """Unset, the metrics listeners take free ports rather than the defaults (9101, 9102): several
    `pacsflow dev` may run on one machine (the tests start them side by side). The banner names them."""
    env = dict(settings.env)
    for variable in ("PACSFLOW_SCP_METRICS_PORT", "PACSFLOW_WORKER_METRICS_PORT"):
        if not env.get(variable):
            env[variable] = str(free_port())
    return dataclasses.replace(
        settings,
        scp_metrics_port=int(env["PACSFLOW_SCP_METRICS_PORT"]),
        worker_metrics_port=int(env["PACSFLOW_WORKER_METRICS_PORT"]),
        env=env,
    )


def _metrics(settings: Settings) -> list[str]:
    scp, worker = settings.scp_metrics_port, settings.worker_metrics_port
    return [
        f"http://127.0.0.1:{settings.http_port}/metrics (web)",
        *([f"http://127.0.0.1:{scp}/metrics (SCP)"] if scp else []),
        *([f"http://127.0.0.1:{worker}/metrics (worker)"] if worker else []),
    ]


def banner(settings: Settings, embedded_broker: bool, embedded_db: bool) -> str:
    base = f"http://127.0.0.1:{settings.http_port}"
    broker_note = " (embedded Tansu, memory only)" if embedded_broker else ""
    db_note = " (embedded)" if embedded_db else ""
    analytics = settings.data_dir / "analytics"
    ae = f"AE title {settings.scp_ae_title}"
    known_peers = f", {len(settings.scp_peers)} known peers only" if settings.scp_peers else ""
    client_certificates = ", client certificates required" if settings.scp_tls_ca else ""
    return "\n".join(
        [
            "",
            "pacsflow is running",
            *(
                [f"  DICOM (C-STORE, C-ECHO)  127.0.0.1:{settings.scp_port}  {ae}{known_peers}"]
                if settings.scp_plain
                else []
            ),
            *(
                [
                    f"  DICOM over TLS           127.0.0.1:{settings.scp_tls_port}  "
                    f"{ae}{known_peers}{client_certificates}"
                ]
                if settings.scp_tls_cert
                else []
            ),
            f"  DICOMweb                 {base}/dicomweb",
            *([f"  viewer (OHIF)            {base}/"] if settings.viewer != "off" else []),
            f"  health                   {base}/health",
            f"  metrics                  {', '.join(_metrics(settings))}",
            f"  storage root             {settings.storage_root}",
            f"  Kafka                    {settings.kafka_bootstrap}{broker_note}",
            f"  PostgreSQL               {settings.database_url}{db_note}",
            *(
                [f"  analytics (Parquet)      {analytics}  (pacsflow sql, report)"]
                if settings.analytics
                else []
            ),
            "  stop                     Ctrl-C (or SIGTERM to this process)",
            *(
                [
                    f"  WARNING: PACSFLOW_AUTH=off: anyone who reaches port {settings.http_port} reads, "
                    "stores and deletes (see README, 'Security')"
                ]
                if settings.auth == "off"
                else []
            ),
            "",
        ]
    )


async def run(settings: Settings) -> None:
    stop = lifecycle.stop_on_signals()
    if settings.scp_tls_cert:
        tls.server_context(settings)  # a bad certificate is said here, before anything starts
    # The ports first, held here for the whole run (restarted children get them again): a second
    # install started on them is refused before anything starts, and none takes them over while a
    # child restarts.
    settings = _metrics_ports(settings)
    with contextlib.ExitStack() as held:
        dicom = {
            variable: held.enter_context(listeners.bind(endpoint))
            for variable, endpoint in listeners.scp(settings).items()
        }
        http = held.enter_context(listeners.bind(listeners.http(settings)))
        specs, effective = plan(settings, dicom, http)

        def ready() -> None:
            print(banner(effective, not settings.kafka_bootstrap, not settings.database_url), flush=True)
            _log.info("dev_ready", children=[s.name for s in specs])

        await Supervisor(specs).run(stop, ready)
    _log.info("dev_stopped")
