"""The SQL guard: red-team attacks refused, benign analytic SQL allowed, Spider gold allowed, fuzzing never crashes."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.sql.guard import GuardResult, check_sql
from pipelines.sql.redteam import ATTACKS, BENIGN, GUARD_ONLY

TABLES = ["customers", "orders", "products", "order_items", "updates"]
SPIDER_DIR = Path(os.environ.get("VOXQL_SPIDER_DIR") or Path(__file__).resolve().parents[2] / "shared" / "spider")
SECRET, OUT = "/tmp/voxql-secret.txt", "/tmp/voxql-out"


def _fill(sql: str) -> str:
    return sql.replace("$SECRET", SECRET).replace("$OUT", OUT)


def _ids(cases):
    return [f"{c.category}-{i}" for i, c in enumerate(cases)]


@pytest.mark.parametrize("case", ATTACKS, ids=_ids(ATTACKS))
def test_attacks_are_refused_with_a_one_line_reason(case):
    verdict = check_sql(_fill(case.sql), TABLES, dialect=case.dialect)
    assert not verdict.allowed, verdict
    assert verdict.normalized is None
    assert verdict.reason and "\n" not in verdict.reason and len(verdict.reason) < 300


@pytest.mark.parametrize("case", GUARD_ONLY, ids=_ids(GUARD_ONLY))
def test_policy_cases_are_refused(case):
    assert not check_sql(case.sql, TABLES, dialect=case.dialect).allowed


@pytest.mark.parametrize("case", BENIGN, ids=_ids(BENIGN))
def test_benign_queries_are_allowed(case):
    verdict = check_sql(case.sql, TABLES, dialect=case.dialect)
    assert verdict.allowed, verdict.reason
    assert verdict.normalized and verdict.reason is None
    assert check_sql(verdict.normalized, TABLES).allowed  # what runs passes the guard again


def test_corpora_are_big_enough():
    assert len(ATTACKS) >= 60 and len(BENIGN) >= 40
    categories = {c.category for c in ATTACKS}
    assert {"ddl", "dml", "cte_dml", "stacked", "file_read", "file_write", "network", "attach", "extensions",
            "settings", "call_prepare", "transactions", "maintenance", "secrets", "explain_nonquery",
            "select_into", "unicode", "nested", "case_and_comments"} <= categories


@pytest.mark.parametrize("sql, words", [
    ("SELECT 1; SELECT 2", "one statement"),
    ("WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d", "DELETE"),
    ("SELECT * INTO t2 FROM orders", "INTO"),
    ("DROP TABLE orders", "DROP"),
    ("COPY orders TO 'x.csv'", "COPY"),
    ("SELECT * FROM 'data.csv'", "files"),
    ("SELECT * FROM read_csv('x.csv')", "read_csv"),
    ("SELECT * FROM nope", "unknown table 'nope'"),
    ("SELECT getenv('HOME')", "getenv"),
    ("", "empty"),
    ("SELECT (1", "parse"),
])
def test_reasons_say_what_is_wrong(sql, words):
    verdict = check_sql(sql, TABLES)
    assert not verdict.allowed and words in verdict.reason


def test_table_names_are_case_insensitive_and_ctes_count():
    assert check_sql("SELECT * FROM CUSTOMERS", ["Customers"]).allowed
    assert check_sql('SELECT * FROM "Orders"', TABLES).allowed
    assert check_sql("WITH x AS (SELECT 1) SELECT * FROM x", []).allowed
    assert not check_sql("SELECT * FROM x", []).allowed


def test_unknown_schema_skips_table_existence_but_not_files():
    assert check_sql("SELECT * FROM anything", None).allowed
    assert not check_sql("SELECT * FROM 'x.parquet'", None).allowed
    assert not check_sql("SELECT * FROM read_text('/etc/passwd')", None).allowed


def test_normalized_sql_is_duckdb_transpiled_from_the_dialect():
    assert check_sql("SELECT name::text FROM customers", TABLES, dialect="postgres").normalized == \
        "SELECT CAST(name AS TEXT) FROM customers"
    assert check_sql("SELECT `name` FROM customers LIMIT 1, 2", TABLES, dialect="mysql").normalized == \
        'SELECT "name" FROM customers LIMIT 2 OFFSET 1'
    assert "COALESCE" in check_sql("SELECT IFNULL(name, 'x') FROM customers", TABLES, dialect="sqlite").normalized
    assert not check_sql("SELECT 1", TABLES, dialect="klingon").allowed


def test_strings_comments_and_trailing_semicolons_are_fine():
    verdict = check_sql("SELECT 'DROP TABLE x; DELETE' AS s -- DELETE FROM orders\n FROM orders;;", TABLES)
    assert verdict.allowed and "'DROP TABLE x; DELETE'" in verdict.normalized


def test_explain_describe_summarize_of_queries():
    assert check_sql("EXPLAIN SELECT * FROM orders", TABLES).normalized == "EXPLAIN SELECT * FROM orders"
    assert check_sql("explain analyze SELECT 1", TABLES).allowed
    assert not check_sql("EXPLAIN DROP TABLE orders", TABLES).allowed
    assert check_sql("DESCRIBE orders", TABLES).allowed
    assert not check_sql("SUMMARIZE SELECT * FROM read_text('x')", TABLES).allowed


@pytest.mark.parametrize("value", [None, 42, b"SELECT 1", ["SELECT 1"], "x" * 200_000, "SELECT \x00 1",
                                   "(" * 5000 + "1" + ")" * 5000, "SELECT " + "1+" * 3000 + "1"],
                         ids=lambda value: repr(value)[:20])
def test_never_raises(value):
    verdict = check_sql(value, TABLES)
    assert isinstance(verdict, GuardResult)
    if not isinstance(value, str) or len(value) > 100_000 or "\x00" in value:
        assert not verdict.allowed


@pytest.mark.skipif(not (SPIDER_DIR / "dev_gold.sql").is_file(), reason=f"Spider not found at {SPIDER_DIR}")
def test_all_spider_dev_gold_queries_pass_the_guard():
    tables = {d["db_id"]: d["table_names_original"] for d in json.loads((SPIDER_DIR / "tables.json").read_text())}
    lines = [line for line in (SPIDER_DIR / "dev_gold.sql").read_text().splitlines() if line.strip()]
    assert len(lines) == 1034
    refused = []
    for line in lines:
        sql, db_id = line.rsplit("\t", 1)
        verdict = check_sql(sql, tables[db_id], dialect="sqlite")
        if not verdict.allowed:
            refused.append((sql, verdict.reason))
    assert not refused, refused[:5]


# -- fuzzing ---------------------------------------------------------------------------------------------------------
SQLISH = st.lists(st.sampled_from([
    "SELECT", "FROM", "WHERE", "WITH", "AS", "(", ")", ",", ";", "*", "'", '"', "--", "/*", "*/", "\n", " ",
    "customers", "orders", "x", "1", "'a'", "DROP", "TABLE", "DELETE", "INSERT", "INTO", "VALUES", "UNION",
    "read_csv(", "COPY", "TO", "ATTACH", "EXPLAIN", "PRAGMA", "SET", "=", "::", "[", "]", "{", "}", "->",
    "QUALIFY", "GROUP BY ALL", "EXCLUDE", "RECURSIVE", "\u037e", "ＤＲＯＰ", "\u200b", "$1", "?", "\\",
]), max_size=40).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(SQLISH, st.text(max_size=200)))
def test_fuzz_never_crashes_and_allowed_sql_is_stable(sql):
    verdict = check_sql(sql, TABLES)
    assert isinstance(verdict, GuardResult)
    assert verdict.allowed == (verdict.normalized is not None)
    if verdict.allowed:
        again = check_sql(verdict.normalized, TABLES)
        assert again.allowed, (sql, verdict.normalized, again.reason)


def _mutate(sql: str, rng: random.Random) -> str:
    """Case flips and whitespace swapped for comments or newlines, outside string literals."""
    parts = sql.split("'")
    for i in range(0, len(parts), 2):
        chars = [c.upper() if rng.random() < 0.5 else c.lower() for c in parts[i]]
        text = "".join(chars)
        parts[i] = "".join(rng.choice([" ", "\n", "\t", " /* x */ ", "  ", " --c\n"]) if c == " " else c
                           for c in text)
    return "'".join(parts) + rng.choice(["", ";", " ;", "; -- done", "\n"])


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(ATTACKS) - 1), st.randoms(use_true_random=False))
def test_fuzz_mutated_attacks_stay_refused(index, rng):
    case = ATTACKS[index]
    assert not check_sql(_mutate(_fill(case.sql), rng), TABLES, dialect=case.dialect).allowed


# -- SQLite's double-quoted strings ---------------------------------------------------------------------------
SINGERS = {"singer": ["Name", "Country", "Age"], "concert": ["concert_Name", "Year"]}


@pytest.mark.parametrize("sql, normalized", [
    ('SELECT Name FROM singer WHERE Country = "France"', "SELECT Name FROM singer WHERE Country = 'France'"),
    ('SELECT "Name" FROM singer WHERE "Country" = "France"', "SELECT \"Name\" FROM singer WHERE \"Country\" = 'France'"),
    ('SELECT count(*) AS "n" FROM singer ORDER BY "n"', 'SELECT COUNT(*) AS "n" FROM singer ORDER BY "n" NULLS FIRST'),
    ('SELECT T1.Name FROM singer AS T1 WHERE T1.Country IN ("USA", "Canada")',
     "SELECT T1.Name FROM singer AS T1 WHERE T1.Country IN ('USA', 'Canada')"),
    ('SELECT concert_Name FROM concert WHERE Year = "2014"', "SELECT concert_Name FROM concert WHERE Year = '2014'"),
])
def test_sqlite_double_quoted_words_that_name_no_column_become_strings(sql, normalized):
    verdict = check_sql(sql, SINGERS, dialect="sqlite", columns=SINGERS)
    assert verdict.allowed and verdict.normalized == normalized


def test_double_quoted_columns_stay_columns_and_duckdb_sql_is_untouched():
    # A column of a table the query does not read is not in scope: a string, as SQLite itself reads it.
    assert check_sql('SELECT Name FROM singer WHERE "Year" = 1', SINGERS, dialect="sqlite",
                     columns=SINGERS).normalized == "SELECT Name FROM singer WHERE 'Year' = 1"
    # DuckDB's own rule is not SQLite's: written as DuckDB, a double-quoted word is always an identifier.
    assert check_sql('SELECT Name FROM singer WHERE Country = "France"', SINGERS, dialect="duckdb",
                     columns=SINGERS).normalized == 'SELECT Name FROM singer WHERE Country = "France"'


@pytest.mark.parametrize("sql, normalized", [
    # bare columns: SQLite takes them from some row of the group; DuckDB would refuse the query
    ("SELECT T1.Name, count(*) FROM singer AS T1 JOIN concert AS T2 ON T1.Name = T2.concert_Name GROUP BY T1.Age",
     "SELECT ANY_VALUE(T1.Name), COUNT(*) FROM singer AS T1 JOIN concert AS T2 ON T1.Name = T2.concert_Name "
     "GROUP BY T1.Age"),
    # ... and after a single max() or min(), from the row that has it (SQLite's documented "bare columns")
    ("SELECT Name, max(Age) FROM singer", "SELECT ARG_MAX(Name, Age), MAX(Age) FROM singer"),
    ("SELECT Country, count(*) AS n FROM singer GROUP BY Country ORDER BY n DESC",
     "SELECT Country, COUNT(*) AS n FROM singer GROUP BY Country ORDER BY n DESC"),
    ("SELECT Name, (SELECT max(Age) FROM singer) FROM singer", "SELECT Name, (SELECT MAX(Age) FROM singer) FROM singer"),
    ("SELECT Name FROM singer WHERE Name LIKE 'jo%'", "SELECT Name FROM singer WHERE Name ILIKE 'jo%'"),
])
def test_sqlite_group_by_and_like_keep_their_meaning_in_duckdb(sql, normalized):
    verdict = check_sql(sql, SINGERS, dialect="sqlite", columns=SINGERS)
    assert verdict.allowed and verdict.normalized == normalized
