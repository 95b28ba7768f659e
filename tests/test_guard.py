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
from pipelines.sql.redteam import ATTACKS, BENIGN, GUARD_ONLY, MACROS

TABLES = ["customers", "orders", "products", "order_items", "updates"]
SPIDER_DIR = Path(os.environ.get("VOXQL_SPIDER_DIR") or Path(__file__).resolve().parents[2] / "shared" / "spider")
SECRET, OUT = "/tmp/voxql-secret.txt", "/tmp/voxql-out"


def _fill(sql: str) -> str:
    return sql.replace("$SECRET", SECRET).replace("$OUT", OUT)


def _ids(cases):
    return [f"{c.category}-{i}" for i, c in enumerate(cases)]


def _macros(case) -> list[str]:
    """The macros stored in the case's fixture database (the guard gets them from the database's schema)."""
    return list(MACROS) if case.db == "crafted" else []


def _tables(case) -> list[str]:
    """The case's database's tables, as the sandbox's schema read gives them (refused views left out)."""
    return TABLES + ["v_ok"] if case.db == "crafted" else TABLES


@pytest.mark.parametrize("case", ATTACKS, ids=_ids(ATTACKS))
def test_attacks_are_refused_with_a_one_line_reason(case):
    verdict = check_sql(_fill(case.sql), _tables(case), dialect=case.dialect, macros=_macros(case))
    assert not verdict.allowed, verdict
    assert verdict.normalized is None
    assert verdict.reason and "\n" not in verdict.reason and len(verdict.reason) < 300


@pytest.mark.parametrize("case", GUARD_ONLY, ids=_ids(GUARD_ONLY))
def test_policy_cases_are_refused(case):
    assert not check_sql(case.sql, TABLES, dialect=case.dialect).allowed


@pytest.mark.parametrize("case", BENIGN, ids=_ids(BENIGN))
def test_benign_queries_are_allowed(case):
    verdict = check_sql(case.sql, _tables(case), dialect=case.dialect, macros=_macros(case))
    assert verdict.allowed, verdict.reason
    assert verdict.normalized and verdict.reason is None
    assert check_sql(verdict.normalized, _tables(case)).allowed  # what runs passes the guard again


def test_corpora_are_big_enough():
    assert len(ATTACKS) >= 60 and len(BENIGN) >= 40
    categories = {c.category for c in ATTACKS}
    assert {"ddl", "dml", "cte_dml", "stacked", "file_read", "file_write", "network", "attach", "extensions",
            "settings", "call_prepare", "transactions", "maintenance", "secrets", "explain_nonquery",
            "select_into", "unicode", "nested", "case_and_comments", "dialect_confusion", "system_names",
            "instance_functions", "pivot", "stored_macros", "stored_views"} <= categories
    assert all(sum(c.category == name for c in ATTACKS) >= 4 for name in
               ("dialect_confusion", "system_names", "instance_functions", "pivot", "stored_macros", "stored_views"))


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
    assert not check_sql(_mutate(_fill(case.sql), rng), _tables(case), dialect=case.dialect,
                         macros=_macros(case)).allowed


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


@pytest.mark.parametrize("dialect", ["sqlite", "duckdb"])  # models keep SQLite's habit whatever they are told
@pytest.mark.parametrize("sql, normalized", [
    # bare columns: SQLite takes them from some row of the group; DuckDB would refuse the query
    ("SELECT T1.Name, count(*) FROM singer AS T1 JOIN concert AS T2 ON T1.Name = T2.concert_Name GROUP BY T1.Age",
     "SELECT ANY_VALUE(T1.Name), COUNT(*) FROM singer AS T1 JOIN concert AS T2 ON T1.Name = T2.concert_Name "
     "GROUP BY T1.Age"),
    # ... and after a single max() or min(), from the row that has it (SQLite's documented "bare columns")
    ("SELECT Name, max(Age) FROM singer", "SELECT ARG_MAX(Name, Age), MAX(Age) FROM singer"),
    ("SELECT Country FROM singer GROUP BY Country HAVING count(*) > 1 ORDER BY Age DESC",
     "SELECT Country FROM singer GROUP BY Country HAVING COUNT(*) > 1 ORDER BY ANY_VALUE(Age) DESC"),
    # what DuckDB itself accepts is left alone
    ("SELECT Country, count(*) AS n FROM singer GROUP BY Country ORDER BY n DESC",
     "SELECT Country, COUNT(*) AS n FROM singer GROUP BY Country ORDER BY n DESC"),
    ("SELECT Name, (SELECT max(Age) FROM singer) FROM singer", "SELECT Name, (SELECT MAX(Age) FROM singer) FROM singer"),
    ("SELECT Age + 1, count(*) FROM singer GROUP BY Age + 1", "SELECT Age + 1, COUNT(*) FROM singer GROUP BY Age + 1"),
    ("SELECT Country, count(*) FROM singer GROUP BY 1", "SELECT Country, COUNT(*) FROM singer GROUP BY 1"),
    ("SELECT upper(Country) AS c, count(*) FROM singer GROUP BY c",
     "SELECT UPPER(Country) AS c, COUNT(*) FROM singer GROUP BY c"),
    ("SELECT Country, count(*) FROM singer GROUP BY ALL", "SELECT Country, COUNT(*) FROM singer GROUP BY ALL"),
    ("SELECT Country, count(*) FROM singer GROUP BY ROLLUP (Country)",
     "SELECT Country, COUNT(*) FROM singer GROUP BY ROLLUP (Country)"),
])
def test_bare_columns_of_an_aggregate_query_get_sqlites_meaning(dialect, sql, normalized):
    verdict = check_sql(sql, SINGERS, dialect=dialect, columns=SINGERS)
    assert verdict.allowed and verdict.normalized == normalized


