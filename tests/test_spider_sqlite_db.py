"""SQLiteDatabase: Spider's SQLite files behind the app's Database protocol (guard verdict, SQLite text runs)."""

from __future__ import annotations

import pytest

from pipelines.spider.data import database_path, load_schemas
from pipelines.spider.sqlite_db import SQLiteDatabase
from pipelines.spider.tiny import build_tiny_spider


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    folder = build_tiny_spider(tmp_path_factory.mktemp("tiny-spider"))
    return SQLiteDatabase(database_path(folder, "shop"), load_schemas(folder)["shop"])


def test_it_is_a_sqlite_database_for_the_pipeline(shop):
    assert shop.name == "shop" and shop.dialect == "sqlite" and shop.can_execute
    assert shop.schema.table_names() == ["customers", "orders"]


def test_check_gives_the_guard_verdict_but_keeps_the_sqlite_text(shop):
    sql = "SELECT name || '!' FROM customers WHERE city = \"Oslo\" AND strftime('%Y', 'now') > '2000'"
    verdict = shop.check(sql)
    assert verdict.allowed and verdict.normalized == sql
    refused = shop.check("DROP TABLE customers")
    assert not refused.allowed and refused.normalized is None and refused.reason
    assert not shop.check("SELECT * FROM secrets").allowed  # unknown table


def test_run_returns_rows_in_sqlite_semantics(shop):
    result = shop.run("SELECT name FROM customers WHERE city = \"Oslo\" ORDER BY id")  # "..." is a string here
    assert result.ok and result.columns == ["name"] and result.rows == [["Ann"], ["Cid"]]
    assert result.row_count == 2 and not result.truncated


def test_run_caps_rows(shop):
    capped = SQLiteDatabase(shop.path, shop.schema, max_rows=2)
    result = capped.run("SELECT id FROM orders ORDER BY id")
    assert result.ok and result.rows == [[1], [2]] and result.truncated


def test_run_errors_come_back_as_query_errors(shop):
    error = shop.run("SELECT nope FROM customers").error
    assert error.kind == "sql_error" and "nope" in error.message
    for sql in ("DELETE FROM customers", "ATTACH 'other.db' AS other", "PRAGMA query_only = 0"):
        assert shop.run(sql).error.kind == "blocked"
    assert shop.run("SELECT count(*) FROM customers").rows == [[4]]


def test_run_times_out(shop):
    slow = SQLiteDatabase(shop.path, shop.schema, timeout_s=0.2)
    result = slow.run("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c")
    assert not result.ok and result.error.kind == "timeout"


def test_hand_typed_sql_through_the_pipeline(shop):
    from pipelines.sql.pipeline import run_sql

    answer = run_sql("SELECT count(*) FROM orders WHERE status = 'paid'", shop)
    assert answer.executed and answer.rows == [[3]] and answer.sql.startswith("SELECT count(*)")
