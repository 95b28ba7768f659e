"""The SQL sandbox: attacks fail with the guard bypassed, limits hold, runaway queries end, the app stays up."""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import os
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pytest

from pipelines.sql import sandbox_worker
from pipelines.sql.redteam import (
    ATTACKS,
    BENIGN,
    DDL_BOMBS,
    RUNAWAY,
    RUNAWAY_LIMITS,
    SECRET_TEXT,
    _bounded,
    _ddl_bounded,
    build_fixture,
    build_crafted_fixture,
    fill,
)
from pipelines.sql.sandbox import SandboxLimits, WorkerPool, run_guarded, run_query

LIMITS = SandboxLimits(timeout_s=1.0, memory_limit="200MB")
LINUX = sys.platform.startswith("linux")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sandbox")
    db = build_fixture(folder / "shop.duckdb")
    crafted = build_crafted_fixture(folder / "crafted.duckdb")
    secret, out = folder / "secret.txt", folder / "out"
    secret.write_text(SECRET_TEXT + "\n")
    out.mkdir()
    return {"db": db, "shop": db, "crafted": crafted, "secret": secret, "out": out, "digest": _sha256(db),
            "crafted_digest": _sha256(crafted)}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ids(cases):
    return [f"{c.category}-{i}" for i, c in enumerate(cases)]


@pytest.mark.parametrize("case", ATTACKS, ids=_ids(ATTACKS))
def test_attacks_fail_in_the_sandbox_without_the_guard(env, case):
    result = run_query(env[case.db], fill(case.sql, env["secret"], env["out"]), LIMITS)
    assert not result.ok, result
    assert result.error.kind in ("blocked", "sql_error")
    assert result.rows == [] and SECRET_TEXT not in json.dumps(result.to_dict(), default=str)


def test_attacks_left_no_trace(env):
    """Runs after the attacks (file order): the database is byte-identical and nothing was written."""
    for case in ATTACKS:  # run them again here so this test stands on its own
        run_query(env[case.db], fill(case.sql, env["secret"], env["out"]), LIMITS)
    assert _sha256(env["db"]) == env["digest"] and _sha256(env["crafted"]) == env["crafted_digest"]
    assert list(env["out"].iterdir()) == []
    assert run_query(env["db"], "SELECT count(*) FROM customers", LIMITS).rows == [[4]]


@pytest.mark.parametrize("case", BENIGN, ids=_ids(BENIGN))
def test_benign_queries_run(env, case):
    result = run_guarded(env[case.db], case.sql, LIMITS, dialect=case.dialect)
    assert result.ok, result.error
    assert result.sql == case.sql


def test_values_keep_their_types(env):
    result = run_query(env["db"], "SELECT 1.50::DECIMAL(4, 2) AS d, DATE '2024-01-02' AS day, "
                       "TIMESTAMP '2024-01-02 03:04:05' AS ts, INTERVAL 1 DAY AS i, uuid() AS u, 'x'::BLOB AS b, "
                       "{'a': [1, 2]} AS s, MAP {1: 'one'} AS m, NULL AS n, 'inf'::DOUBLE AS f", LIMITS)
    assert result.ok, result.error
    d, day, ts, interval, u, b, s, m, n, f = result.rows[0]
    assert d == decimal.Decimal("1.50") and day == dt.date(2024, 1, 2) and ts == dt.datetime(2024, 1, 2, 3, 4, 5)
    assert interval == dt.timedelta(days=1) and isinstance(u, uuid.UUID) and b == b"x"
    assert s == {"a": [1, 2]} and m == {1: "one"} and n is None and f == float("inf")


def test_row_cap_truncates_a_hundred_million_rows_fast(env):
    started = time.perf_counter()
    result = run_query(env["db"], "SELECT * FROM range(100000000)", SandboxLimits(max_rows=50))
    assert result.ok and result.truncated and result.row_count == 50 and len(result.rows) == 50
    assert time.perf_counter() - started < 5


def test_result_bytes_are_capped(env):
    result = run_query(env["db"], "SELECT repeat('x', 100000) FROM range(100)",
                       SandboxLimits(max_result_bytes=250_000))
    assert result.ok and result.truncated and 1 <= result.row_count <= 3
    one_huge = run_query(env["db"], "SELECT repeat('y', 3000000)", SandboxLimits(max_result_bytes=100_000))
    assert one_huge.ok and one_huge.truncated and len(one_huge.rows[0][0]) <= 100_000


