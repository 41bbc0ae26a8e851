"""Reading the generated Doris SQL back: the Routine Load jobs' parts, and MySQL DDL for MariaDB.

sqlglot (30.x) parses Doris's CREATE TABLE, ALTER TABLE and CREATE DATABASE, but has no grammar for
the Routine Load statements (CREATE/ALTER/PAUSE/RESUME/STOP/SHOW ROUTINE LOAD): it falls back to an
opaque ``exp.Command``. So those are checked as far as a parser can: the whole statement goes
through sqlglot's Doris tokenizer (strings closed, parentheses balanced, the clauses in Doris's
order), and each part that is SQL (a COLUMNS item such as ``updated_time = NOW()``, the ``DELETE
ON`` predicate) is parsed with sqlglot's Doris dialect. Whether Doris itself accepts the statement
is not proved by this; only a Doris FE can.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import sqlglot
from sqlglot import exp
from sqlglot.dialects.doris import Doris
from sqlglot.errors import ErrorLevel
from sqlglot.tokens import Token, TokenType

from doris.schema import create_table
from pipeline.models import DorisTable

ROUTINE_LOAD = Path(__file__).resolve().parents[2] / "doris" / "routine_load"
JOBS = ROUTINE_LOAD / "jobs"


def parse_sql(sql: str) -> exp.Expr:
    """One statement parsed with sqlglot's Doris dialect, raising on any error."""
    return sqlglot.parse_one(sql, read="doris", error_level=ErrorLevel.RAISE)


@dataclasses.dataclass
class RoutineLoad:
    """The parts of a CREATE ROUTINE LOAD statement."""

    job: str
    table: str
    merge: bool
    columns: list[exp.Expr]
    delete_on: exp.Expr | None
    properties: dict[str, str]
    source: str
    source_properties: dict[str, str]

    def column_names(self, computed: bool = True) -> list[str]:
        names = []
        for item in self.columns:
            if isinstance(item, exp.EQ):
                if computed:
                    names.append(item.this.name)
            else:
                names.append(item.name)
        return names


class _Tokens:
    def __init__(self, sql: str) -> None:
        self.sql = sql
        self.tokens = [t for t in Doris().tokenize(sql) if t.token_type != TokenType.SEMICOLON]
        depth = 0
        for token in self.tokens:
            depth += {TokenType.L_PAREN: 1, TokenType.R_PAREN: -1}.get(token.token_type, 0)
            assert depth >= 0, f"a ) closes nothing at {token.start}: {sql}"
        assert depth == 0, f"unbalanced parentheses: {sql}"
        self.at = 0

    def peek(self) -> Token | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def word(self, *expected: str) -> str:
        token = self.tokens[self.at]
        assert token.token_type not in (TokenType.STRING, TokenType.L_PAREN, TokenType.R_PAREN), token
        if expected:
            assert token.text.upper() in expected, f"expected {expected}, found {token.text!r}"
        self.at += 1
        return token.text

    def takes(self, word: str) -> bool:
        token = self.peek()
        if token is not None and token.token_type != TokenType.STRING and token.text.upper() == word:
            self.at += 1
            return True
        return False

    def group(self) -> list[str]:
        """A parenthesised list: the source text of each top-level item."""
        assert self.tokens[self.at].token_type == TokenType.L_PAREN, self.tokens[self.at]
        self.at += 1
        items: list[list[Token]] = [[]]
        depth = 0
        while True:
            token = self.tokens[self.at]
            self.at += 1
            if token.token_type == TokenType.R_PAREN and depth == 0:
                break
            depth += {TokenType.L_PAREN: 1, TokenType.R_PAREN: -1}.get(token.token_type, 0)
            if token.token_type == TokenType.COMMA and depth == 0:
                items.append([])
            else:
                items[-1].append(token)
        assert all(items), f"an empty item in a list: {self.sql}"
        return [self.sql[item[0].start : item[-1].end + 1] for item in items]

    def properties(self) -> dict[str, str]:
        """``("key" = "value", ...)``: each item exactly a string, =, a string."""
        start = self.at
        texts = self.group()
        pairs: dict[str, str] = {}
        at = start + 1
        for _ in texts:
            key, eq, value = self.tokens[at : at + 3]
            assert (key.token_type, eq.token_type, value.token_type) == (
                TokenType.STRING,
                TokenType.EQ,
                TokenType.STRING,
            ), f'not a "key" = "value" property: {self.sql[key.start : value.end + 1]}'
            assert key.text not in pairs, f"property {key.text} given twice"
            pairs[key.text] = value.text
            at += 4
        return pairs

    def end(self) -> None:
        assert self.peek() is None, f"unexpected {self.peek()} after the statement: {self.sql}"


