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
from pipeline import lifecycle, listeners, log, topics
from pipeline.dev import broker, postgres
from pipeline.dev.supervisor import ChildSpec, Supervisor
from pipeline.reconcile import reconcile
from pipeline.settings import ENV_FILE, Settings
from pipeline.stores.postgres import migrate

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
    env["PACSFLOW_STORAGE_ROOT"] = str(settings.storage_root)
    specs: list[ChildSpec] = []
    effective = settings
    if not settings.kafka_bootstrap:
        port = settings.dev_broker_port or free_port()
        bootstrap = f"127.0.0.1:{port}"
        env["PACSFLOW_KAFKA_BOOTSTRAP"] = bootstrap
        # Tansu forms a consumer group only after a session timeout: keep it short unless set.
        env.setdefault("PACSFLOW_KAFKA_SESSION_TIMEOUT_S", "3")
        env.setdefault("PACSFLOW_KAFKA_HEARTBEAT_INTERVAL_S", "0.5")
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
    created_topics = lambda: topics.ensure_topics(effective)  # noqa: E731
    specs = [dataclasses.replace(s, after_ready=created_topics) if s.name == "broker" else s for s in specs]
    specs += [
        dataclasses.replace(_service("scp", env), listeners=dicom, before_start=lambda: _migrate(effective)),
        dataclasses.replace(_service("worker", env), after_ready=lambda: _reconcile_soon(effective)),
        dataclasses.replace(_service("web", env), listeners={listeners.INHERITED_FD: http}),
    ]
    if settings.analytics:
        specs.append(_service("analytics", env))
    return specs, effective


async def _migrate(settings: Settings) -> None:
    applied = await migrate(settings.database_url)
    _log.info("database_migrated", applied=applied)


_background: set[asyncio.Task[None]] = set()


async def _reconcile_soon(settings: Settings) -> None:
    """Bring the index up to every file on disk (an embedded broker forgets on restart), without
    holding up the start."""

    async def run() -> None:
        try:
            await reconcile(settings)
        except Exception as exc:  # a report, not a reason to stop the system
            _log.warning("reconcile_failed", error=f"{type(exc).__name__}: {exc}")

    task = asyncio.create_task(run())
    _background.add(task)
    task.add_done_callback(_background.discard)


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
