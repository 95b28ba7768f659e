"""The bundled examples: every one has gold SQL that runs on its demo database, the verification file is what the
shipped cpu model does now, and the Ask tab marks the examples that model gets wrong."""

from __future__ import annotations

import datetime as dt
import decimal
import json

import pytest

from pipelines.sql.examples import (
    NEEDS_GPU, NOT_VERIFIED, VERIFIED_FILE, Example, example_labels, load_examples, rows_match, verify_examples)


@pytest.fixture(scope="module")
def demos():
    from pipelines.sql.demo_data import ensure_demo_databases

    return ensure_demo_databases()


def test_every_example_has_gold_sql_that_answers_on_its_database(demos):
    from pipelines.sql.databases import DuckDBDatabase
    from pipelines.sql.pipeline import run_sql

    examples = load_examples()
    assert set(examples) == set(demos)
    for name, items in examples.items():
        assert [e.question for e in items] == demos[name].examples  # the Ask tab shows these questions
        database = DuckDBDatabase(demos[name].path, name=name)
        for example in items:
            gold = run_sql(example.gold_sql, database)  # the guard and the sandbox, as the app runs SQL
            assert gold.ok and gold.executed and gold.row_count and not gold.truncated, example.question
            assert all(value is not None for row in gold.rows for value in row), example.question


def test_rows_match_follows_the_spider_rules():
    assert rows_match([[1, "a"], [2, "b"]], [["b", 2], ["a", 1]], "SELECT x, y FROM t")  # any row and column order
    assert not rows_match([[1], [2]], [[2], [1]], "SELECT x FROM t ORDER BY x")  # ORDER BY: order counts
    assert not rows_match([[1], [1]], [[1]], "SELECT x FROM t")  # duplicates count
    assert not rows_match([[1, 2]], [[1]], "SELECT x, y FROM t")  # an extra or missing column is wrong
    # Values that differ only in type, and doubles added in another order, are equal.
    assert rows_match([[decimal.Decimal("0.10")]], [[0.1]], "SELECT 1")
    assert rows_match([[0.1 + 0.2 + 0.3]], [[0.3 + 0.2 + 0.1]], "SELECT 1")
    assert rows_match([[True]], [[1]], "SELECT 1")
    assert not rows_match([[dt.date(2026, 1, 1)]], [[dt.datetime(2026, 1, 1)]], "SELECT 1")
    assert not rows_match([[1.5]], [[1.6]], "SELECT 1")


def test_labels_mark_known_wrong_and_unverified_examples(tmp_path):
    verified = tmp_path / "verified.json"
    verified.write_text(json.dumps({"profile": "cpu", "examples": [
        {"db": "shop", "question": "right one", "correct": True},
        {"db": "shop", "question": "wrong one", "correct": False}]}))
    questions = ["right one", "wrong one", "new one"]
    assert example_labels("shop", questions, "cpu", verified) == [
        "right one", f"wrong one ({NEEDS_GPU})", f"new one ({NOT_VERIFIED})"]
    assert example_labels("shop", questions, "gpu", verified) == questions  # nothing is known of another profile
    assert example_labels("shop", ["right one"], "cpu", tmp_path / "missing.json") == [f"right one ({NOT_VERIFIED})"]


def test_the_committed_file_covers_every_example_with_its_gold():
    data = json.loads(VERIFIED_FILE.read_text())
    assert data["profile"] == "cpu" and data["command"].startswith("python -m pipelines verify-examples")
    assert data["date"] and data["versions"]["duckdb"]
    expected = [(e.database, e.question, e.gold_sql) for items in load_examples().values() for e in items]
    assert [(r["db"], r["question"], r["gold_sql"]) for r in data["examples"]] == expected
    assert data["correct"] == sum(r["correct"] for r in data["examples"]) and data["total"] == len(expected)
    for record in data["examples"]:
        assert {"predicted_sql", "correct", "seconds"} <= set(record)


def test_verification_scores_a_scripted_model(demos):
    from tests.test_spider_evaluate import ScriptedEngine

    example = load_examples()["concert_singer"][0]
    wrong = Example("concert_singer", "How many stadiums?", "SELECT count(*) FROM stadium")
    engine = ScriptedEngine({example.question: "SELECT COUNT(Singer_ID) FROM singer",
                             wrong.question: "SELECT count(*) FROM singer"})
    result = verify_examples(engine, examples={"concert_singer": [example, wrong]}, demos=demos, max_retries=0)
    right_record, wrong_record = result["examples"]
    assert right_record["correct"] and right_record["predicted_sql"] == "SELECT COUNT(Singer_ID) FROM singer"
    assert not wrong_record["correct"] and wrong_record["attempts"] == 1
    assert (result["correct"], result["total"]) == (1, 2)


def test_the_shipped_cpu_model_still_answers_as_the_file_says(demos):
    """Runs the production `ask` with the cpu profile on every example, with the file's retries (0: one generation
    each, one to three minutes on 2 cores): fails when
    results/examples-verified.json has gone stale; regenerate it with `python -m pipelines verify-examples`."""
    from pipelines.engine import get_engine
    from pipelines.errors import ModelNotAvailable
    from pipelines.profiles import resolve_profile

    profile = resolve_profile("cpu")
    if profile.sql_adapter is None:
        pytest.skip("the cpu profile's adapter is not in assets/ (a checkout without it)")
    try:
        engine = get_engine(profile.sql_model, profile.sql_adapter)
    except ModelNotAvailable as error:
        pytest.skip(f"the embedded model is not installed: {error}")
    data = json.loads(VERIFIED_FILE.read_text())
    if engine.info.engine != data["engine"]:  # e.g. llama.cpp not built here: another engine answers otherwise
        pytest.skip(f"the file was made with {data['engine']}; the default engine here is {engine.info.engine}")
    committed = {(r["db"], r["question"]): r for r in data["examples"]}
    now = verify_examples(engine, demos=demos, max_retries=data["max_retries"], **data["ask_options"])["examples"]
    changed = [f"{r['db']}: {r['question']!r} is now {'right' if r['correct'] else 'wrong'} "
               f"({r['predicted_sql']!r}; the file has {committed[(r['db'], r['question'])]['predicted_sql']!r})"
               for r in now if r["correct"] != committed[(r["db"], r["question"])]["correct"]]
    assert not changed, "results/examples-verified.json is stale; run `python -m pipelines verify-examples`:\n" + \
        "\n".join(changed)