DOCUMENTS = {"paragraphs": ["paragraph_id", "document_id"], "documents": ["document_id", "document_name"]}


@pytest.mark.parametrize("sql, normalized", [
    # an inner join on the column makes both tables' values one: the bare name gets the first table
    ("SELECT document_id, count(*) FROM paragraphs AS T1 JOIN documents AS T2 ON T1.document_id = T2.document_id "
     "GROUP BY document_id",
     "SELECT T1.document_id, COUNT(*) FROM paragraphs AS T1 JOIN documents AS T2 ON T1.document_id = T2.document_id "
     "GROUP BY T1.document_id"),
    # an outer join (one side may be NULL), another join column, or USING: left to DuckDB
    ("SELECT document_id FROM paragraphs AS T1 LEFT JOIN documents AS T2 ON T1.document_id = T2.document_id",
     "SELECT document_id FROM paragraphs AS T1 LEFT JOIN documents AS T2 ON T1.document_id = T2.document_id"),
    ("SELECT document_id FROM paragraphs AS T1 JOIN documents AS T2 ON T1.paragraph_id = T2.document_id",
     "SELECT document_id FROM paragraphs AS T1 JOIN documents AS T2 ON T1.paragraph_id = T2.document_id"),
    ("SELECT document_id FROM paragraphs JOIN documents USING (document_id)",
     "SELECT document_id FROM paragraphs JOIN documents USING (document_id)"),
])
def test_a_column_an_inner_join_equates_is_not_ambiguous(sql, normalized):
    verdict = check_sql(sql, DOCUMENTS, columns=DOCUMENTS)
    assert verdict.allowed and verdict.normalized == normalized


def test_sqlite_like_ignores_case_in_duckdb_too():
    verdict = check_sql("SELECT Name FROM singer WHERE Name LIKE 'jo%'", SINGERS, dialect="sqlite", columns=SINGERS)
    assert verdict.normalized == "SELECT Name FROM singer WHERE Name ILIKE 'jo%'"
    assert check_sql("SELECT Name FROM singer WHERE Name LIKE 'jo%'", SINGERS).normalized.endswith("LIKE 'jo%'")


# -- what DuckDB will run, read as DuckDB reads it --------------------------------------------------------------
@pytest.mark.parametrize("dialect", ["sqlite", "mysql", "bigquery", "tsql", "snowflake", "oracle", "hive"])
@pytest.mark.parametrize("sql", [
    "SELECT $a$ -- $a$, (SELECT content FROM read_text('/etc/passwd'))",
    "SELECT $$ /* $$, * FROM duckdb_settings() -- */",
    "SELECT 1 AS $q$, name FROM customers -- $q$ FROM duckdb_databases()",
    "SELECT $x$ # $x$, (SELECT * FROM query('SELECT 1'))",
])
def test_dialect_confusion_is_refused(dialect, sql):
    verdict = check_sql(sql, TABLES, dialect=dialect)
    assert not verdict.allowed, verdict


def test_dollar_quoted_strings_still_work_where_they_are_strings():
    assert check_sql("SELECT name FROM customers WHERE name = $$Ada$$", TABLES, dialect="postgres").normalized == \
        "SELECT name FROM customers WHERE name = 'Ada'"
    assert check_sql("SELECT $tag$it's$tag$ AS s", TABLES).allowed


