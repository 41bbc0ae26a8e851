"""The one settings object, loaded once from the environment (``PACSFLOW_*``).

Every setting is declared once in ``SETTINGS`` with its variable, default and meaning; the README
table and ``compose/env.example`` list the same variables (a test keeps them in step). ``load`` takes
a mapping so that tests pass their own; it checks every value and reports all the bad ones at once.
An optional ``PACSFLOW_ENV_FILE`` names a ``KEY=VALUE`` file (the format of ``compose/env.example``)
whose values apply where the environment sets none.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pipeline.errors import SettingsError
from pipeline.models.identifiers import InvalidIdentifier, TenantId, Uid

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII without backslash
_HOST_PORT = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_LOG_FORMATS = ("auto", "json", "console")


@dataclass(frozen=True)
class Settings:
    """Everything pacsflow can be told, validated."""

    data_dir: Path
    """Everything a one-machine install keeps: embedded database, outbox, storage root."""
    storage_root: Path
    """The ``${ROOT}`` of the storage layout: ``<root>/<tenant>/<study>/<series>/<sop>.dcm``."""
    node_id: str
    """This node's name in events and Doris rows (``worker_node_id``)."""
    default_tenant: TenantId
    """Tenant of an association whose called AE title is not mapped, and of ``/dicomweb``."""
    log_level: str
    log_format: str
    scp_host: str
    scp_port: int
    scp_ae_title: str
    scp_tenants: Mapping[str, TenantId]
    """Called AE title -> tenant."""
    scp_processes: int
    """SCP processes sharing the port; one process is bound by one core."""
    scp_max_associations: int
    scp_max_pdu: int
    """Largest PDU pacsflow receives, in bytes; 0 means no limit."""
    scp_acse_timeout_s: float
    scp_dimse_timeout_s: float
    scp_network_timeout_s: float
    scp_extra_sop_classes: tuple[Uid, ...]
    """Storage SOP classes accepted beyond the standard ones (e.g. a vendor's private class)."""
    scp_peers: tuple[ScpPeer, ...]
    """Known calling AE titles (and networks) per tenant; empty: any peer may associate."""
    scp_move_destinations: tuple[MoveDestination, ...]
    """Where C-MOVE sends: destination AE title (for one tenant, or all) -> host and port."""
    scp_plain: bool
    """Whether the plain (unencrypted) DICOM port listens; off needs TLS."""
    scp_tls_port: int
    scp_tls_cert: str
    """PEM certificate (chain) of the DICOM TLS port; empty: no TLS port."""
    scp_tls_key: str
    scp_tls_ca: str
    """PEM bundle of the CAs whose client certificates the TLS port requires; empty: none asked."""
    http_host: str
    http_port: int
    http_processes: int
    """Web processes sharing the HTTP port; one process is bound by one core."""
    public_url: str
    http_accel_redirect: str
    """nginx's internal location (``/_pacsflow/storage/``) over the storage root: current metadata
    files are answered with ``X-Accel-Redirect`` for nginx to send; empty: pacsflow sends them."""
    cors_origins: tuple[str, ...]
    """Origins whose pages may call the DICOMweb API; ``*`` for any."""
    http_max_url_bytes: int
    """Longest request line (method, URL, version) the web server reads."""
    http_max_header_bytes: int
    """Longest single request header the web server reads."""
    scp_metrics_port: int
    """Port of the SCP processes' ``/metrics``, ``/ready`` and ``/health`` (shared like the DICOM
    port); 0: none."""
    worker_metrics_port: int
    """Port of the worker's ``/metrics``, ``/ready`` and ``/health``; 0: none."""
    metrics_dir: Path
    """Where each process of a service writes its metrics for whichever answers a scrape to sum."""
    auth: str
    """``off`` or ``jwt``: bearer tokens from the OIDC issuer on every DICOMweb route."""
    oidc_issuer: str
    oidc_jwks_url: str
    """The issuer's keys; empty: ``jwks_uri`` from the issuer's discovery document."""
    oidc_audience: str
    oidc_algorithms: tuple[str, ...]
    """Signature algorithms accepted (asymmetric only); each key is used only with its own kind."""
    oidc_leeway_s: float
    oidc_jwks_refresh_s: float
    """Least seconds between two fetches of the issuer's keys on an unknown ``kid``."""
    oidc_client_id: str
    """The viewer's client id at the issuer (a public client: authorization code with PKCE)."""
    auth_scopes: Mapping[str, str]
    """Right (read, write, delete, admin) -> the scope that grants it."""
    auth_tenants_claim: str
    stow_max_part_bytes: int
    """Largest part one STOW-RS request may carry (413 beyond it)."""
    stow_max_request_bytes: int
    """Largest STOW-RS request body (413 beyond it); never held in memory, streamed to disk."""
    viewer_syntaxes: tuple[Uid, ...]
    """Transfer syntaxes the viewer (Cornerstone3D) decodes: an instance with pixel data in any other
    is converted by the conversion agent into ``convert_to``."""
    convert_to: Uid
    """The transfer syntax converted copies are written in."""
    viewer: str
    """``on`` (the OHIF ``make install`` put beside the environment), ``off``, or the absolute path
    of an OHIF build's folder, checked by the web server when it starts: the other services need
    not see it."""
    kafka_bootstrap: str
    kafka_partitions: int
    kafka_replication: int
    kafka_session_timeout_s: float | None
    """None: the client library's default, which a real Kafka cluster wants."""
    kafka_heartbeat_interval_s: float | None
    kafka_fetch_wait_s: float | None
    """Longest a consumer's fetch waits for records; None: the client's default (Faust: 1.5 s)."""
    kafka_request_timeout_s: float
    database_url: str
    redis_url: str
    redis_prefix: str
    """Start of every key pacsflow writes in Redis, so that several installs can share one."""
    metadata_window_s: float
    bulkdata_threshold: int
    """Binary values longer than this (as base64) are BulkDataURIs in metadata, not inline."""
    qido_max_limit: int
    """Most results one QIDO-RS answer holds, whatever ``limit`` asks; beyond it, pages."""
    cache_ttl_s: float
    """How long Redis keeps a QIDO-RS answer or a built metadata answer."""
    doris_url: str
    """``mysql://user:password@fe:9030/database`` of the Doris FE; empty: no Doris."""
    doris_kafka_brokers: str
    """The brokers as the Doris backends reach them, for the Routine Load jobs; empty: ``kafka_bootstrap``."""
    analytics: bool
    """Whether `pacsflow dev` runs the analytics sink (Parquet under ``data_dir/analytics``)."""
    analytics_roll_s: float
    """How long the sink gathers rows before it writes a file."""
    analytics_roll_rows: int
    """Most rows the sink gathers before it writes a file."""
    dev_broker_port: int
    """Port of the broker `pacsflow dev` embeds; 0 picks a free one."""
    dev_postgres_port: int
    """Port of the PostgreSQL `pacsflow dev` embeds; 0 picks a free one."""
    env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    """The mapping the settings were read from, to hand on to child processes."""

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def public_base(self) -> str:
        """Where clients reach pacsflow: what regenerated metadata's BulkDataURIs start with."""
        return self.public_url.rstrip("/") or f"http://127.0.0.1:{self.http_port}"


