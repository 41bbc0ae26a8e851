"""docs/scaling.md's Citus statements and Doris jobs, checked against the sources so that they cannot go
stale.

Every statement of the document's ``sql`` blocks must parse (sqlglot, PostgreSQL dialect). The
schema is what pacsflow's migrations build, in order (``pipeline.stores.postgres.migrations``):
each distributed table must exist there, be distributed by a NOT NULL column that its primary key
leads with and that every unique key includes (Citus refuses a unique constraint without the
distribution column), and colocate with a distributed table whose distribution column has the same
type; every table of the migrations must be either distributed or a reference table. A migration
statement the checker does not understand fails the test, rather than being skipped; one that
writes rows (a backfill) leaves the schema as it was. The document's table of Doris Routine Load
jobs must say what doris/routine_load/jobs/*.sql say.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlglot
from sqlglot import exp

from pipeline.stores.postgres import migrations
from tests.support import routine_load

DOC = Path(__file__).resolve().parents[2] / "docs" / "scaling.md"
DISTRIBUTE = "create_distributed_table"
REFERENCE = "create_reference_table"


@dataclass
class Table:
    columns: dict[str, str] = field(default_factory=dict)
    """name -> type, as PostgreSQL writes it."""
    not_null: set[str] = field(default_factory=set)
    primary_key: list[str | None] = field(default_factory=list)
    unique: dict[str, list[str | None]] = field(default_factory=dict)
    """Unique keys other than the primary key, by name; None stands for an expression."""


@dataclass(frozen=True)
class Distributed:
    table: str
    column: str
    colocate_with: str | None


def sql_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```sql\n(.*?)^```", markdown, flags=re.DOTALL | re.MULTILINE)


def parse(sql: str) -> list[exp.Expr]:
    """Every statement of ``sql``; one sqlglot cannot parse (it falls back to a bare Command) fails."""
    statements = [s for s in sqlglot.parse(sql, read="postgres") if s is not None]
    for statement in statements:
        assert not isinstance(statement, exp.Command), f"sqlglot does not parse: {statement.sql()}"
    return statements


def _name(node: exp.Expr) -> str:
    return node.name.lower()


def _key_columns(nodes: list[exp.Expr]) -> list[str | None]:
    """The columns of a key or index, in order; None for an expression (``lower(name)``)."""
    out: list[str | None] = []
    for node in nodes:
        inner = node.this if isinstance(node, exp.Ordered) else node
        out.append(_name(inner) if isinstance(inner, (exp.Column, exp.Identifier)) else None)
    return out


def _column(table: Table, definition: exp.ColumnDef) -> None:
    name = _name(definition)
    kind = definition.args.get("kind")
    table.columns[name] = kind.sql("postgres") if kind is not None else ""
    for constraint in definition.constraints:
        kind_of = constraint.kind
        if isinstance(kind_of, exp.NotNullColumnConstraint) and not kind_of.args.get("allow_null"):
            table.not_null.add(name)
        elif isinstance(kind_of, exp.PrimaryKeyColumnConstraint):
            table.primary_key = [name]
            table.not_null.add(name)
        elif isinstance(kind_of, exp.UniqueColumnConstraint):
            table.unique[f"{name} UNIQUE"] = [name]


def _table_constraint(table: Table, node: exp.Expr, name: str) -> None:
    if isinstance(node, exp.PrimaryKey):
        table.primary_key = _key_columns(node.expressions)
        table.not_null.update(c for c in table.primary_key if c)
    elif isinstance(node, exp.UniqueColumnConstraint):
        table.unique[name or "UNIQUE"] = _key_columns(node.this.expressions)
    elif isinstance(node, exp.Constraint):
        for inner in node.expressions:
            _table_constraint(table, inner, _name(node))
    else:
        raise AssertionError(f"the checker does not understand this table element: {node.sql()}")


def schema(sql_by_migration: list[str]) -> dict[str, Table]:
    """The tables the migrations leave, with their columns and unique keys."""
    tables: dict[str, Table] = {}
    index_table: dict[str, str] = {}
    for sql in sql_by_migration:
        for statement in parse(sql):
            kind = str(statement.args.get("kind") or "").upper()
            if isinstance(statement, exp.Create) and kind == "TABLE":
                target = statement.this
                table = tables.setdefault(_name(target.this), Table())
                for element in target.expressions:
                    if isinstance(element, exp.ColumnDef):
                        _column(table, element)
                    else:
                        _table_constraint(table, element, "")
            elif isinstance(statement, exp.Create) and kind == "INDEX":
                index = statement.this
                on = _name(index.args["table"])
                index_table[_name(index)] = on
                if statement.args.get("unique"):
                    tables[on].unique[_name(index)] = _key_columns(index.args["params"].args["columns"])
            elif isinstance(statement, exp.Drop) and kind == "INDEX":
                for dropped in statement.args["tables"]:
                    on = index_table.pop(_name(dropped))
                    tables[on].unique.pop(_name(dropped), None)
            elif isinstance(statement, exp.Alter) and kind == "TABLE":
                table = tables[_name(statement.this)]
                for action in statement.args["actions"]:
                    if not isinstance(action, exp.ColumnDef):
                        raise AssertionError(f"the checker does not understand: {statement.sql()}")
                    _column(table, action)
            elif isinstance(statement, exp.Insert | exp.Update | exp.Delete):
                continue  # rows (a backfill), not the schema
            else:
                raise AssertionError(f"the checker does not understand: {statement.sql()[:200]}")
    return tables


def placements(markdown: str) -> tuple[list[Distributed], list[str]]:
    """The ``create_distributed_table`` and ``create_reference_table`` calls of the sql blocks."""
    distributed: list[Distributed] = []
    reference: list[str] = []
    for block in sql_blocks(markdown):
        for statement in parse(block):
            for call in statement.find_all(exp.Anonymous):
                function = str(call.this).lower()
                if function not in (DISTRIBUTE, REFERENCE):
                    continue
                plain = [a for a in call.expressions if not isinstance(a, exp.Kwarg)]
                named = {_name(a.this): a.expression for a in call.expressions if isinstance(a, exp.Kwarg)}
                assert all(isinstance(a, exp.Literal) and a.is_string for a in plain), call.sql()
                if function == REFERENCE:
                    assert len(plain) == 1 and not named, f"{call.sql()}: one table, nothing else"
                    reference.append(plain[0].name.lower())
                    continue
                assert len(plain) == 2, f"{call.sql()}: the table and its distribution column"
                assert set(named) <= {"colocate_with"}, f"{call.sql()}: only colocate_with is checked"
                colocate = named.get("colocate_with")
                distributed.append(
                    Distributed(
                        plain[0].name.lower(),
                        plain[1].name.lower(),
                        colocate.name.lower() if colocate is not None else None,
                    )
                )
    return distributed, reference


def problems(tables: dict[str, Table], distributed: list[Distributed], reference: list[str]) -> list[str]:
    found = []
    by_table = {d.table: d for d in distributed}
    for d in distributed:
        table = tables.get(d.table)
        if table is None:
            found.append(f"{d.table}: distributed, but no migration creates it")
            continue
        if d.column not in table.columns:
            found.append(f"{d.table}: no column {d.column}")
        elif d.column not in table.not_null:
            found.append(f"{d.table}.{d.column} may be NULL: a distribution column must not")
        if not table.primary_key or table.primary_key[0] != d.column:
            found.append(f"{d.table}: its primary key {table.primary_key} does not lead with {d.column}")
        for name, columns in table.unique.items():
            if d.column not in columns:
                found.append(f"{d.table}: unique key {name} {columns} does not include {d.column}")
        if d.colocate_with is not None:
            other = by_table.get(d.colocate_with)
            if other is None:
                found.append(f"{d.table}: colocated with {d.colocate_with}, which is not distributed")
            elif d.colocate_with in tables and d.table in tables:
                mine = tables[d.table].columns.get(d.column)
                theirs = tables[d.colocate_with].columns.get(other.column)
                if mine != theirs:
                    found.append(
                        f"{d.table}: {d.column} is {mine}, {d.colocate_with}.{other.column} {theirs}"
                    )
    for name in reference:
        if name not in tables:
            found.append(f"{name}: a reference table, but no migration creates it")
    placed = [d.table for d in distributed] + reference
    for name in sorted({n for n in placed if placed.count(n) > 1}):
        found.append(f"{name}: placed more than once")
    for name in sorted(set(tables) - set(placed)):
        found.append(f"{name}: created by the migrations, neither distributed nor a reference table")
    return found


def test_every_sql_block_of_the_document_parses() -> None:
    blocks = sql_blocks(DOC.read_text())
    assert blocks, f"{DOC.name} has no sql block"
    for block in blocks:
        assert parse(block), f"an empty sql block: {block!r}"


def test_the_citus_statements_agree_with_the_migrations() -> None:
    tables = schema([sql for _, _, sql in migrations()])
    distributed, reference = placements(DOC.read_text())
    assert distributed, f"{DOC.name} distributes no table"
    assert problems(tables, distributed, reference) == []


def test_every_distributed_table_leads_its_keys_with_tenant_id() -> None:
    """pacsflow's own rule (every key leads with tenant_id), beyond Citus's (includes it)."""
    tables = schema([sql for _, _, sql in migrations()])
    distributed, _ = placements(DOC.read_text())
    assert {d.column for d in distributed} == {"tenant_id"}
    for d in distributed:
        for name, columns in tables[d.table].unique.items():
            assert columns[0] == "tenant_id", f"{d.table}: unique key {name} {columns}"


def test_the_routine_load_table_is_the_jobs_files() -> None:
    """The document's row of each Doris job: its topic and batch properties as the job files say."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| medical_") and len(cells) >= 6:
            rows[cells[0]] = (cells[1], dict(zip(routine_load.BATCH, map(int, cells[2:6]), strict=True)))
    jobs = {job.name: (job.topic, job.batch) for job in routine_load.jobs()}
    assert jobs, "no job under doris/routine_load/jobs"
    assert rows == jobs


