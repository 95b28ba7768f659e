"""Differential fuzzing: whatever the guard allows, DuckDB's own parser must read as an allowed query.

Random SQL is built from pieces that different dialects read differently (quotes, dollar quotes, comments,
operators) and from names the guard must refuse (forbidden functions, system views, table functions), in every
dialect sqlglot (and so the guard) accepts. For each query the guard allows, its `normalized` SQL is parsed by
DuckDB itself (`extract_statements`, then `json_serialize_sql`) and every function, table function and table in
that tree must be allowed. This is the check in the other direction from the red-team corpus: not "are known
attacks refused" but "does anything the guard lets through mean something else to DuckDB".
"""

from __future__ import annotations

import json
import random

import duckdb
import pytest
import sqlglot

from pipelines.sql.guard import check_sql
from pipelines.sql.redteam import build_fixture
from pipelines.sql.sandbox_worker import (
    FORBIDDEN_FUNCTIONS,
    FORBIDDEN_PREFIXES,
    TABLE_FUNCTIONS,
    builtin_function_names,
    tree_names,
)

TABLES = ["customers", "orders", "products", "order_items", "updates"]
DIALECTS = sorted(d.value for d in sqlglot.Dialects if d.value)
NOT_SQL = {"dax", "prql"}  # dialects sqlglot reads that are not SQL: the guard refuses almost all of this
SYSTEM_VIEWS = ["pg_settings", "duckdb_databases", "duckdb_settings", "sqlite_master", "pragma_database_list"]
FUNCTIONS_OK = ["lower", "upper", "length", "abs", "coalesce", "concat", "round", "substr", "trim", "list_value"]
FUNCTIONS_BAD = ["version", "current_setting", "read_text", "query", "json_serialize_plan", "getenv",
                 "current_query_id", "txid_current", "duckdb_settings", "platform", "pragma_version"]
AGGREGATES = ["sum", "count", "max", "min", "avg", "any_value", "string_agg"]
QUOTES = ["'{}'", '"{}"', "`{}`", "$${}$$", "$t${}$t$", "[{}]", "N'{}'", "E'{}'", "x'41'", "'{}'::VARCHAR"]
NOISE = ["-- ", "#", "/* ", " */", "$$", "$a$", "'", '"', "`", ";", "::", "->", "->>", "@", "$1", "?", "\\\\", "||",
         "\n", "(", ")", ","]
QUERIES = 200  # per dialect
COLUMNS = ["id", "name", "amount", "status", "country", "x", "content", "value", "path"]


def _expr(rng: random.Random, depth: int = 0) -> str:
    kind = rng.randrange(9 if depth < 3 else 4)
    if kind == 0:
        return rng.choice(COLUMNS)
    if kind == 1:
        return str(rng.randrange(100))
    if kind == 2:
        return rng.choice(QUOTES).format(rng.choice(["a", "b c", "x -- y", "/* z */", "$a$", "it''s", "#"]))
    if kind == 3:
        return f"{_expr(rng, depth + 1)} {rng.choice(['+', '||', '=', '<', 'AND', 'LIKE'])} {_expr(rng, depth + 1)}"
    if kind in (4, 5):  # mostly allowed functions, so that enough queries pass the guard to be compared
        name = rng.choice(FUNCTIONS_BAD) if rng.random() < 0.25 else rng.choice(FUNCTIONS_OK + AGGREGATES)
        return f"{name}({', '.join(_expr(rng, depth + 1) for _ in range(rng.randrange(1, 3)))})"
    if kind == 6:
        return f"(SELECT {_expr(rng, depth + 1)} FROM {_table(rng, depth + 1)})"
    if kind == 7:
        return f"CASE WHEN {_expr(rng, depth + 1)} THEN {_expr(rng, depth + 1)} ELSE {_expr(rng, depth + 1)} END"
    if rng.random() < 0.3:  # two expressions with something between them that some dialect reads oddly
        return f"{_expr(rng, depth + 1)} {rng.choice(NOISE)} {_expr(rng, depth + 1)}"
    return rng.choice(COLUMNS)


def _table(rng: random.Random, depth: int = 0) -> str:
    kind = rng.randrange(9)
    if kind <= 4 or kind == 8:
        return rng.choice(TABLES)
    if kind == 5:
        return rng.choice(SYSTEM_VIEWS)
    if kind == 6:
        name = rng.choice(list(TABLE_FUNCTIONS) + ["read_text", "query", "duckdb_settings", "glob"])
        return f"{name}({_expr(rng, depth + 1)})"
    return f"(SELECT * FROM {rng.choice(TABLES)}) AS s"