@pytest.mark.parametrize("sql", [
    "SELECT count(*) FROM range(100000) a, range(100000) b, range(100000) c",  # cartesian explosion
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",  # unbounded
    "SELECT list(range) FROM range(100000000)",  # gigantic list
    "SELECT string_agg(repeat('x', 1000), '') FROM range(10000000)",  # gigantic string
    "SELECT repeat('x', 1000000000)",  # one 1 GB value: DuckDB's memory limit does not see it
    "SELECT * FROM range(100000000) ORDER BY random()",  # a sort that needs to spill, with no disk allowed
], ids=["cartesian", "recursive", "list", "string_agg", "repeat", "sort"])
def test_runaway_queries_end_and_the_next_query_works(env, sql):
    started = time.perf_counter()
    result = run_query(env["db"], sql, LIMITS)
    elapsed = time.perf_counter() - started
    assert (not result.ok and result.error.kind in ("timeout", "memory")) or (result.ok and result.truncated), result
    assert elapsed < 4 * LIMITS.timeout_s + 2, elapsed  # the timeout, the kill grace, a restart at most
    assert run_query(env["db"], "SELECT 42", LIMITS).rows == [[42]]
    assert not env["db"].with_name(env["db"].name + ".tmp").exists()  # no spill folder next to the database


def test_configuration_is_locked_and_connections_are_fresh(env):
    assert run_query(env["db"], "SET memory_limit = '10GB'", LIMITS).error.kind == "blocked"
    # Reading a setting is refused by the sandbox's own check on DuckDB's parse tree, guard or not ...
    assert run_query(env["db"], "SELECT current_setting('memory_limit')", LIMITS).error.kind == "blocked"
    # ... so look at the sandbox's connection directly: the settings hold and are locked.
    limits = {"threads": 1, "memory_limit": "190MB", "max_temp_directory_size": "0GB"}
    with sandbox_worker.connect(str(env["db"]), limits) as con:
        assert con.execute("SELECT current_setting('memory_limit')").fetchone()[0].startswith("181")
        assert con.execute("SELECT current_setting('enable_external_access'), "
                           "current_setting('lock_configuration')").fetchone() == (False, True)
        with pytest.raises(duckdb.Error, match="locked"):
            con.execute("SET memory_limit = '10GB'")


def test_twenty_parallel_sessions_do_not_interfere(env):
    def query(i: int):
        if i == 7:  # one runaway query among them
            return i, run_query(env["db"], "SELECT count(*) FROM range(10000000) a, range(10000000) b", LIMITS)
        return i, run_query(env["db"], f"SELECT {i} AS i, count(*) AS n FROM orders WHERE id <= {i}",
                            SandboxLimits(timeout_s=30))

    with ThreadPoolExecutor(max_workers=20) as executor:
        results = list(executor.map(query, range(20)))
    for i, result in results:
        if i == 7:
            assert result.error.kind == "timeout"
        else:
            assert result.ok and result.rows == [[i, i]], (i, result)


def test_bad_inputs(env, tmp_path):
    not_duckdb = tmp_path / "x.duckdb"
    not_duckdb.write_text("hello")
    assert run_query(tmp_path / "missing.duckdb", "SELECT 1").error.kind == "bad_input"
    assert run_query(not_duckdb, "SELECT 1").error.kind == "bad_input"
    assert run_query(env["db"], "   ").error.kind == "bad_input"
    assert run_query(env["db"], "SELECT 1", SandboxLimits(memory_limit="lots")).error.kind == "bad_input"
    assert run_guarded(tmp_path / "missing.duckdb", "SELECT 1").error.kind == "bad_input"
    refused = run_guarded(env["db"], "DELETE FROM orders")
    assert refused.error.kind == "blocked" and "DELETE" in refused.error.message


def test_inline_isolation_applies_the_same_database_limits(env):
    inline = SandboxLimits(timeout_s=1.0, isolation="inline")
    assert run_query(env["db"], "SELECT count(*) FROM orders", inline).rows == [[40]]
    assert run_query(env["db"], f"SELECT * FROM read_text('{env['secret']}')", inline).error.kind == "blocked"
    assert run_query(env["db"], "CREATE TEMP TABLE t AS SELECT 1", inline).error.kind == "blocked"
    slow = run_query(env["db"], "SELECT count(*) FROM range(10000000) a, range(10000000) b", inline)
    assert slow.error.kind == "timeout"


@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_worker_process_is_locked_down(env, monkeypatch):
    monkeypatch.setenv("VOXQL_TEST_SECRET_TOKEN", "hunter2")
    pool = WorkerPool(1)
    try:
        pool.warm()
        pid = pool._idle[0].process.pid
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        limits = Path(f"/proc/{pid}/limits").read_text()
        assert b"hunter2" not in environ and b"VOXQL" not in environ
        assert any(line.startswith("Max file size") and line.split()[3] == "0" for line in limits.splitlines())
    finally:
        pool.close()


