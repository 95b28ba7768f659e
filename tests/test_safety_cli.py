"""`check-sql`, `run-sql`, `redteam-sql` and `bench-sql`: JSON lines in input order, exit codes, reports."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.sql import safety_cli
from pipelines.sql.redteam import build_fixture

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULT_KEYS = ["sql", "ok", "columns", "rows", "row_count", "truncated", "elapsed_ms", "error"]


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    return build_fixture(tmp_path_factory.mktemp("cli") / "shop.duckdb")


def run_cli(argv: list[str], capsys, stdin: str | None = None, monkeypatch=None) -> tuple[int, list[dict]]:
    parser = argparse.ArgumentParser()
    safety_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = args.func(args)
    out = capsys.readouterr().out
    return code, [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_check_sql_one_query(db, capsys):
    code, [out] = run_cli(["check-sql", "--db", str(db), "--sql", "select name from customers;"], capsys)
    assert code == 0 and out == {"sql": "select name from customers;", "allowed": True, "reason": None,
                                 "normalized": "SELECT name FROM customers"}
    code, [out] = run_cli(["check-sql", "--db", str(db), "--sql", "SELECT 1; DROP TABLE customers"], capsys)
    assert code == 1 and out["allowed"] is False and "one statement" in out["reason"] and out["normalized"] is None


def test_check_sql_jsonl_keeps_order_and_reports_bad_lines(db, tmp_path, capsys):
    lines = tmp_path / "q.jsonl"
    lines.write_text('{"sql": "SELECT * FROM orders"}\nnot json\n\n{"sql": "DELETE FROM orders"}\n'
                     '{"sql": "SELECT `name` FROM customers", "dialect": "mysql"}\n')
    code, outs = run_cli(["check-sql", "--db", str(db), "--jsonl", str(lines)], capsys)
    assert code == 0
    assert [o["allowed"] for o in outs] == [True, False, False, True]
    assert "line 2" in outs[1]["reason"]
    assert outs[3]["normalized"] == 'SELECT "name" FROM customers'


def test_run_sql_json_shape_and_exit_codes(db, capsys):
    code, [out] = run_cli(["run-sql", "--db", str(db), "--sql", "SELECT id, amount FROM orders ORDER BY id",
                           "--max-rows", "3"], capsys)
    assert code == 0 and list(out) == RESULT_KEYS
    assert out["ok"] and out["columns"] == ["id", "amount"] and out["row_count"] == 3 and out["truncated"]
    code, [out] = run_cli(["run-sql", "--db", str(db), "--sql", "DROP TABLE orders"], capsys)
    assert code == 1 and out["error"]["kind"] == "blocked" and out["rows"] == []
    code, [out] = run_cli(["run-sql", "--db", str(db), "--sql", "SELECT nope FROM orders"], capsys)
    assert code == 1 and out["error"]["kind"] == "sql_error"
    code, [out] = run_cli(["run-sql", "--db", str(db) + ".missing", "--sql", "SELECT 1"], capsys)
    assert code == 1 and out["error"]["kind"] == "bad_input"


def test_run_sql_stdin_in_order_with_a_timeout(db, capsys, monkeypatch):
    queries = ["SELECT count(*) FROM range(10000000) a, range(10000000) b", "SELECT DATE '2024-01-02' AS d",
               "SELECT 'nan'::DOUBLE AS f, 1.5::DECIMAL(3, 1) AS x", "not json", "SELECT 3 AS n"]
    stdin = "\n".join(q if q == "not json" else json.dumps({"sql": q}) for q in queries)
    code, outs = run_cli(["run-sql", "--db", str(db), "--jsonl", "-", "--timeout", "1"], capsys, stdin, monkeypatch)
    assert code == 0 and [o["sql"] for o in outs] == queries
    assert outs[0]["error"]["kind"] == "timeout"
    assert outs[1]["rows"] == [["2024-01-02"]]
    assert outs[2]["rows"] == [["nan", "1.5"]]  # valid JSON: no bare NaN
    assert outs[3]["error"]["kind"] == "bad_input"
    assert outs[4]["rows"] == [[3]]


def test_redteam_command_reports_perfect_rates(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    safety_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["redteam-sql", "--out", str(tmp_path / "redteam.json")])
    assert args.func(args) == 0
    report = json.loads((tmp_path / "redteam.json").read_text())
    assert report["rates"]["attacks_refused_by_guard_pct"] == 100.0
    assert report["rates"]["attacks_refused_by_sandbox_pct"] == 100.0
    assert report["rates"]["benign_refused_pct"] == 0.0 and report["perfect"]
    assert report["rates"]["runaway_bounded_pct"] == report["rates"]["ddl_bombs_bounded_pct"] == 100.0
    assert {"dialect_confusion", "system_names", "instance_functions", "pivot", "stored_macros"} <= \
        set(report["by_category"])
    assert "refused by the guard 100.0%" in capsys.readouterr().out


def test_bench_command_writes_json(db, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    safety_cli.register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "bench.json"
    args = parser.parse_args(["bench-sql", "--db", str(db), "--repeat", "1", "--spider", str(tmp_path), "--out",
                              str(out)])
    assert args.func(args) == 0
    report = json.loads(out.read_text())
    assert {"raw", "guard", "sandbox", "guarded", "inline"} <= set(report["overall"])
    assert report["cpu_cores"] and report["duckdb"] and report["sandbox_fixed_cost_ms"] >= 0
    assert "p50" in capsys.readouterr().out


def test_module_entry_point_exit_code(db):
    command = [sys.executable, "-m", "pipelines", "run-sql", "--db", str(db), "--sql"]
    ok = subprocess.run([*command, "SELECT 1 AS x"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["rows"] == [[1]]
    refused = subprocess.run([*command, "COPY orders TO 'x.csv'"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 1 and json.loads(refused.stdout)["error"]["kind"] == "blocked"


SHOP_DDL = ("CREATE TABLE customers (id INTEGER PRIMARY KEY, name VARCHAR, country VARCHAR);\n"
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id), "
            "\"order\" INTEGER DEFAULT (length(repeat('x', 4000000000))));")


def test_check_sql_with_a_pasted_schema_file(tmp_path, capsys):
    schema = tmp_path / "shop.sql"
    schema.write_text(SHOP_DDL)
    code, out = run_cli(["check-sql", "--schema", str(schema), "--sql", 'SELECT "order" FROM orders'], capsys)
    assert code == 0 and out[0]["allowed"] and out[0]["normalized"] == 'SELECT "order" FROM orders'
    code, out = run_cli(["check-sql", "--schema", str(schema), "--sql", "SELECT * FROM products"], capsys)
    assert code == 1 and "unknown table 'products'" in out[0]["reason"]


def test_check_sql_refuses_db_and_schema_together(db, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli(["check-sql", "--db", str(db), "--schema", str(tmp_path / "x.sql"), "--sql", "SELECT 1"], capsys)


def test_sql_command_with_a_pasted_schema_checks_without_running(tmp_path, capsys, monkeypatch):
    from pipelines.sql import cli
    from tests.test_spider_evaluate import ScriptedEngine

    schema = tmp_path / "shop.sql"
    schema.write_text(SHOP_DDL)
    engine = ScriptedEngine({"How many orders?": "SELECT count(*) FROM orders",
                             "Read a file": "SELECT * FROM read_text('/etc/passwd')"})
    monkeypatch.setattr(cli, "sql_engine_from_args", lambda args: engine)
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sql", "--schema", str(schema), "--question", "How many orders?", "--no-constrain",
                              "--max-retries", "0", "--profile", "cpu"])
    assert args.func(args) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["executed"] is False and answer["error"] is None and "orders" in answer["sql"].lower()
    assert "CREATE TABLE orders" in engine.prompts[0][0]["content"]  # the pasted schema is the prompt's schema
    args = parser.parse_args(["sql", "--schema", str(schema), "--question", "Read a file", "--no-constrain",
                              "--max-retries", "0", "--profile", "cpu"])
    assert args.func(args) == 1
    assert "read_text" in json.loads(capsys.readouterr().out)["error"]
