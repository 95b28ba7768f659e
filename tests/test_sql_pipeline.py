"""The whole SQL pipeline on a tiny model: prompt -> generate -> extract -> validate -> execute -> Answer."""

import duckdb
import pytest

from pipelines.engine.transformers_engine import TransformersEngine
from pipelines.sql.databases import DuckDBDatabase, SchemaOnlyDatabase
from pipelines.sql.pipeline import Answer, Progress, ask, ask_stream, run_sql
from tests.conftest import TAUGHT_QUESTION, TAUGHT_SQL


class RecordingEngine(TransformersEngine):
    """The real engine, noting the conversations it was asked to continue."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.conversations = []

    def stream(self, messages, *args, **kwargs):
        self.conversations.append(messages)
        return super().stream(messages, *args, **kwargs)


@pytest.fixture(scope="module")
def engine(tiny_llama_dir, taught_adapter_dir):
    return RecordingEngine(str(tiny_llama_dir), str(taught_adapter_dir))


@pytest.fixture(scope="module")
def shop(shop_db):
    return DuckDBDatabase(shop_db)


def test_adapter_answers_end_to_end(engine, shop):
    answer = ask(TAUGHT_QUESTION, shop, engine)
    assert answer.ok and answer.executed, answer.error
    assert answer.columns == ["customers"] and answer.rows == [[50]] and answer.row_count == 1
    assert answer.sql.lower() == TAUGHT_SQL.lower()
    assert [a.stage for a in answer.attempts] == ["done"]
    assert answer.attempts[0].reply == TAUGHT_SQL
    t = answer.timings
    assert t.ttft_ms > 0 and t.tokens_per_s > 0 and t.generation_ms > 0
    assert t.validation_ms > 0 and t.execution_ms > 0
    assert t.total_ms >= t.generation_ms + t.execution_ms
    assert answer.database == "shop" and answer.adapter is not None


def test_stream_reports_progress_then_the_answer(engine, shop):
    events = list(ask_stream(TAUGHT_QUESTION, shop, engine))
    progress, answer = events[:-1], events[-1]
    assert isinstance(answer, Answer) and answer.ok
    assert all(isinstance(e, Progress) for e in progress)
    replies = [e.reply for e in progress if e.stage == "generating"]
    assert replies[-1] == TAUGHT_SQL and len(replies) > 1  # the SQL grows token by token
    assert progress[-1].stage == "executing"


def test_base_model_retries_with_the_error_and_keeps_every_attempt(engine, shop):
    engine.conversations.clear()
    answer = ask(TAUGHT_QUESTION, shop, engine, adapter=None, max_retries=2)
    assert not answer.ok and not answer.executed
    assert len(answer.attempts) == 3
    assert all(a.error for a in answer.attempts)
    assert answer.error == answer.attempts[-1].error
    # each retry continues the conversation with the model's reply and the error
    first, second, third = engine.conversations
    assert second[:2] == first and second[2] == {"role": "assistant", "content": answer.attempts[0].reply}
    assert answer.attempts[0].error in second[3]["content"]
    assert len(third) == 6


def test_execution_error_goes_back_to_the_model(engine, shop_db, tmp_path):
    broken = tmp_path / "broken.duckdb"
    with duckdb.connect(str(broken)) as con:  # a `customers` that fails when it is read
        con.execute("CREATE VIEW customers AS SELECT 1 AS id FROM range(3) WHERE error('the customers view is broken') IS NULL")
    database = DuckDBDatabase(shop_db)  # the prompt shows the shop's schema (what the adapter learned) ...
    database.path = broken  # ... and the sandbox runs the query on the broken file
    engine.conversations.clear()
    answer = ask(TAUGHT_QUESTION, database, engine, max_retries=1, value_hints=False)  # nothing to read hints from
    first = answer.attempts[0]
    assert first.stage == "execute" and "the customers view is broken" in first.error
    assert len(answer.attempts) == 2
    assert "the customers view is broken" in engine.conversations[1][-1]["content"]


def test_no_retries(engine, shop):
    assert len(ask(TAUGHT_QUESTION, shop, engine, adapter=None, max_retries=0).attempts) == 1


def test_schema_only_mode_validates_without_running(engine, shop):
    pasted = SchemaOnlyDatabase(shop.schema.to_ddl())
    answer = ask(TAUGHT_QUESTION, pasted, engine)
    assert answer.ok and not answer.executed and answer.rows == []
    assert answer.sql.lower() == TAUGHT_SQL.lower()


def test_hand_typed_sql(shop):
    answer = run_sql("SELECT country, count(*) AS n FROM customers GROUP BY country ORDER BY n DESC", shop)
    assert answer.ok and answer.executed and answer.columns == ["country", "n"]
    assert sum(row[1] for row in answer.rows) == 50
    refused = run_sql("DROP TABLE customers", shop)
    assert not refused.ok and refused.error.startswith("refused:")
    assert run_sql("   ", shop).error == "type a SQL query first"
    broken = run_sql("SELECT nope FROM customers", shop)
    assert not broken.ok and "nope" in broken.error


def test_decoding_follows_the_schema_grammar_and_retries_are_sampled(engine, shop):
    answer = ask(TAUGHT_QUESTION, shop, engine, adapter=None, max_retries=1)
    assert answer.constrained == "on"
    assert [a.decoding for a in answer.attempts][:2] == ["greedy", "sampled (seed 2)"][:len(answer.attempts)]
    assert all(a.grammar in ("followed", "fell back") for a in answer.attempts)
    free = ask(TAUGHT_QUESTION, shop, engine, constrain=False, max_retries=0)
    assert free.ok and free.constrained == "off" and free.attempts[0].grammar is None


def test_the_models_sqlite_runs_with_sqlites_meaning(engine, shop):
    """A SQLite-speaking model's `"DE"` is a string, as SQLite reads it; DuckDB alone would look for a column."""
    answer = run_sql('SELECT count(*) FROM customers WHERE country = "DE"', shop)
    assert not answer.ok and "DE" in answer.error  # typed by hand, SQL is DuckDB's
    verdict = shop.check('SELECT count(*) FROM customers WHERE country = "DE"', "sqlite")
    assert verdict.allowed and "'DE'" in verdict.normalized and shop.run(verdict.normalized).ok


