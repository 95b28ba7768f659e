"""eval-spider's DuckDB path (the app's own: converted database, guard, sandbox) and --predictions-in, on the tiny
fixture with real SQLite and real DuckDB."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import sqlite3

import pytest

from pipelines.errors import BadInput
from pipelines.spider.duckdb_path import (
    CACHE_FOLDER, converted_path, duckdb_exec_match, open_duckdb_database, sqlite_value)
from pipelines.spider.evaluate import ERROR_KINDS, evaluate_spider
from pipelines.spider.exec_match import exec_match
from pipelines.spider.tiny import DEV, build_tiny_spider
from tests.test_spider_evaluate import SCORABLE, SKIPPED, ScriptedEngine

LOOSE_GROUP_BY = "must appear in the GROUP BY clause"  # SQLite allows bare columns next to GROUP BY; DuckDB does not


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VOXQL_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny_spider(tmp_path_factory):
    return build_tiny_spider(tmp_path_factory.mktemp("tiny-spider"))


def _shop(spider):
    return spider / "database" / "shop" / "shop.sqlite"


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_conversion_is_cached_under_the_cache_dir(tiny_spider, tmp_path):
    first = converted_path(_shop(tiny_spider))
    assert first.parent == tmp_path / "cache" / CACHE_FOLDER and first.suffix == ".duckdb"
    stamp = first.stat().st_mtime_ns
    assert converted_path(_shop(tiny_spider)) == first and first.stat().st_mtime_ns == stamp
    database = open_duckdb_database(_shop(tiny_spider))
    assert database.path == first and database.dialect == "sqlite"
    assert sorted(database.schema.table_names()) == ["customers", "orders"]


def test_names_that_are_duckdb_keywords_convert(tmp_path):
    source = tmp_path / "kw.sqlite"
    with sqlite3.connect(source) as con:  # Spider's orchestra has a table named `show`
        con.execute('CREATE TABLE show ("order" INTEGER PRIMARY KEY, "select" TEXT)')
        con.execute("INSERT INTO show VALUES (1, 'a')")
    database = open_duckdb_database(source)
    assert database.schema.table_names() == ["show"]
    result = database.run('SELECT "order", "select" FROM "show"')
    assert result.ok and result.rows == [[1, "a"]]


@pytest.mark.parametrize("value, expected", [
    (decimal.Decimal("0.1"), 0.1), (decimal.Decimal("20.00"), 20.0), (decimal.Decimal("12"), 12), (True, 1),
    (False, 0), (dt.date(2024, 1, 5), "2024-01-05"), (dt.datetime(2024, 1, 5, 10, 20, 30), "2024-01-05 10:20:30"),
    (dt.time(7, 5), "07:05:00"), (2**70, 2**70), (None, None), ("x", "x"), (1.5, 1.5),
])
def test_sqlite_value(value, expected):
    converted = sqlite_value(value)
    assert converted == expected and type(converted) is type(expected)


@pytest.mark.parametrize("gold, predicted", [
    ("SELECT 0.1 FROM customers WHERE id = 1", "SELECT 0.1 FROM customers WHERE id = 1"),  # DuckDB: DECIMAL 0.1
    ("SELECT date('2024-01-05'), datetime('2024-01-05 10:20:30')",
     "SELECT CAST('2024-01-05' AS DATE), CAST('2024-01-05 10:20:30' AS TIMESTAMP)"),
    ("SELECT count(*) > 2, sum(age) FROM customers", "SELECT count(*) > 2, sum(age) FROM customers"),  # BOOL, HUGEINT
])
def test_duckdb_values_match_what_sqlite_returns(tiny_spider, gold, predicted):
    database = open_duckdb_database(_shop(tiny_spider))
    match = duckdb_exec_match(database, _shop(tiny_spider), predicted, gold)
    assert match.correct and match.error is None and match.ran_sql


def test_gold_through_the_duckdb_path(tiny_spider, tmp_path):
    """The gold SQL checked and run as the app runs it: right everywhere except SQLite's loose GROUP BY."""
    out = tmp_path / "gold.jsonl"
    report = evaluate_spider(tiny_spider, gold=True, path="duckdb", predictions_out=out)
    assert report.path == "duckdb" and report.model_dialect == "sqlite"
    assert (report.scored, report.skipped) == (SCORABLE, SKIPPED)
    wrong = [r for r in _read_jsonl(out) if r["correct"] is False]
    assert report.correct == SCORABLE - len(wrong) >= SCORABLE - 2
    assert all(LOOSE_GROUP_BY in r["error"] for r in wrong)  # questions 3 and 7 select a bare column
    assert set(report.error_breakdown) == set(ERROR_KINDS) and report.error_breakdown["wrong rows"] == 0
    assert report.latency_ms["questions"] == SCORABLE and report.latency_ms["p50_ms"] <= report.latency_ms["p95_ms"]
    records = [r for r in _read_jsonl(out) if r["correct"] is not None]
    assert all(r["duckdb_sql"] and "seconds" in r for r in records)