@pytest.mark.skipif(not LINUX, reason="kills a process by pid")
def test_a_crashed_worker_is_replaced(env):
    pool = WorkerPool(1)
    try:
        pool.warm()
        pid = pool._idle[0].process.pid
        threading.Timer(0.3, os.kill, (pid, 9)).start()
        request = {"db": str(env["db"]), "sql": "SELECT count(*) FROM range(10000000) a, range(10000000) b",
                   "limits": {**LIMITS.__dict__, "timeout_s": 5.0, "process_memory_bytes": None}}
        reply = pool.run(request, SandboxLimits(timeout_s=5.0))
        assert reply["error"]["kind"] == "memory" and "signal 9" in reply["error"]["message"]
        request = {**request, "sql": "SELECT 42"}
        assert pool.run(request, LIMITS)["rows"] == [[42]]
    finally:
        pool.close()


def test_a_stored_view_that_reads_a_file_is_refused(env, tmp_path):
    db = tmp_path / "crafted.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute(f"CREATE VIEW innocent AS SELECT * FROM read_text('{env['secret']}')")
    result = run_query(db, "SELECT * FROM innocent", LIMITS)  # the view's own query is checked as a query's
    assert result.error.kind == "blocked" and "read_text() is not allowed" in result.error.message
    guarded = run_guarded(db, "SELECT * FROM innocent", LIMITS)  # and it is left out of the schema
    assert guarded.error.kind == "blocked" and "unknown table 'innocent'" in guarded.error.message
    assert SECRET_TEXT not in json.dumps(result.to_dict(), default=str)


# -- DuckDB's own parse tree, checked in the worker (the guard bypassed) -----------------------------------------
@pytest.mark.parametrize("sql, words", [
    ("SELECT version()", "version()"),
    ("SELECT current_query_id()", "current_query_id()"),
    ("SELECT json_serialize_plan('SELECT current_setting(''memory_limit'')', optimize := true)",
     "json_serialize_plan()"),
    ("SELECT * FROM duckdb_databases()", "duckdb_databases()"),
    ("SELECT path FROM duckdb_databases", "duckdb_databases"),
    ("SELECT * FROM pg_settings", "pg_settings"),
    ("WITH a AS (SELECT name FROM pg_settings), pg_settings AS (SELECT 1 AS name) SELECT * FROM a", "pg_settings"),
    ("SELECT * FROM system.main.duckdb_settings()", "duckdb_settings"),
    ("PIVOT (SELECT name, value FROM duckdb_settings()) ON name USING first(value)", "duckdb_settings"),
    ("SELECT main.upper('x')", "plain name"),
])
def test_the_sandbox_reads_duckdbs_own_parse_tree(env, sql, words):
    result = run_query(env["db"], sql, LIMITS)
    assert result.error.kind == "blocked" and words in result.error.message, result
    assert "voxql" not in json.dumps(result.to_dict()).replace("voxql-canary", "")  # no paths came back


def test_macros_stored_in_a_database_never_shadow_built_ins(env, tmp_path):
    db = tmp_path / "macros.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE t AS SELECT 'A' AS s; CREATE MACRO lower(x) AS 'pwned'; "
                    "CREATE MACRO range(n) AS TABLE SELECT name, value FROM duckdb_settings()")
    for sql in ("SELECT lower(s) FROM t", "SELECT * FROM range(3)"):
        result = run_query(db, sql, LIMITS)
        assert result.error.kind == "blocked" and "macro" in result.error.message, result
    assert run_query(db, "SELECT upper(s) FROM t", LIMITS).rows == [["A"]]
    guarded = run_guarded(db, "SELECT * FROM range(3)", LIMITS)  # the guard knows the file's macros too
    assert guarded.error.kind == "blocked" and "macro" in guarded.error.message


def test_a_dynamic_pivot_runs(env):
    result = run_query(env["db"], "PIVOT orders ON status USING count(*) GROUP BY customer_id", LIMITS)
    assert result.ok and result.columns == ["customer_id", "deleted", "pending", "shipped"], result


def test_nested_values_count_in_the_byte_cap_and_depth_is_cut(env):
    capped = SandboxLimits(max_result_bytes=100_000)
    lists = run_query(env["db"], "SELECT list(i) FROM range(1000000) t(i), range(3)", capped)
    assert lists.ok and lists.truncated and lists.row_count == 1
    assert len(json.dumps(lists.rows)) < 150_000  # one row, its list cut to the budget
    structs = run_query(env["db"], "SELECT {'a': repeat('x', 60000), 'b': [repeat('y', 60000)]} FROM range(5)",
                        capped)
    assert structs.ok and structs.truncated and len(json.dumps(structs.rows)) < 150_000
    deep = run_query(env["db"], "SELECT " + "[" * 100 + "1" + "]" * 100, LIMITS)
    assert deep.ok and deep.truncated and json.dumps(deep.rows).count("[") <= 40