def test_a_busy_sandbox_is_answered_at_once_without_asking_the_model_again(shop_db, monkeypatch):
    from pipelines.sql import databases
    from pipelines.sql.sandbox import failed
    from tests.test_spider_evaluate import ScriptedEngine

    monkeypatch.setattr(databases, "run_query", lambda path, sql, limits: failed(
        sql, "busy", "the SQL sandbox is busy (9 queries ahead of this one); try again in a moment"))
    engine = ScriptedEngine({TAUGHT_QUESTION: TAUGHT_SQL})
    answer = ask(TAUGHT_QUESTION, DuckDBDatabase(shop_db), engine, max_retries=2, constrain=False)
    assert answer.error.startswith("busy:") and "try again" in answer.error
    assert len(answer.attempts) == 1 and len(engine.prompts) == 1  # no retry: the query was fine


def _voting_engine(greedy: str, samples: list[str]):
    """The scripted engine with a greedy reply, and these replies for the n sampled candidates."""
    from pipelines.engine import Generation
    from tests.test_spider_evaluate import ScriptedEngine

    class SampledEngine(ScriptedEngine):
        def generate(self, conversations, params, *, adapter=None):
            self.sample_params = params
            return [[Generation(sample, 5, "stop") for sample in samples[:params.n]] for _ in conversations]

    return SampledEngine({TAUGHT_QUESTION: greedy})


WRONG = "SELECT count(*) AS customers FROM customers WHERE id < 0"
BROKEN = "SELECT nothing FROM nowhere"


def test_candidates_vote_by_result_and_the_majority_wins(shop):
    engine = _voting_engine(WRONG, [TAUGHT_SQL, BROKEN, "SELECT COUNT(id) FROM customers", TAUGHT_SQL])
    answer = ask(TAUGHT_QUESTION, shop, engine, candidates=5, max_retries=0, constrain=False)
    assert engine.sample_params.n == 4 and engine.sample_params.temperature > 0
    assert answer.ok and answer.rows == [[50]] and answer.sql.lower() == TAUGHT_SQL.lower()
    written = [WRONG, TAUGHT_SQL, BROKEN, "SELECT COUNT(id) FROM customers", TAUGHT_SQL]
    assert [sql.lower() for sql in answer.vote.pop("sql")] == [sql.lower() for sql in written]  # as normalised
    assert answer.vote == {"candidates": 5, "executed": 4, "votes": 3, "clean_votes": 3, "grounding": 0,
                           "chosen": "sample 1"}
    assert [a.decoding for a in answer.attempts] == ["sampled (vote 1)"]


def test_a_tie_goes_to_the_greedy_reply_and_errors_never_vote(shop):
    engine = _voting_engine(WRONG, [BROKEN, BROKEN, TAUGHT_SQL])
    answer = ask(TAUGHT_QUESTION, shop, engine, candidates=4, max_retries=0, constrain=False)
    assert answer.ok and answer.rows == [[0]] and answer.vote["chosen"] == "greedy" and answer.vote["votes"] == 1
    assert answer.vote["executed"] == 2


def test_when_no_candidate_runs_the_answer_is_the_greedy_error(shop):
    engine = _voting_engine(BROKEN, [BROKEN, "no sql here"])
    answer = ask(TAUGHT_QUESTION, shop, engine, candidates=3, max_retries=0, constrain=False)
    assert not answer.ok and not answer.executed and answer.rows == []
    assert answer.vote["executed"] == 0 and answer.vote["chosen"] == "greedy"
    assert answer.error == answer.attempts[0].error and "nowhere" in answer.error


def test_candidates_are_sampled_by_the_real_engine_under_the_grammar(engine, shop):
    answer = ask(TAUGHT_QUESTION, shop, engine, candidates=3, max_retries=0)
    assert answer.ok and answer.rows == [[50]], answer.vote
    assert answer.vote["candidates"] == 3 and answer.vote["votes"] >= 1 and len(answer.vote["sql"]) == 3


def test_a_result_with_rows_outvotes_empty_ones(shop):
    nothing = "SELECT id FROM customers WHERE id < 0"
    engine = _voting_engine(nothing, [nothing, "SELECT id FROM customers WHERE id = 1"])
    answer = ask(TAUGHT_QUESTION, shop, engine, candidates=3, max_retries=0, constrain=False)
    assert answer.rows == [[1]] and answer.vote["chosen"] == "sample 2" and answer.vote["votes"] == 1
    assert answer.vote["executed"] == 3


def test_a_count_per_group_shows_what_it_counts(shop):
    from tests.test_spider_evaluate import ScriptedEngine

    question = "How many orders per status?"
    engine = ScriptedEngine({question: "SELECT count(*) FROM orders GROUP BY status"})
    answer = ask(question, shop, engine, candidates=1, max_retries=0, constrain=False)
    assert answer.ok and answer.columns[0].lower() == "status" and len(answer.columns) == 2
    assert {row[0] for row in answer.rows} == {row[0] for row in shop.run("SELECT DISTINCT status FROM orders").rows}
    typed = run_sql("SELECT count(*) FROM orders GROUP BY status", shop)  # a person's SQL runs as typed
    assert typed.ok and len(typed.columns) == 1