BAD_MIGRATION = """
CREATE TABLE a (tenant_id varchar(64) NOT NULL, x text NOT NULL, PRIMARY KEY (x, tenant_id));
CREATE UNIQUE INDEX a_x ON a (x);
CREATE TABLE b (tenant_id text, y text PRIMARY KEY);
CREATE TABLE c (z text);
"""
BAD_DOC = """
```sql
SELECT create_distributed_table('a', 'tenant_id');
SELECT create_distributed_table('b', 'tenant_id', colocate_with => 'a');
SELECT create_distributed_table('gone', 'tenant_id');
```
"""


def test_the_checker_finds_what_citus_would_refuse() -> None:
    found = problems(schema([BAD_MIGRATION]), *placements(BAD_DOC))
    assert found == [
        "a: its primary key ['x', 'tenant_id'] does not lead with tenant_id",
        "a: unique key a_x ['x'] does not include tenant_id",
        "b.tenant_id may be NULL: a distribution column must not",
        "b: its primary key ['y'] does not lead with tenant_id",
        "b: tenant_id is TEXT, a.tenant_id VARCHAR(64)",
        "gone: distributed, but no migration creates it",
        "c: created by the migrations, neither distributed nor a reference table",
    ]


@pytest.mark.parametrize(
    "migration",
    [
        "CREATE TABLE a (tenant_id text PRIMARY KEY); ALTER TABLE a ADD CONSTRAINT u UNIQUE (tenant_id);",
        "CREATE VIEW v AS SELECT 1;",
    ],
)
def test_the_checker_refuses_what_it_does_not_understand(migration: str) -> None:
    with pytest.raises(AssertionError, match="does not understand"):
        schema([migration])
