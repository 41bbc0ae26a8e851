"""The Doris FE's MySQL port, as ``PACSFLOW_DORIS_URL`` names it: parsing, connecting, errors.

Every failure here is a ``DorisError`` whose message names the server and the setting to fix.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import pymysql
import pymysql.connections
import pymysql.cursors
import pymysql.err

from pipeline.errors import PacsflowError

DEFAULT_PORT = 9030
"""The FE's MySQL protocol port (``query_port`` in fe.conf)."""
_DATABASE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_EXAMPLE = "mysql://user:password@doris-fe:9030/pacsflow"
# MySQL client error numbers: the server refused the user, or could not be reached at all.
_ACCESS_DENIED = 1045
_UNKNOWN_DATABASE = 1049
_CANNOT_CONNECT = 2003
_LOST = (2006, 2013)


class DorisError(PacsflowError):
    """Doris could not be reached, or refused or failed a statement."""


@dataclasses.dataclass(frozen=True)
class Target:
    host: str
    port: int
    user: str
    password: str = dataclasses.field(repr=False)
    database: str

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def parse_url(url: str) -> Target:
    """``mysql://user[:password]@host[:port]/database``; the password may be percent-encoded."""
    if not url:
        raise DorisError(f"PACSFLOW_DORIS_URL is empty: set it to the Doris FE's MySQL port, e.g. {_EXAMPLE}")
    parts = urlsplit(url)
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise DorisError(f"PACSFLOW_DORIS_URL has a bad port: use {_EXAMPLE}") from None
    if parts.scheme != "mysql" or not parts.hostname:
        raise DorisError(
            f"PACSFLOW_DORIS_URL is not mysql://user:password@host:port/database, e.g. {_EXAMPLE}"
        )
    database = parts.path.lstrip("/")
    if not _DATABASE.match(database):
        raise DorisError(
            f"PACSFLOW_DORIS_URL names {'no database' if not database else f'the database {database!r}'}: "
            f"end it with /<database> (a letter, then letters, digits or _), e.g. {_EXAMPLE}"
        )
    return Target(
        host=parts.hostname,
        port=port,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
        database=database,
    )


def connect(target: Target, *, database: bool = False) -> pymysql.connections.Connection[Any]:
    """A connection with autocommit, with or without ``target.database`` selected."""
    try:
        return pymysql.connect(
            host=target.host,
            port=target.port,
            user=target.user,
            password=target.password,
            database=target.database if database else None,
            connect_timeout=10,
            # A CREATE TABLE waits for Doris to place its tablets on the backends.
            read_timeout=120,
            write_timeout=30,
            autocommit=True,
            charset="utf8mb4",
        )
    except pymysql.err.OperationalError as exc:
        code, message = error_parts(exc)
        if code == _ACCESS_DENIED:
            raise DorisError(
                f"the Doris FE at {target.where} refused user {target.user!r} ({message}): "
                "fix the user or password in PACSFLOW_DORIS_URL"
            ) from None
        if code == _UNKNOWN_DATABASE:
            raise DorisError(
                f"the Doris FE at {target.where} has no database {target.database!r}: "
                "`pacsflow doris apply` creates it, or fix the database in PACSFLOW_DORIS_URL"
            ) from None
        raise DorisError(
            f"cannot reach the Doris FE at {target.where} ({message}): check the host and port in "
            f"PACSFLOW_DORIS_URL (the FE's MySQL port, {DEFAULT_PORT} by default) and that the FE is up"
        ) from None


def error_parts(exc: pymysql.err.MySQLError) -> tuple[int, str]:
    """The server's (or the client's) error number and message."""
    if len(exc.args) >= 2 and isinstance(exc.args[0], int):
        return exc.args[0], str(exc.args[1])
    return 0, str(exc)


def rows(
    conn: pymysql.connections.Connection[Any], sql: str, args: Sequence[object] | None = None
) -> list[dict[str, Any]]:
    """The rows of a query, as dicts keyed by the server's column names."""
    with conn.cursor(pymysql.cursors.DictCursor) as cursor:
        cursor.execute(sql, args)
        return list(cursor.fetchall())


def execute(conn: pymysql.connections.Connection[Any], sql: str, target: Target) -> None:
    """Run one statement; a refusal names the statement and the server's reason."""
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql)
    except pymysql.err.MySQLError as exc:
        code, message = error_parts(exc)
        first = sql.strip().splitlines()[0]
        if code in _LOST:
            raise DorisError(f"lost the Doris FE at {target.where} during `{first}`: {message}") from None
        raise DorisError(
            f"the Doris FE at {target.where} refused `{first}`: {message} (error {code})"
        ) from None