def test_normalized_sql_has_no_comments():
    assert check_sql("SELECT 1 /* DROP */ -- x\n FROM orders", TABLES).normalized == "SELECT 1 FROM orders"


@pytest.mark.parametrize("sql, words", [
    ("WITH a AS (SELECT name FROM pg_settings), pg_settings AS (SELECT 1 AS name) SELECT * FROM a", "pg_settings"),
    ("WITH duckdb_databases AS (SELECT 1 AS path) SELECT path FROM duckdb_databases", "duckdb_databases"),
    ("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a", "unknown table 'b'"),  # a forward reference
    ("WITH a AS (WITH b AS (SELECT 1) SELECT * FROM b) SELECT * FROM a, b", "unknown table 'b'"),  # out of scope
    ("SELECT * FROM pg_settings", "system view"),
    ("SELECT path FROM duckdb_databases", "system view"),
    ("SELECT * FROM sqlite_master", "system view"),
])
def test_names_resolve_as_duckdb_resolves_them(sql, words):
    for tables in (TABLES, None):  # system views are refused even when table names are not checked
        verdict = check_sql(sql, tables)
        if tables is None and "unknown table" in words:
            continue
        assert not verdict.allowed and words in verdict.reason, verdict


def test_ctes_in_order_recursive_and_nested_are_fine():
    assert check_sql("WITH a AS (SELECT 1 AS x), b AS (SELECT * FROM a) SELECT * FROM b, a", []).allowed
    assert check_sql("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3) "
                     "SELECT * FROM n", []).allowed
    assert check_sql("WITH a AS (SELECT 1) SELECT * FROM (WITH b AS (SELECT * FROM a) SELECT * FROM b)", []).allowed
    assert check_sql("WITH customers AS (SELECT 1 AS id) SELECT * FROM customers", TABLES).allowed


@pytest.mark.parametrize("sql", [
    "SELECT version()", "SELECT VERSION()", "SELECT current_query_id()", "SELECT current_connection_id()",
    "SELECT current_transaction_id()", "SELECT txid_current()", "SELECT platform()", "SELECT user_agent()",
    "SELECT json_serialize_plan('SELECT current_setting(''memory_limit'')', optimize := true)",
    "SELECT json_serialize_sql('SELECT 1')", "SELECT current_database()", "SELECT current_user",
    "SELECT duckdb_api()", "SELECT * FROM duckdb_memory()", "SELECT stats(id) FROM customers",
    "SELECT getvariable('x')", "SELECT * FROM pragma_database_size()",
])
def test_instance_revealing_functions_are_refused(sql):
    verdict = check_sql(sql, TABLES)
    assert not verdict.allowed and "not allowed" in verdict.reason, verdict


def test_pivot_statements_are_queries():
    assert check_sql("PIVOT orders ON status USING count(*)", TABLES).allowed
    assert check_sql("PIVOT orders ON status USING sum(amount) GROUP BY customer_id", TABLES).allowed
    assert not check_sql("PIVOT (SELECT * FROM duckdb_settings()) ON name USING first(value)", TABLES).allowed
    assert not check_sql("PIVOT nope ON status USING count(*)", TABLES).allowed


def test_stored_macros_are_refused():
    verdict = check_sql("SELECT lower(name) FROM customers", TABLES, macros=["lower"])
    assert not verdict.allowed and "macro" in verdict.reason
    assert check_sql("SELECT upper(name) FROM customers", TABLES, macros=["lower"]).allowed


def test_the_guard_has_a_size_and_time_budget(monkeypatch):
    import pipelines.sql.guard as guard

    verdict = check_sql("SELECT " + "1 + " * 6000 + "1", TABLES)
    assert not verdict.allowed and "tokens" in verdict.reason
    monkeypatch.setattr(guard, "TIME_BUDGET_S", 0.0)
    verdict = check_sql("SELECT * FROM orders", TABLES)
    assert not verdict.allowed and "too complex to check" in verdict.reason


def test_many_ctes_check_within_the_budget():
    """400 CTEs, each reading the 8 before it: checked (in one pass over the tree) well within the budget."""
    sql = "WITH " + ", ".join(
        f"c{i} AS (SELECT * FROM " + (", ".join(f"c{j}" for j in range(max(0, i - 8), i)) or "orders") + ")"
        for i in range(400)) + " SELECT 1 FROM c399"
    verdict = check_sql(sql, TABLES)
    assert verdict.allowed, verdict.reason  # a refusal here would say "too complex to check"
