"""Training data: Spider folders and JSONL files -> the app's prompt + the gold SQL, dev kept out."""

from __future__ import annotations

import json

import pytest

from pipelines.errors import BadInput
from pipelines.spider.tiny import DEV, build_tiny_spider
from pipelines.training.sql_data import (
    DATABASE_MISSING,
    IN_DEV,
    TOO_LONG,
    build_dataset,
    load_training_data,
    tidy_sql,
)


@pytest.fixture(scope="module")
def tiny_spider(tmp_path_factory):
    return build_tiny_spider(tmp_path_factory.mktemp("tiny-spider"))


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


def test_tidy_sql_collapses_spaces_but_not_inside_quotes():
    assert tidy_sql("SELECT count(*)  FROM head WHERE age  >  56 ;") == "SELECT count(*) FROM head WHERE age > 56"
    assert tidy_sql("SELECT name FROM t\n  WHERE name = 'a  b'") == "SELECT name FROM t WHERE name = 'a  b'"
    assert tidy_sql('SELECT "two  spaces" FROM t') == 'SELECT "two  spaces" FROM t'


def test_spider_folder_uses_train_only_and_skips_missing_databases(tiny_spider):
    data = load_training_data(tiny_spider)
    assert data.kind == "spider" and data.rows == 4
    assert [e.db_id for e in data.examples] == ["shop", "shop", "school"]
    assert data.skipped == {DATABASE_MISSING: 1} and data.skipped_databases == {"ghost": 1}
    example = data.examples[0]
    system, user = example.messages
    # The app's prompt: SQLite dialect for Spider, the schema as DDL, the question as the user turn.
    assert "SQLite" in system["content"] and "CREATE TABLE customers" in system["content"]
    assert user == {"role": "user", "content": "How many orders are paid?"}
    record = example.record()
    assert record["prompt"] == list(example.messages)
    assert record["completion"] == [
        {"role": "assistant", "content": "SELECT count(*) FROM orders WHERE status = 'paid'"}]
    assert not {q for _, q, _ in DEV} & {e.question for e in data.examples}


def test_jsonl_rows_with_schema_or_db_id_and_dev_questions_dropped(tmp_path, tiny_spider):
    rows = [
        {"question": "How many orders?", "query": "SELECT count(*) FROM orders",
         "schema": "CREATE TABLE orders (id INTEGER PRIMARY KEY, total DECIMAL(10,2));"},
        {"question": "Names of students", "query": "SELECT name FROM students", "db_id": "school"},
        {"question": DEV[0][1], "query": DEV[0][2], "db_id": DEV[0][0]},  # a dev question: never trained on
        {"question": "Anything on the ghost db", "query": "SELECT 1", "db_id": "ghost"},
    ]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n\n")
    data = load_training_data(path, schemas_dir=tiny_spider)
    assert data.kind == "jsonl" and data.rows == 4
    assert [e.question for e in data.examples] == ["How many orders?", "Names of students"]
    assert data.skipped == {IN_DEV: 1, DATABASE_MISSING: 1}
    orders, singers = data.examples
    assert "DuckDB" in orders.messages[0]["content"] and "CREATE TABLE orders" in orders.messages[0]["content"]
    assert "SQLite" in singers.messages[0]["content"]
    assert orders.origin == "mine.jsonl:1"


def test_jsonl_errors_are_clear(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "q", "query": "SELECT 1", "db_id": "x"}) + "\n")
    with pytest.raises(BadInput, match="tables.json"):
        load_training_data(path)
    path.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(BadInput, match="bad.jsonl:1"):
        load_training_data(path)
    with pytest.raises(BadInput, match="no such training data"):
        load_training_data(tmp_path / "missing.jsonl")


def test_max_examples_is_a_seeded_sample(tiny_spider):
    a = load_training_data(tiny_spider, max_examples=2, seed=1)
    b = load_training_data(tiny_spider, max_examples=2, seed=1)
    assert [e.origin for e in a.examples] == [e.origin for e in b.examples]
    assert len(a.examples) == 2 and a.sampled_from == 3


def test_build_dataset_drops_examples_over_max_length(tiny_spider, tokenizer):
    data = load_training_data(tiny_spider)
    dataset, stats = build_dataset(data, tokenizer, max_length=None)
    assert len(dataset) == 3 and stats.dropped_too_long == 0 and stats.p50 < stats.max
    data = load_training_data(tiny_spider)
    dataset, stats = build_dataset(data, tokenizer, max_length=stats.p50)
    assert 0 < stats.dropped_too_long < 3 and len(dataset) == 3 - stats.dropped_too_long
    assert data.skipped[TOO_LONG] == stats.dropped_too_long
    with pytest.raises(BadInput, match="max_length"):
        build_dataset(load_training_data(tiny_spider), tokenizer, max_length=5)