SCRIPT = {
    DEV[0][1]: "```sql\nSELECT COUNT(id) FROM customers;\n```",  # right
    DEV[1][1]: "SELECT city FROM customers",  # right once DISTINCT is removed from the gold
    DEV[2][1]: "SELECT name FROM customers ORDER BY age",  # wrong rows (order)
    DEV[3][1]: "SELECT nonsense FROM customers",  # no such column
    DEV[4][1]: "SELECT * FROM secrets",  # refused by the guard (an unknown table)
    # DEV[5]: no SQL in the reply
    DEV[6][1]: "SELECT CAST(score AS DECIMAL(4, 2)) FROM grades WHERE course = 'math'",  # DECIMAL vs REAL: wrong
    DEV[7][1]: "SELECT T1.name FROM students AS T1 JOIN grades AS T2 ON T1.student_id = T2.student_id "
               "GROUP BY T1.name ORDER BY avg(T2.score) DESC LIMIT 1",  # right
}


def test_model_through_the_duckdb_path(tiny_spider, tmp_path):
    engine = ScriptedEngine(SCRIPT)
    out = tmp_path / "pred.jsonl"
    report = evaluate_spider(tiny_spider, engine, path="duckdb", predictions_out=out)
    assert (report.scored, report.correct, report.skipped) == (SCORABLE, 3, SKIPPED)
    # The rounded DECIMAL (0.30, 4.00) is not SQLite's 0.30000000000000004: a real difference stays wrong.
    assert report.error_breakdown == {"no SQL": 1, "refused": 1, "no such column": 1, "other error": 0,
                                      "wrong rows": 2}
    assert report.guard_refused == 1
    # The app's prompt: the DuckDB file's schema, in the model's dialect (SQLite by default).
    assert len(engine.prompts) == SCORABLE and all("SQLite" in p[0]["content"] for p in engine.prompts)
    assert "BIGINT" in engine.prompts[0][0]["content"]
    records = {r["index"]: r for r in _read_jsonl(out)}
    assert records[0]["predicted_sql"] == "SELECT COUNT(id) FROM customers" and records[0]["correct"] is True
    assert records[3]["error_kind"] == "no such column" and records[4]["error_kind"] == "refused"
    assert records[5]["predicted_sql"] is None and records[5]["error_kind"] == "no SQL"
    assert report.latency_ms["questions"] == SCORABLE


def test_ask_options_reach_ask_stream(tiny_spider, monkeypatch):
    from pipelines.sql import pipeline

    seen = []
    real = pipeline.ask_stream

    def recording(*args, constrain=None, **kwargs):
        seen.append(constrain)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "ask_stream", recording)
    report = evaluate_spider(tiny_spider, ScriptedEngine(SCRIPT), path="duckdb", ask_options={"constrain": False})
    # the candidates used are recorded: 1 on an engine without cheap samples
    assert seen == [False] * SCORABLE and report.ask_options == {"constrain": False, "candidates": 1}