def test_running_out_of_memory_says_memory(env):
    result = run_query(env["db"], "SELECT length(repeat('x', 4000000000))", LIMITS)
    assert result.error.kind == "memory" and "memory" in result.error.message
    assert run_query(env["db"], "SELECT 42", LIMITS).rows == [[42]]


def test_queue_time_counts_and_a_long_queue_is_busy_at_once(env):
    pool = WorkerPool(1)
    slow = {"db": str(env["db"]), "sql": "SELECT count(*) FROM range(10000000) a, range(10000000) b",
            "limits": {**LIMITS.__dict__, "timeout_s": 2.0, "process_memory_bytes": None}}
    quick = {**slow, "sql": "SELECT 42", "limits": {**slow["limits"], "timeout_s": 0.5}}
    try:
        pool.warm()
        busy = threading.Thread(target=pool.run, args=(slow, SandboxLimits(timeout_s=2.0)))
        busy.start()
        time.sleep(0.2)
        started = time.perf_counter()
        reply = pool.run(quick, SandboxLimits(timeout_s=0.5))  # waits its 0.5 s at most, not the 2 s
        assert reply["error"]["kind"] == "busy" and time.perf_counter() - started < 1.0
        pool._pace_s = 5.0  # the pool has been taking 5 s a query: a 0.5 s query cannot be served in time
        started = time.perf_counter()
        reply = pool.run(quick, SandboxLimits(timeout_s=0.5))
        assert reply["error"]["kind"] == "busy" and "try again" in reply["error"]["message"]
        assert time.perf_counter() - started < 0.1  # at once
        busy.join()
        pool._pace_s = 0.05
        assert pool.run(quick, SandboxLimits(timeout_s=0.5))["rows"] == [[42]]
    finally:
        pool.close()


def test_worker_folders_are_removed(env):
    import tempfile

    from pipelines.sql.sandbox import WORKER_PREFIX, _sweep_folders

    stale = Path(tempfile.mkdtemp(prefix=f"{WORKER_PREFIX}999999999-"))  # left by an app that died
    _sweep_folders()
    assert not stale.exists()
    pool = WorkerPool(2)
    pool.warm()
    folders = [w.folder for w in pool._all]
    pool.close()
    assert folders and not any(Path(f).exists() for f in folders)


def test_the_schema_is_read_in_the_sandbox_not_here(env, tmp_path, monkeypatch):
    from pipelines.sql.databases import DuckDBDatabase

    db = tmp_path / "fresh.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute('CREATE TABLE t (id INTEGER PRIMARY KEY, "order" VARCHAR)')

    real_connect = duckdb.connect

    def no_duckdb_here(database=":memory:", *args, **kwargs):
        if database == ":memory:":  # the app's own in-memory instances (keywords, built-ins) are fine
            return real_connect(database, *args, **kwargs)
        raise AssertionError("an uploaded database was opened in the app process")

    monkeypatch.setattr(duckdb, "connect", no_duckdb_here)
    database = DuckDBDatabase(db)
    assert database.schema.to_ddl() == 'CREATE TABLE t (id INTEGER PRIMARY KEY, "order" VARCHAR);'
    assert DuckDBDatabase(db).schema is database.schema  # read once per file version


@pytest.mark.parametrize("case", RUNAWAY, ids=_ids(RUNAWAY))
def test_runaway_corpus_ends_bounded(env, case):
    bounded, detail = _bounded(env["db"], case.sql, SandboxLimits(**RUNAWAY_LIMITS))
    assert bounded, detail


@pytest.mark.parametrize("ddl", DDL_BOMBS, ids=[f"ddl-{i}" for i in range(len(DDL_BOMBS))])
def test_ddl_bombs_are_read_or_refused_fast_never_run(env, ddl):
    bounded, detail = _ddl_bounded(fill(ddl, env["secret"], env["out"]))
    assert bounded, detail


def test_a_long_chain_of_views_over_a_refused_one_is_refused(tmp_path):
    db = tmp_path / "chain.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE t AS SELECT 1 AS a; CREATE VIEW v0 AS SELECT path FROM duckdb_databases()")
        for i in range(1, 15):
            con.execute(f"CREATE VIEW v{i} AS SELECT * FROM v{i - 1}")
        con.execute("CREATE VIEW fine AS SELECT a FROM t")
    result = run_query(db, "SELECT * FROM v14", LIMITS)
    assert result.error.kind == "blocked" and "v13" in result.error.message and result.rows == []
    assert run_query(db, "SELECT * FROM fine", LIMITS).rows == [[1]]