def test_duckdb_targets_and_value_hints_use_the_apps_prompt(tiny_spider, tmp_path, monkeypatch):
    monkeypatch.setenv("VOXQL_CACHE", str(tmp_path))  # the DuckDB copies of the tiny databases go here
    data = load_training_data(tiny_spider, value_hints=True, target_dialect="duckdb")
    paid = data.examples[0]
    system, user = paid.messages
    # The prompt asks for DuckDB, and lists what the text columns hold (read from the SQLite file)
    assert "DuckDB" in system["content"] and "CREATE TABLE orders" in system["content"]
    assert "-- Values matching the question: orders.status 'paid'" in system["content"]
    assert paid.query == "SELECT COUNT(*) FROM orders WHERE status = 'paid'"  # the guard's DuckDB rendering
    assert [e.origin for e in data.examples] == [e.origin for e in load_training_data(tiny_spider).examples]


def test_a_gold_query_whose_duckdb_rendering_gives_other_rows_is_dropped(tiny_spider, tmp_path, monkeypatch):
    from pipelines.spider.data import database_path, load_schemas
    from pipelines.spider.duckdb_path import open_duckdb_database
    from pipelines.spider.sqlite_db import SQLiteDatabase
    from pipelines.training.sql_data import duckdb_target

    monkeypatch.setenv("VOXQL_CACHE", str(tmp_path))
    path = database_path(tiny_spider, "shop")
    sqlite_db = SQLiteDatabase(path, load_schemas(tiny_spider)["shop"])
    duckdb_db = open_duckdb_database(path, model_dialect="duckdb")
    # SQLite sorts NULLs first and the target drops NULLS FIRST: an order over a column without NULLs keeps its
    # target; over `age` (Cid's is NULL) DuckDB would put Cid last, other rows, so that example is dropped.
    assert duckdb_target("SELECT name FROM customers ORDER BY name", sqlite_db, duckdb_db) == (
        "SELECT name FROM customers ORDER BY name")
    assert duckdb_target("SELECT name FROM customers ORDER BY age", sqlite_db, duckdb_db) is None
    assert duckdb_target('SELECT count(*) FROM orders WHERE status = "paid"', sqlite_db, duckdb_db) == (
        "SELECT COUNT(*) FROM orders WHERE status = 'paid'")
    assert duckdb_target("SELECT name FROM no_such_table", sqlite_db, duckdb_db) is None


def test_synthetic_examples_are_seeded_and_every_query_runs(tmp_path):
    import duckdb

    from pipelines.training.synthetic_sql import synthetic_examples

    first = synthetic_examples(12, seed=3, folder=tmp_path / "a")
    again = synthetic_examples(12, seed=3, folder=tmp_path / "b")
    other = synthetic_examples(12, seed=4, folder=tmp_path / "c")
    assert [(e.question, e.query) for e in first] == [(e.question, e.query) for e in again]
    assert [(e.question, e.query) for e in first] != [(e.question, e.query) for e in other]
    for example in first:
        with duckdb.connect(str(example.database), read_only=True) as connection:
            connection.execute(example.query).fetchall()  # raises if the SQL does not run on its data
    assert any("INTERVAL" in e.query for e in first + other) and any("GROUP BY" in e.query for e in first + other)


def test_synthetic_examples_join_the_training_data_in_the_apps_prompt(tiny_spider, tmp_path, monkeypatch):
    monkeypatch.setenv("VOXQL_CACHE", str(tmp_path))
    data = load_training_data(tiny_spider, value_hints=True, target_dialect="duckdb", synthetic=5)
    generated = [e for e in data.examples if e.origin.startswith("synthetic#")]
    assert len(generated) == 5 and data.summary()["synthetic"] == 5 and "plus 5 synthetic" in data.describe()
    for example in generated:
        assert "DuckDB" in example.messages[0]["content"] and "-- Example values:" in example.messages[0]["content"]


def test_unknown_target_dialect_is_refused(tiny_spider):
    with pytest.raises(BadInput, match="target_dialect"):
        load_training_data(tiny_spider, target_dialect="oracle")


def test_analytics_evaluation_scores_the_apps_answers_and_a_revote_needs_no_model(tmp_path):
    from pipelines.training.synthetic_sql import evaluate_analytics, synthetic_examples
    from tests.test_spider_evaluate import ScriptedEngine

    examples = synthetic_examples(3, 7, tmp_path)
    # right, wrong (rows of another query), and no SQL at all
    engine = ScriptedEngine({examples[0].question: examples[0].query,
                             examples[1].question: "SELECT 1 AS nothing_asked"})
    report = evaluate_analytics(engine, 3, seed=7, folder=tmp_path, ask_options={"candidates": 1})
    assert [r["correct"] for r in report["records"]] == [True, False, False] and report["correct"] == 1
    assert report["records"][2]["error"] == "the reply contains no SQL query"

    again = evaluate_analytics(None, 3, seed=7, folder=tmp_path, recorded=report["records"])
    assert [r["correct"] for r in again["records"]] == [True, False, False]
    assert again["records"][1]["predicted_sql"] == report["records"][1]["predicted_sql"]
    with pytest.raises(BadInput, match="other questions"):
        evaluate_analytics(None, 3, seed=8, folder=tmp_path, recorded=report["records"])