def test_predictions_in_rescores_both_paths(tiny_spider, tmp_path):
    first = tmp_path / "first.jsonl"
    original = evaluate_spider(tiny_spider, ScriptedEngine(SCRIPT), predictions_out=first)
    again = tmp_path / "again.jsonl"
    sqlite = evaluate_spider(tiny_spider, predictions_in=first, predictions_out=again)
    assert (sqlite.correct, sqlite.scored, sqlite.skipped) == (original.correct, original.scored, original.skipped)
    assert [r["correct"] for r in _read_jsonl(again)] == [r["correct"] for r in _read_jsonl(first)]
    assert sqlite.model == f"predictions from {first}" and sqlite.retries == 0 and sqlite.max_new_tokens is None
    duckdb = evaluate_spider(tiny_spider, predictions_in=first, path="duckdb")
    scripted = evaluate_spider(tiny_spider, ScriptedEngine(SCRIPT), path="duckdb")
    assert duckdb.correct == scripted.correct and duckdb.error_breakdown == scripted.error_breakdown


def test_predictions_in_must_match_the_split(tiny_spider, tmp_path):
    wrong = tmp_path / "other.jsonl"
    rows = [{"index": i, "db_id": db, "question": q, "predicted_sql": sql} for i, (db, q, sql) in enumerate(DEV)]
    rows[2]["question"] = "something else"
    wrong.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(BadInput, match="does not match this split: question 2"):
        evaluate_spider(tiny_spider, predictions_in=wrong)
    wrong.write_text("".join(json.dumps(row) + "\n" for row in rows[:2]))
    with pytest.raises(BadInput, match="no prediction for question 2"):
        evaluate_spider(tiny_spider, predictions_in=wrong)
    with pytest.raises(BadInput, match="no predictions file"):
        evaluate_spider(tiny_spider, predictions_in=tmp_path / "missing.jsonl")


def test_sqlite_path_transpiles_duckdb_sql_only_when_it_fails(tiny_spider):
    shop = _shop(tiny_spider)
    gold = "SELECT city FROM customers WHERE name = 'Ann'"
    duckdb_flavour = "SELECT city FROM customers WHERE name ILIKE 'ann'"  # no ILIKE in SQLite
    assert exec_match(shop, duckdb_flavour, gold).error  # as written it fails
    match = exec_match(shop, duckdb_flavour, gold, transpile_from="duckdb")
    assert match.correct and match.transpiled and "LIKE" in match.ran_sql
    # SQLite SQL that runs is never rewritten, right or wrong.
    sqlite_sql = 'SELECT city FROM customers WHERE name = "Ann"'
    match = exec_match(shop, sqlite_sql, gold, transpile_from="duckdb")
    assert match.correct and not match.transpiled and match.ran_sql is None
    match = exec_match(shop, "SELECT name FROM customers", gold, transpile_from="duckdb")
    assert not match.correct and not match.transpiled
    match = exec_match(shop, "SELECT nonsense FROM customers", gold, transpile_from="duckdb")
    assert "nonsense" in match.error and not match.transpiled


def test_cli_both_paths_write_two_reports(tiny_spider, tmp_path, capsys):
    from pipelines.__main__ import main

    out = tmp_path / "gold.json"
    assert main(["eval-spider", "--spider-dir", str(tiny_spider), "--gold", "--path", "both", "--out", str(out),
                 "--predictions-out", str(tmp_path / "gold.jsonl")]) == 0
    sqlite = json.loads((tmp_path / "gold-sqlite.json").read_text())
    duckdb = json.loads((tmp_path / "gold-duckdb.json").read_text())
    assert (sqlite["path"], sqlite["execution_accuracy"]) == ("sqlite", 1.0)
    assert duckdb["path"] == "duckdb" and duckdb["scored"] == SCORABLE
    for report in (sqlite, duckdb):
        assert report["command"].startswith("python -m pipelines") and report["date"] and report["versions"]
        assert set(report["error_breakdown"]) == set(ERROR_KINDS) and "p95_ms" in report["latency_ms"]
    assert (tmp_path / "gold-sqlite.jsonl").is_file() and (tmp_path / "gold-duckdb.jsonl").is_file()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["path"] for line in lines] == ["sqlite", "duckdb"]


def test_cli_gold_and_predictions_in_exclude_each_other(tiny_spider, tmp_path, capsys):
    from pipelines.__main__ import main

    assert main(["eval-spider", "--spider-dir", str(tiny_spider), "--gold", "--predictions-in", "x.jsonl"]) == 1
    assert capsys.readouterr().err.strip().startswith("error: --gold and --predictions-in")