def random_query(rng: random.Random) -> str:
    sql = f"SELECT {', '.join(_expr(rng) for _ in range(rng.randrange(1, 4)))} FROM {_table(rng)}"
    if rng.random() < 0.4:
        sql += f" WHERE {_expr(rng)}"
    if rng.random() < 0.3:
        sql += f" GROUP BY {rng.choice(COLUMNS)}"
    if rng.random() < 0.35:
        names = rng.sample(["a", "b", "pg_settings", "duckdb_databases", "customers"], 2)
        sql = f"WITH {names[0]} AS (SELECT * FROM {_table(rng)}), {names[1]} AS (SELECT * FROM " \
              f"{rng.choice([names[0], _table(rng)])}) {sql.replace('FROM ', f'FROM {names[1]}, ', 1)}"
    if rng.random() < 0.2:  # something a dialect may read as a comment, a string or code
        position = rng.randrange(len(sql))
        sql = sql[:position] + " " + " ".join(rng.choice(NOISE) for _ in range(rng.randrange(1, 4))) + " " + \
            sql[position:]
    return sql


@pytest.fixture(scope="module")
def duck(tmp_path_factory):
    """DuckDB with the red-team shop's tables, read-only: the parser and catalog the sandbox would use."""
    db = build_fixture(tmp_path_factory.mktemp("differential") / "shop.duckdb")
    con = duckdb.connect(str(db), read_only=True)
    yield con
    con.close()


def duckdb_violations(con: duckdb.DuckDBPyConnection, sql: str) -> list[str]:
    """What DuckDB's own parser finds in `sql` that the policy does not allow (empty: it is an allowed query)."""
    statements = con.extract_statements(sql)
    if len(statements) != 1:
        return [f"{len(statements)} statements"]
    statement = statements[0]
    text = statement.query
    if statement.type.name == "EXPLAIN":
        text = text.split(None, 1)[1]
        statement = con.extract_statements(text)[0]
    if statement.type.name == "MULTI" and text.lstrip().upper().startswith(("PIVOT", "UNPIVOT")):
        return []  # a PIVOT without IN: not serialisable; the guard checked its parts and the worker its words
    if statement.type.name != "SELECT":
        return [f"a {statement.type.name} statement"]
    tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [text]).fetchone()[0])
    if tree.get("error"):
        return [f"unreadable: {tree.get('error_message')}"]
    names = tree_names(tree)
    ctes = {name.lower() for name, kind, _ in names if kind == "cte"}
    allowed_functions = (builtin_function_names() | TABLE_FUNCTIONS) - FORBIDDEN_FUNCTIONS
    problems = []
    for name, kind, node in names:
        lowered = name.lower()
        if kind in ("function", "table_function") and (
                lowered not in allowed_functions or lowered.startswith(FORBIDDEN_PREFIXES)
                or (kind == "table_function" and lowered not in TABLE_FUNCTIONS)):
            problems.append(f"{kind} {name}")
        elif kind == "table" and (node.get("catalog_name") or node.get("schema_name") not in ("", "main")
                                  or lowered not in set(TABLES) | (ctes - set(SYSTEM_VIEWS))):
            problems.append(f"table {name}")
        elif kind == "cte" and lowered in SYSTEM_VIEWS:
            problems.append(f"cte {name}")
    return problems


def test_the_oracle_finds_what_it_should(duck):
    """The check below is only as good as this oracle: it must flag each kind of thing it looks for."""
    assert duckdb_violations(duck, "SELECT lower(name) FROM customers") == []
    assert duckdb_violations(duck, "SELECT version()") == ["function version"]
    assert duckdb_violations(duck, "SELECT * FROM read_text('x')") == ["table_function read_text"]
    assert duckdb_violations(duck, "SELECT * FROM pg_settings") == ["table pg_settings"]
    assert duckdb_violations(duck, "SELECT $a$ -- $a$, (SELECT 1 FROM duckdb_settings())") == \
        ["table_function duckdb_settings"]
    assert duckdb_violations(duck, "SELECT 1; SELECT 2") == ["2 statements"]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_what_the_guard_allows_duckdb_reads_as_allowed(duck, dialect):
    rng = random.Random(f"voxql-{dialect}")  # deterministic per dialect
    allowed, failures = 0, []
    for _ in range(QUERIES):
        sql = random_query(rng)
        verdict = check_sql(sql, TABLES, dialect=dialect)
        if not verdict.allowed:
            continue
        allowed += 1
        try:
            problems = duckdb_violations(duck, verdict.normalized)
        except duckdb.Error as error:  # DuckDB cannot even parse it: it would fail, not run something else
            problems = [] if "Parser Error" in str(error) else [f"error {error}"]
        if problems:
            failures.append((sql, verdict.normalized, problems))
    assert not failures, failures[:3]
    if dialect not in NOT_SQL:
        assert allowed >= QUERIES // 20, f"only {allowed} of {QUERIES} queries were allowed in {dialect}: too few"