@dataclass(frozen=True)
class Setting:
    env: str
    default: str
    meaning: str
    parse: Callable[[str], Any]


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a whole number") from None
        if not lo <= value <= hi:
            raise ValueError(f"{value} is outside {lo}..{hi}")
        return value

    return parse


def _seconds(allow_empty: bool = False) -> Callable[[str], float | None]:
    def parse(raw: str) -> float | None:
        if raw == "" and allow_empty:
            return None
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a number of seconds") from None
        if not 0 < value <= 86400:
            raise ValueError(f"{value} seconds is outside (0, 86400]")
        return value

    return parse


def _whole_seconds(lo: int, hi: int) -> Callable[[str], float]:
    # Faust's windows step by whole seconds: a fractional length would make them overlap.
    whole = _int(lo, hi)

    def parse(raw: str) -> float:
        return float(whole(raw))

    return parse


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(f"{raw!r} is not one of {', '.join(options)}")
        return value

    return parse


def _origins(raw: str) -> tuple[str, ...]:
    values = tuple(v.strip().rstrip("/") for v in raw.split(",") if v.strip())
    if values == ("*",):
        return values
    bad = [v for v in values if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+", v)]
    if bad or not values:
        named = ", ".join(bad) or "nothing"
        raise ValueError(f"{named} is not `*` or a list of scheme://host[:port] origins")
    return values


def _matching(pattern: str, what: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip()
        if not re.fullmatch(pattern, value):
            raise ValueError(f"{raw!r} is not {what}")
        return value

    return parse


_redis_prefix = _matching(r"[A-Za-z0-9_.:\-]{1,64}", "1-64 letters, digits or `_.:-`")


def _ae_title(raw: str) -> str:
    value = raw.strip()
    if not _AE_TITLE.match(value):
        raise ValueError(f"{raw!r} is not an AE title (1-16 printable ASCII characters, no backslash)")
    return value


def _tenant(raw: str) -> TenantId:
    try:
        return TenantId(raw)
    except InvalidIdentifier as exc:
        raise ValueError(str(exc)) from None


def _tenant_map(raw: str) -> dict[str, TenantId]:
    mapping: dict[str, TenantId] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        ae, sep, tenant = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r} is not AE=tenant (e.g. CT1=hospital_a)")
        mapping[_ae_title(ae)] = _tenant(tenant.strip())
    return mapping


def _uid_list(raw: str) -> tuple[Uid, ...]:
    try:
        return tuple(Uid(part.strip()) for part in raw.split(",") if part.strip())
    except InvalidIdentifier as exc:
        raise ValueError(str(exc)) from None


# What Cornerstone3D's DICOM image loader decodes (packages/dicomImageLoader, decodeImageFrame):
# the uncompressed and deflated syntaxes, RLE, JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000
# and HTJ2K. Video syntaxes (MPEG, H.264, HEVC) are played as video, not decoded as frames.
CORNERSTONE_SYNTAXES = (
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
    "3.2.840.10008.1.2.4.96",
)
# Lossless targets whose encoders pydicom ships or the installed codecs provide.
CONVERT_TARGETS = (
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
)


def _convert_target(raw: str) -> Uid:
    if raw.strip() not in CONVERT_TARGETS:
        raise ValueError(f"{raw!r} is not one of {', '.join(CONVERT_TARGETS)}")
    return Uid(raw.strip())


def _bootstrap(raw: str) -> str:
    servers = [s.strip() for s in raw.split(",") if s.strip()]
    for server in servers:
        if not _HOST_PORT.match(server):
            raise ValueError(f"{server!r} is not host:port")
    return ",".join(servers)


def _url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip()
        if value and not value.startswith(tuple(f"{s}://" for s in schemes)):
            raise ValueError(f"{raw!r} does not start with {' or '.join(s + '://' for s in schemes)}")
        return value.rstrip("/") if value.startswith("http") else value

    return parse


def _issuer(raw: str) -> str:
    value = raw.strip()  # not rstrip("/"): PyJWT compares `iss` as written
    if value and not value.startswith(("https://", "http://")):
        raise ValueError(f"{raw!r} does not start with https:// or http://")
    return value


def _on_off(raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("on", "off"):
        raise ValueError(f"{raw!r} is neither on nor off")
    return value == "on"


def _seconds_between(lo: float, hi: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a number of seconds") from None
        if not lo <= value <= hi:
            raise ValueError(f"{raw!r} is not between {lo:g} and {hi:g} seconds")
        return value

    return parse


_positive_seconds = _seconds_between(0.05, 3600)


def _viewer(raw: str) -> str:
    value = raw.strip()
    if value.lower() in ("on", "off"):
        return value.lower()
    return str(Path(value).expanduser().absolute())


def _text(raw: str) -> str:
    return raw.strip()


def _location_prefix(raw: str) -> str:
    value = raw.strip()
    # Starting with "/_", it cannot shadow a route of pacsflow's (/dicomweb, /tenants, the viewer's).
    if value and not re.fullmatch(r"/_[A-Za-z0-9._~-]*/(?:[A-Za-z0-9._~-]+/)*", value):
        raise ValueError(
            f"{raw!r} is not a URL path that starts with /_ and ends with / (e.g. /_pacsflow/storage/)"
        )
    return value


def _node_id(raw: str) -> str:
    value = raw.strip() or socket.gethostname()
    if len(value) > 64:
        raise ValueError(f"{value!r} is longer than 64 characters")
    return value


@dataclass(frozen=True)
class ScpPeer:
    """A calling AE title allowed to associate for ``tenant``, from ``network`` when one is given."""

    ae_title: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    tenant: TenantId


def _peers(raw: str) -> tuple[ScpPeer, ...]:
    peers = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        left, sep, tenant = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r} is not CALLING_AE[@network]=tenant (e.g. CT1@10.1.0.0/16=hospital_a)")
        ae, at, network = left.partition("@")
        try:
            net = ipaddress.ip_network(network.strip(), strict=False) if at else None
        except ValueError:
            raise ValueError(
                f"{network!r} in {item!r} is not a network (10.1.0.0/16, 10.1.2.3, fd00::/8)"
            ) from None
        peers.append(ScpPeer(_ae_title(ae), net, _tenant(tenant.strip())))
    return tuple(peers)


@dataclass(frozen=True)
class MoveDestination:
    """A C-MOVE destination: the AE title a requestor names, and where pacsflow reaches it."""

    ae_title: str
    tenant: TenantId | None
    """The one tenant whose associations may move to it; None: every tenant's."""
    host: str
    port: int


_MOVE_EXAMPLE = "e.g. WS1=10.0.0.5:104,VIEWER@hospital_a=viewer.local:11112"


def _move_destinations(raw: str) -> tuple[MoveDestination, ...]:
    destinations: dict[tuple[str, TenantId | None], MoveDestination] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        # From the right: a host:port never holds '=', so an AE title may. The last '@' always
        # starts the tenant: an AE title holding '@' must be followed by '@tenant'.
        left, sep, address = item.rpartition("=")
        if not sep or not left.strip():
            raise ValueError(f"{item!r} is not DEST_AE[@tenant]=host:port ({_MOVE_EXAMPLE})")
        ae, at, tenant = left.rpartition("@") if "@" in left else (left, "", "")
        address = address.strip()
        if not _HOST_PORT.match(address):
            raise ValueError(f"{address!r} in {item!r} is not host:port ({_MOVE_EXAMPLE})")
        host, _, port = address.rpartition(":")
        if not 1 <= int(port) <= 65535:
            raise ValueError(f"port {port} in {item!r} is not between 1 and 65535")
        destination = MoveDestination(
            _ae_title(ae), _tenant(tenant.strip()) if at else None, host.strip("[]"), int(port)
        )
        key = (destination.ae_title, destination.tenant)
        if key in destinations:
            raise ValueError(f"{item!r}: {left.strip()} is listed twice")
        destinations[key] = destination
    return tuple(destinations.values())


def _path_or_empty(raw: str) -> str:
    value = raw.strip()
    return str(Path(value).expanduser().absolute()) if value else ""


# Asymmetric signatures only: HMAC would let anyone holding the issuer's public key sign, and
# `none` is no signature at all.
ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)


def _algorithms(raw: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in raw.split(",") if v.strip())
    bad = [v for v in values if v not in ASYMMETRIC_ALGORITHMS]
    if bad or not values:
        named = ", ".join(bad) or "nothing"
        raise ValueError(
            f"{named}: only asymmetric algorithms are accepted ({', '.join(ASYMMETRIC_ALGORITHMS)})"
        )
    return values


RIGHTS = ("read", "write", "delete", "admin")


def _scopes(raw: str) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        right, sep, scope = item.partition("=")
        right, scope = right.strip(), scope.strip()
        if not sep or right not in RIGHTS or not scope or " " in scope:
            raise ValueError(f"{item!r} is not right=scope with a right among {', '.join(RIGHTS)}")
        mapping[right] = scope
    missing = [r for r in RIGHTS if r not in mapping]
    if missing:
        raise ValueError(f"no scope given for {', '.join(missing)}")
    return mapping


_claim = _matching(r"[A-Za-z0-9_:/.\-]{1,128}", "a claim name")


_PORT = _int(0, 65535)
_SERVICE_PORT = _int(1, 65535)

# (field name, Setting). The order is the README's.
SETTINGS: tuple[tuple[str, Setting], ...] = (
    (
        "data_dir",
        Setting(
            "PACSFLOW_DATA_DIR",
            "./var",
            "everything a one-machine install keeps (embedded database, outbox, storage root)",
            Path,
        ),
    ),
    (
        "storage_root",
        Setting(
            "PACSFLOW_STORAGE_ROOT", "$PACSFLOW_DATA_DIR/storage", "the `${ROOT}` of the storage layout", Path
        ),
    ),
    (
        "node_id",
        Setting(
            "PACSFLOW_NODE_ID",
            "",
            "this node's name in events and Doris rows (`worker_node_id`); empty: the host name",
            _node_id,
        ),
    ),
    (
        "default_tenant",
        Setting(
            "PACSFLOW_DEFAULT_TENANT", "default", "tenant of unmapped AE titles and of `/dicomweb`", _tenant
        ),
    ),
    (
        "log_level",
        Setting("PACSFLOW_LOG_LEVEL", "info", "debug, info, warning or error", _choice(_LOG_LEVELS)),
    ),
    (
        "log_format",
        Setting(
            "PACSFLOW_LOG_FORMAT",
            "auto",
            "`json`, `console`, or `auto`: JSON unless stdout is a terminal",
            _choice(_LOG_FORMATS),
        ),
    ),
    ("scp_host", Setting("PACSFLOW_SCP_HOST", "0.0.0.0", "address the DICOM listener binds", _text)),
    ("scp_port", Setting("PACSFLOW_SCP_PORT", "11112", "DICOM listener port", _SERVICE_PORT)),
    ("scp_ae_title", Setting("PACSFLOW_SCP_AE_TITLE", "PACSFLOW", "pacsflow's AE title", _ae_title)),
    (
        "scp_tenants",
        Setting(
            "PACSFLOW_SCP_TENANTS",
            "",
            "called AE title -> tenant, e.g. `CT1=hospital_a,MR2=hospital_b`",
            _tenant_map,
        ),
    ),
    (
        "scp_processes",
        Setting(
            "PACSFLOW_SCP_PROCESSES",
            "2",
            "SCP processes sharing the DICOM port (one process uses at most one core)",
            _int(1, 64),
        ),
    ),
    (
        "scp_max_associations",
        Setting(
            "PACSFLOW_SCP_MAX_ASSOCIATIONS",
            "32",
            "concurrent associations per SCP process; more are rejected (local limit exceeded)",
            _int(1, 1000),
        ),
    ),
    (
        "scp_max_pdu",
        Setting(
            "PACSFLOW_SCP_MAX_PDU",
            "262144",
            "largest PDU pacsflow receives, bytes (0: no limit)",
            _int(0, 2**32 - 1),
        ),
    ),
    (
        "scp_acse_timeout_s",
        Setting("PACSFLOW_SCP_ACSE_TIMEOUT_S", "30", "seconds to wait for association messages", _seconds()),
    ),
    (
        "scp_dimse_timeout_s",
        Setting("PACSFLOW_SCP_DIMSE_TIMEOUT_S", "60", "seconds to wait for DIMSE messages", _seconds()),
    ),
    (
        "scp_network_timeout_s",
        Setting("PACSFLOW_SCP_NETWORK_TIMEOUT_S", "60", "seconds an idle connection is kept", _seconds()),
    ),
    (
        "scp_extra_sop_classes",
        Setting(
            "PACSFLOW_SCP_EXTRA_SOP_CLASSES",
            "",
            "comma-separated storage SOP class UIDs accepted beyond the standard ones",
            _uid_list,
        ),
    ),
    (
        "scp_peers",
        Setting(
            "PACSFLOW_SCP_PEERS",
            "",
            "known peers, `CALLING_AE[@network]=tenant,...` "
            "(e.g. `CT1=hospital_a,MR2@10.2.0.0/16=hospital_b`): "
            "when set, only they may associate (C-ECHO too), each for its tenant, and only to an AE title "
            "pacsflow answers to; empty: any peer",
            _peers,
        ),
    ),
    (
        "scp_move_destinations",
        Setting(
            "PACSFLOW_SCP_MOVE_DESTINATIONS",
            "",
            "C-MOVE destinations, `DEST_AE[@tenant]=host:port,...` "
            "(e.g. `WS1=10.0.0.5:104,VIEWER@hospital_a=viewer.local:11112`): an entry without `@tenant` "
            "is open to every tenant, one with it only to that tenant's associations; any other "
            "destination is refused (0xA801)",
            _move_destinations,
        ),
    ),
    (
        "scp_plain",
        Setting(
            "PACSFLOW_SCP_PLAIN",
            "on",
            "`on`: the plain DICOM port listens; `off`: DICOM over TLS only (needs `PACSFLOW_SCP_TLS_CERT`)",
            _on_off,
        ),
    ),
    (
        "scp_tls_port",
        Setting(
            "PACSFLOW_SCP_TLS_PORT",
            "2762",
            "DICOM over TLS port (2762 is DICOM's), listening when `PACSFLOW_SCP_TLS_CERT` is set",
            _SERVICE_PORT,
        ),
    ),
    (
        "scp_tls_cert",
        Setting(
            "PACSFLOW_SCP_TLS_CERT",
            "",
            "PEM certificate (with its chain) of the DICOM TLS port; empty: no TLS port",
            _path_or_empty,
        ),
    ),
    (
        "scp_tls_key",
        Setting("PACSFLOW_SCP_TLS_KEY", "", "PEM private key of `PACSFLOW_SCP_TLS_CERT`", _path_or_empty),
    ),
    (
        "scp_tls_ca",
        Setting(
            "PACSFLOW_SCP_TLS_CA",
            "",
            "PEM CA bundle: when set, the TLS port requires a client certificate signed by one of them",
            _path_or_empty,
        ),
    ),
    ("http_host", Setting("PACSFLOW_HTTP_HOST", "0.0.0.0", "address the HTTP server binds", _text)),
    (
        "http_port",
        Setting(
            "PACSFLOW_HTTP_PORT",
            "8080",
            "DICOMweb at `/dicomweb`, other tenants at `/tenants/<tenant>/dicomweb`",
            _SERVICE_PORT,
        ),
    ),
    (
        "http_processes",
        Setting(
            "PACSFLOW_HTTP_PROCESSES",
            "1",
            "web processes sharing the HTTP port (one process uses at most one core)",
            _int(1, 64),
        ),
    ),
    (
        "public_url",
        Setting(
            "PACSFLOW_PUBLIC_URL",
            "",
            "external base URL for BulkDataURIs; else from `Forwarded`/`X-Forwarded-*`",
            _url(("http", "https")),
        ),
    ),
    (
        "http_accel_redirect",
        Setting(
            "PACSFLOW_HTTP_ACCEL_REDIRECT",
            "",
            "behind nginx (`pacsflow nginx-config`): its internal location over the storage root "
            "(`/_pacsflow/storage/`; it starts with `/_`), from which nginx sends current metadata files; "
            "empty: pacsflow sends them",
            _location_prefix,
        ),
    ),
    (
        "cors_origins",
        Setting(
            "PACSFLOW_CORS_ORIGINS",
            "*",
            "origins (`https://viewer.example.org,...`) whose pages may call DICOMweb; `*`: any",
            _origins,
        ),
    ),
    (
        "http_max_url_bytes",
        Setting(
            "PACSFLOW_HTTP_MAX_URL_BYTES",
            "8190",
            "longest HTTP request line (method, URL, version) read; longer: 400",
            _int(256, 1 << 20),
        ),
    ),
    (
        "http_max_header_bytes",
        Setting(
            "PACSFLOW_HTTP_MAX_HEADER_BYTES",
            "16380",
            "longest single HTTP request header read (a bearer token included); longer: 400",
            _int(256, 1 << 20),
        ),
    ),
    (
        "scp_metrics_port",
        Setting(
            "PACSFLOW_SCP_METRICS_PORT",
            "9101",
            "port of the SCP's `/metrics`, `/ready` and `/health`, shared by its processes (0: none)",
            _PORT,
        ),
    ),
    (
        "worker_metrics_port",
        Setting(
            "PACSFLOW_WORKER_METRICS_PORT",
            "9102",
            "port of the worker's `/metrics`, `/ready` and `/health` (0: none)",
            _PORT,
        ),
    ),
    (
        "metrics_dir",
        Setting(
            "PACSFLOW_METRICS_DIR",
            "$PACSFLOW_DATA_DIR/metrics",
            "where each process writes its metrics, a folder per service; local to one machine "
            "(or container): files are named by process id",
            Path,
        ),
    ),
    (
        "auth",
        Setting(
            "PACSFLOW_AUTH",
            "off",
            "`jwt`: every DICOMweb route (and the analytics reports) needs a bearer token from "
            "`PACSFLOW_OIDC_ISSUER`; "
            "`off`: anyone who reaches the port reads, stores and deletes",
            _choice(("off", "jwt")),
        ),
    ),
    (
        "oidc_issuer",
        Setting(
            "PACSFLOW_OIDC_ISSUER",
            "",
            "the OpenID Connect issuer, exactly as its tokens' `iss` writes it (e.g. "
            "`https://login.example.org/realms/pacs`; Auth0's ends in `/`)",
            _issuer,
        ),
    ),
    (
        "oidc_jwks_url",
        Setting(
            "PACSFLOW_OIDC_JWKS_URL",
            "",
            "the issuer's signing keys (JWKS); empty: `jwks_uri` from "
            "`<issuer>/.well-known/openid-configuration`",
            _url(("http", "https")),
        ),
    ),
    (
        "oidc_audience",
        Setting("PACSFLOW_OIDC_AUDIENCE", "pacsflow", "the `aud` every token must name", _text),
    ),
    (
        "oidc_algorithms",
        Setting(
            "PACSFLOW_OIDC_ALGORITHMS",
            ",".join(ASYMMETRIC_ALGORITHMS),
            "signature algorithms accepted, asymmetric only; a key is used only with algorithms of its kind",
            _algorithms,
        ),
    ),
    (
        "oidc_leeway_s",
        Setting(
            "PACSFLOW_OIDC_LEEWAY_S",
            "30",
            "clock skew allowed on `exp` and `nbf`, seconds (0-300)",
            _seconds_between(0, 300),
        ),
    ),
    (
        "oidc_jwks_refresh_s",
        Setting(
            "PACSFLOW_OIDC_JWKS_REFRESH_S",
            "60",
            "least seconds between two fetches of the issuer's keys when a token names an unknown key "
            "(keys are fetched again at least hourly)",
            _positive_seconds,
        ),
    ),
    (
        "oidc_client_id",
        Setting(
            "PACSFLOW_OIDC_CLIENT_ID",
            "pacsflow-viewer",
            "the viewer's client id at the issuer: a public client, authorization code with PKCE, "
            "redirect URI `<pacsflow>/callback`",
            _text,
        ),
    ),
    (
        "auth_scopes",
        Setting(
            "PACSFLOW_AUTH_SCOPES",
            "read=dicomweb.read,write=dicomweb.write,delete=dicomweb.delete,admin=dicomweb.admin",
            "the scope granting each right: read (QIDO, WADO, metadata, frames, rendered), write (STOW-RS), "
            "delete (DELETE), admin (every right, every tenant, `/analytics`)",
            _scopes,
        ),
    ),
    (
        "auth_tenants_claim",
        Setting(
            "PACSFLOW_AUTH_TENANTS_CLAIM",
            "tenants",
            "the claim naming the tenants a token may use (a string or a list); a token without it may "
            "use the default tenant only",
            _claim,
        ),
    ),
    (
        "stow_max_part_bytes",
        Setting(
            "PACSFLOW_STOW_MAX_PART_BYTES",
            str(2 << 30),
            "largest instance (part) one STOW-RS request may carry, in bytes (413 beyond it)",
            _int(1024, 1 << 50),
        ),
    ),
    (
        "stow_max_request_bytes",
        Setting(
            "PACSFLOW_STOW_MAX_REQUEST_BYTES",
            str(10 << 30),
            "largest STOW-RS request body, in bytes (413 beyond it); streamed to disk, never held in memory",
            _int(1024, 1 << 50),
        ),
    ),
    (
        "viewer_syntaxes",
        Setting(
            "PACSFLOW_VIEWER_SYNTAXES",
            ",".join(CORNERSTONE_SYNTAXES),
            "transfer syntaxes the viewer decodes (default: Cornerstone3D's list); an instance with pixel "
            "data in any other is converted to `PACSFLOW_CONVERT_TO`",
            _uid_list,
        ),
    ),
    (
        "convert_to",
        Setting(
            "PACSFLOW_CONVERT_TO",
            "1.2.840.10008.1.2.1",
            "transfer syntax of converted copies (Explicit VR Little Endian; lossless targets only)",
            _convert_target,
        ),
    ),
    (
        "viewer",
        Setting(
            "PACSFLOW_VIEWER",
            "on",
            "OHIF at `/`: `on` (the release `make install` fetched), `off`, or the path of your own "
            "OHIF build's `dist` folder",
            _viewer,
        ),
    ),
    (
        "doris_url",
        Setting(
            "PACSFLOW_DORIS_URL",
            "",
            "the Doris FE's MySQL port and database for `pacsflow doris apply`/`status` "
            "(`mysql://user:password@fe:9030/pacsflow`)",
            _url(("mysql",)),
        ),
    ),
    (
        "doris_kafka_brokers",
        Setting(
            "PACSFLOW_DORIS_KAFKA_BROKERS",
            "",
            "Kafka brokers as the Doris backends reach them (`kafka:9092,...`), for the Routine Load jobs; "
            "empty: `PACSFLOW_KAFKA_BOOTSTRAP`",
            _bootstrap,
        ),
    ),
    (
        "analytics",
        Setting(
            "PACSFLOW_ANALYTICS",
            "on",
            "`on`: `pacsflow dev` runs the analytics sink, the Doris tables as Parquet under "
            "`$PACSFLOW_DATA_DIR/analytics` for `pacsflow sql` and `pacsflow report`; `off`: it does not",
            _on_off,
        ),
    ),
    (
        "analytics_roll_s",
        Setting(
            "PACSFLOW_ANALYTICS_ROLL_S",
            "2",
            "seconds the analytics sink gathers rows before it writes (and fsyncs) a Parquet file",
            _positive_seconds,
        ),
    ),
    (
        "analytics_roll_rows",
        Setting(
            "PACSFLOW_ANALYTICS_ROLL_ROWS",
            "50000",
            "most rows the analytics sink gathers before it writes a Parquet file",
            _int(1, 10_000_000),
        ),
    ),
    (
        "kafka_bootstrap",
        Setting(
            "PACSFLOW_KAFKA_BOOTSTRAP",
            "",
            "Kafka bootstrap servers (`host:port,...`); empty: `pacsflow dev` starts an embedded broker",
            _bootstrap,
        ),
    ),
    (
        "kafka_partitions",
        Setting("PACSFLOW_KAFKA_PARTITIONS", "4", "partitions of each topic pacsflow creates", _int(1, 1024)),
    ),
    (
        "kafka_replication",
        Setting(
            "PACSFLOW_KAFKA_REPLICATION",
            "1",
            "replication factor of each topic pacsflow creates",
            _int(1, 16),
        ),
    ),
    (
        "kafka_session_timeout_s",
        Setting(
            "PACSFLOW_KAFKA_SESSION_TIMEOUT_S",
            "",
            "consumer group session timeout; empty: the client's default (`pacsflow dev` with its "
            "embedded broker: 3)",
            _seconds(allow_empty=True),
        ),
    ),
    (
        "kafka_heartbeat_interval_s",
        Setting(
            "PACSFLOW_KAFKA_HEARTBEAT_INTERVAL_S",
            "",
            "consumer heartbeat interval; empty: the client's default (embedded broker: 0.5)",
            _seconds(allow_empty=True),
        ),
    ),
    (
        "kafka_fetch_wait_s",
        Setting(
            "PACSFLOW_KAFKA_FETCH_WAIT_S",
            "",
            "longest the workers' fetch waits for new records; empty: the client's default (Faust: 1.5, "
            "which a real Kafka cluster answers as soon as records arrive; `pacsflow dev` with its "
            "embedded broker, which waits the whole time: 0.05)",
            _seconds(allow_empty=True),
        ),
    ),
    (
        "kafka_request_timeout_s",
        Setting(
            "PACSFLOW_KAFKA_REQUEST_TIMEOUT_S",
            "15",
            "seconds before a Kafka request is given up and retried",
            _seconds(),
        ),
    ),
    (
        "database_url",
        Setting(
            "PACSFLOW_DATABASE_URL",
            "",
            "PostgreSQL DSN; empty: `pacsflow dev` starts an embedded PostgreSQL",
            _url(("postgres", "postgresql")),
        ),
    ),
    (
        "redis_url",
        Setting("PACSFLOW_REDIS_URL", "", "Redis URL; empty: no cache", _url(("redis", "rediss", "unix"))),
    ),
    (
        "redis_prefix",
        Setting(
            "PACSFLOW_REDIS_PREFIX",
            "pacsflow:",
            "start of every Redis key pacsflow writes (several installs can share one Redis)",
            _redis_prefix,
        ),
    ),
    (
        "metadata_window_s",
        Setting(
            "PACSFLOW_METADATA_WINDOW_S",
            "2",
            "tumbling window length for metadata regeneration, whole seconds (1-3600)",
            _whole_seconds(1, 3600),
        ),
    ),
    (
        "bulkdata_threshold",
        Setting(
            "PACSFLOW_BULKDATA_THRESHOLD",
            "1024",
            "binary values longer than this many bytes (base64) are BulkDataURIs in metadata; "
            "pixel data always is",
            _int(16, 1 << 30),
        ),
    ),
    (
        "qido_max_limit",
        Setting(
            "PACSFLOW_QIDO_MAX_LIMIT",
            "1000",
            "most results one QIDO-RS answer holds (a larger `limit` is cut, with a Warning header)",
            _int(1, 100_000),
        ),
    ),
    (
        "cache_ttl_s",
        Setting(
            "PACSFLOW_CACHE_TTL_S",
            "10",
            "seconds Redis keeps a QIDO-RS answer or built metadata (whole seconds, 1-3600)",
            _whole_seconds(1, 3600),
        ),
    ),
    (
        "dev_broker_port",
        Setting(
            "PACSFLOW_DEV_BROKER_PORT",
            "0",
            "port of the broker `pacsflow dev` embeds (0: any free port)",
            _PORT,
        ),
    ),
    (
        "dev_postgres_port",
        Setting(
            "PACSFLOW_DEV_POSTGRES_PORT",
            "0",
            "port of the PostgreSQL `pacsflow dev` embeds (0: any free port)",
            _PORT,
        ),
    ),
)

ENV_FILE = "PACSFLOW_ENV_FILE"


def read_env_file(path: Path) -> dict[str, str]:
    """Read ``KEY=VALUE`` lines (``#`` comments, optional quotes), as in ``compose/env.example``."""
    values: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"{ENV_FILE}={path}: cannot be read ({exc.strerror}); fix the path") from exc
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise SettingsError(f"{path}:{number}: {line!r} is not KEY=VALUE")
        values[key.strip()] = value.strip().strip("'\"")
    return values


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Read and check every setting; raise one SettingsError naming each bad value and its fix."""
    source = dict(os.environ if env is None else env)
    if source.get(ENV_FILE):
        source = {**read_env_file(Path(source[ENV_FILE])), **source}
    known = {setting.env for _, setting in SETTINGS} | {ENV_FILE}
    problems = [
        f"{name} is not a pacsflow setting (known: see README, 'Settings')"
        for name in sorted(source)
        if name.startswith("PACSFLOW_") and name not in known
    ]
    values: dict[str, Any] = {}
    for name, setting in SETTINGS:
        raw = source.get(setting.env, "")
        if raw == "" and name in ("storage_root", "metrics_dir"):
            values[name] = None  # derived below, from data_dir
            continue
        if raw == "":
            raw = setting.default
        try:
            values[name] = setting.parse(raw)
        except ValueError as exc:
            problems.append(f"{setting.env}={raw!r}: {exc}. Expected: {setting.meaning}")
    problems.extend(_inconsistent(values) if not problems else [])
    if problems:
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems))
    data_dir = Path(values["data_dir"]).expanduser().absolute()
    values["data_dir"] = data_dir
    root = values["storage_root"]
    values["storage_root"] = (Path(root).expanduser() if root else data_dir / "storage").absolute()
    metrics = values["metrics_dir"]
    values["metrics_dir"] = (Path(metrics).expanduser() if metrics else data_dir / "metrics").absolute()
    values["env"] = source
    return Settings(**values)


def _inconsistent(values: Mapping[str, Any]) -> list[str]:
    """Settings that are each valid but not together."""
    problems = []
    if bool(values["scp_tls_cert"]) != bool(values["scp_tls_key"]):
        problems.append("PACSFLOW_SCP_TLS_CERT and PACSFLOW_SCP_TLS_KEY go together: set both, or neither")
    if values["scp_tls_ca"] and not values["scp_tls_cert"]:
        problems.append(
            "PACSFLOW_SCP_TLS_CA asks for client certificates on the TLS port: set PACSFLOW_SCP_TLS_CERT too"
        )
    if not values["scp_plain"] and not values["scp_tls_cert"]:
        problems.append(
            "PACSFLOW_SCP_PLAIN=off leaves no DICOM port: set PACSFLOW_SCP_TLS_CERT and _KEY, or leave it on"
        )
    if values["scp_tls_cert"]:
        clashes = {"PACSFLOW_SCP_PORT": values["scp_port"], "PACSFLOW_HTTP_PORT": values["http_port"]}
        for name, port in clashes.items():
            if port == values["scp_tls_port"] and (name != "PACSFLOW_SCP_PORT" or values["scp_plain"]):
                problems.append(f"PACSFLOW_SCP_TLS_PORT and {name} are both {port}: choose two ports")
    fetch_wait, request_timeout = values["kafka_fetch_wait_s"], values["kafka_request_timeout_s"]
    if fetch_wait is not None and not 0.001 <= fetch_wait < max(request_timeout, 10.0):
        problems.append(
            f"PACSFLOW_KAFKA_FETCH_WAIT_S={fetch_wait:g} must be at least 0.001 and shorter than the request "
            f"timeout ({max(request_timeout, 10.0):g} s), or every idle fetch times out: choose e.g. 0.05"
        )
    reachable = {values["default_tenant"], *values["scp_tenants"].values()}
    for peer in values["scp_peers"]:
        if peer.tenant not in reachable:
            problems.append(
                f"PACSFLOW_SCP_PEERS: {peer.ae_title} may store for tenant {peer.tenant!r}, which no "
                "called AE title reaches: map one to it in PACSFLOW_SCP_TENANTS (e.g. CT1=tenant)"
            )
    if values["auth"] == "jwt" and not values["oidc_issuer"]:
        problems.append("PACSFLOW_AUTH=jwt needs PACSFLOW_OIDC_ISSUER (the `iss` tokens must carry)")
    return problems


def field_names() -> list[str]:
    return [f.name for f in fields(Settings) if f.name != "env"]