def parse_routine_load(sql: str) -> RoutineLoad:
    """CREATE ROUTINE LOAD <job> ON <table> [WITH MERGE] [COLUMNS (...)[, DELETE ON <predicate>]]
    PROPERTIES (...) FROM KAFKA (...), checked token by token, its SQL parts parsed."""
    tokens = _Tokens(sql)
    tokens.word("CREATE")
    tokens.word("ROUTINE")
    tokens.word("LOAD")
    job = tokens.word()
    tokens.word("ON")
    table = tokens.word()
    merge = tokens.takes("WITH")
    if merge:
        tokens.word("MERGE")
    columns: list[exp.Expr] = []
    delete_on = None
    if tokens.takes("COLUMNS"):
        columns = [parse_sql(item) for item in tokens.group()]
        if tokens.peek() is not None and tokens.peek().token_type == TokenType.COMMA:  # type: ignore[union-attr]
            tokens.at += 1
            tokens.word("DELETE")
            tokens.word("ON")
            start = tokens.at
            while not tokens.takes("PROPERTIES"):
                tokens.at += 1
            tokens.at -= 1
            delete_on = parse_sql(sql[tokens.tokens[start].start : tokens.tokens[tokens.at - 1].end + 1])
    tokens.word("PROPERTIES")
    properties = tokens.properties()
    tokens.word("FROM")
    source = tokens.word().upper()
    source_properties = tokens.properties()
    tokens.end()
    return RoutineLoad(job, table, merge, columns, delete_on, properties, source, source_properties)


@dataclasses.dataclass
class JobCommand:
    """PAUSE/RESUME/STOP/ALTER/SHOW [ALL] ROUTINE LOAD [FOR <job>] [PROPERTIES (...)] [FROM KAFKA (...)]."""

    verb: str
    job: str | None
    properties: dict[str, str]
    source_properties: dict[str, str]


def parse_job_command(sql: str) -> JobCommand:
    tokens = _Tokens(sql)
    verb = tokens.word("PAUSE", "RESUME", "STOP", "ALTER", "SHOW").upper()
    if verb == "SHOW":
        tokens.takes("ALL")
    tokens.word("ROUTINE")
    tokens.word("LOAD")
    job = tokens.word() if tokens.takes("FOR") else None
    properties = tokens.properties() if tokens.takes("PROPERTIES") else {}
    source_properties = {}
    if tokens.takes("FROM"):
        tokens.word("KAFKA")
        source_properties = tokens.properties()
    tokens.end()
    assert verb == "SHOW" or job, f"{verb} names no job: {sql}"
    assert verb == "ALTER" or not (properties or source_properties), f"{verb} takes no properties: {sql}"
    return JobCommand(verb, job, properties, source_properties)


def routine_load_file(topic: str) -> RoutineLoad:
    return parse_routine_load((JOBS / f"{topic}.sql").read_text())


def routine_load_columns(job: str, *, computed: bool = False) -> list[str]:
    """Columns of ``jobs/<job>.sql`` (its topic's file); those Doris computes (``x = NOW()``) only
    if ``computed``."""
    return routine_load_file(job).column_names(computed)


def jsonpaths(job: RoutineLoad) -> list[str]:
    return list(json.loads(job.properties["jsonpaths"]))


def mysql_create_table(table: DorisTable, leave_out: tuple[str, ...] = ()) -> str:
    """The generated Doris CREATE TABLE as MySQL/MariaDB takes it: sqlglot's parse of it, less
    the Doris properties (ENGINE=OLAP, KEY, DISTRIBUTED BY, PROPERTIES) and the columns named in
    ``leave_out``, rendered for MySQL. Test support only: pacsflow never talks to MySQL."""
    create = parse_sql(create_table(table))
    assert isinstance(create, exp.Create), f"{table.name}: not parsed as CREATE TABLE"
    create.set("properties", None)
    schema = create.this
    schema.set("expressions", [c for c in schema.expressions if c.name not in leave_out])
    return create.sql(dialect="mysql")
