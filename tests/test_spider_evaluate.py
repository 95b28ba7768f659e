"""eval-spider: evaluate_spider and its CLI on the tiny fixture, with a scripted engine and the tiny random model."""

from __future__ import annotations

import json
import threading
import time

import pytest

from pipelines.engine import Engine, EngineInfo, Generation, SamplingParams, TextStream
from pipelines.errors import BadInput
from pipelines.spider.evaluate import evaluate_spider, select_examples
from pipelines.spider.tiny import DEV, build_tiny_spider

SCORABLE = sum(db != "ghost" for db, _, _ in DEV)
SKIPPED = len(DEV) - SCORABLE


class ScriptedEngine(Engine):
    """Replies from a {question: reply} script (anything else gets prose without SQL); records the prompts."""

    def __init__(self, script: dict[str, str], on_stream=None):
        self.script = script
        self.prompts: list[list[dict]] = []
        self.on_stream = on_stream
        self.info = EngineInfo(model="scripted", adapters={}, default_adapter=None, engine="test", device="cpu",
                               dtype="none")

    def _reply(self, messages) -> str:
        return self.script.get(messages[-1]["content"], "I am not sure how to answer that.")

    def generate(self, conversations, params=SamplingParams(), *, adapter=None):
        return [[Generation(self._reply(m), 5, "stop")] for m in conversations]

    def stream(self, messages, params=SamplingParams(), *, adapter=None):
        self.prompts.append(messages)
        if self.on_stream:
            self.on_stream(len(self.prompts))
        reply = self._reply(messages)
        stream = TextStream(pieces=iter(()), cancel_event=threading.Event())

        def pieces():
            stream.first_token_at = time.perf_counter()
            for word in reply.split(" "):
                yield word + " "
            stream.finished_at = time.perf_counter()
            stream.generation = Generation(reply, len(reply.split()), "stop")

        stream.pieces = pieces()
        return stream

    def load_adapter(self, spec, name):
        raise NotImplementedError


@pytest.fixture(scope="module")
def tiny_spider(tmp_path_factory):
    return build_tiny_spider(tmp_path_factory.mktemp("tiny-spider"))


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_gold_scores_one_and_counts_skipped(tiny_spider, tmp_path):
    out = tmp_path / "gold.jsonl"
    report = evaluate_spider(tiny_spider, gold=True, predictions_out=out)
    assert report.execution_accuracy == 1.0
    assert (report.scored, report.correct, report.skipped, report.gold_failed) == (SCORABLE, SCORABLE, SKIPPED, 0)
    assert report.skipped_databases == {"ghost": SKIPPED}
    assert sum(s.scored for s in report.by_hardness.values()) == SCORABLE
    assert sum(s.skipped for s in report.by_hardness.values()) == SKIPPED
    assert {level: s.scored for level, s in report.by_hardness.items()} == {"easy": 4, "medium": 1, "hard": 1,
                                                                          "extra": 2}
    assert report.hardness_source == {"official": 1, "parsed": len(DEV) - 1}
    records = _read_jsonl(out)
    assert [r["index"] for r in records] == list(range(len(DEV)))
    for record, (db_id, question, gold) in zip(records, DEV):
        assert {"index", "db_id", "question", "predicted_sql", "gold_sql", "correct"} <= set(record)
        assert (record["db_id"], record["question"], record["gold_sql"]) == (db_id, question, gold)
        assert record["correct"] is (None if db_id == "ghost" else True)
    data = report.to_dict()
    for key in ("execution_accuracy", "scored", "correct", "skipped", "by_hardness", "model", "adapter", "split",
                "limit", "seed"):
        assert key in data
    json.dumps(data)


def test_train_split_gold(tiny_spider):
    report = evaluate_spider(tiny_spider, split="train", gold=True)
    assert (report.execution_accuracy, report.scored, report.skipped) == (1.0, 3, 1)
    assert report.hardness_source == {"parsed": 4}


def test_seeded_sample():
    examples = list(range(100))
    a = select_examples(examples, 10, seed=0)
    assert a == select_examples(examples, 10, seed=0) and a == sorted(a) and len(set(a)) == 10
    assert a != select_examples(examples, 10, seed=1)
    assert select_examples(examples, 500, seed=0) == examples and select_examples(examples, None, 3) == examples
    with pytest.raises(BadInput):
        select_examples(examples, 0, seed=0)


def test_sample_counts_skipped_questions_too(tiny_spider):
    report = evaluate_spider(tiny_spider, gold=True, limit=6, seed=4)
    assert report.questions == 6 and report.scored + report.skipped == 6 and report.limit == 6


def test_scripted_predictions_are_scored_through_the_pipeline(tiny_spider, tmp_path):
    script = {
        DEV[0][1]: "```sql\nSELECT COUNT(id) FROM customers;\n```",  # right, other SQL
        DEV[1][1]: "SELECT city FROM customers",  # right once DISTINCT is removed from the gold
        DEV[2][1]: "SELECT name FROM customers ORDER BY age",  # wrong order
        DEV[3][1]: "SELECT nonsense FROM customers",  # runs into an error
        DEV[4][1]: "SELECT * FROM secrets",  # refused by the guard, and fails in SQLite too
        DEV[6][1]: "SELECT score FROM grades WHERE course = \"math\"",  # SQLite's "..." string: right
        # SQLite's total() is unknown to the guard (a DuckDB function list): refused, yet scored right as the
        # official evaluation would.
        DEV[7][1]: "SELECT T1.name FROM students AS T1 JOIN grades AS T2 ON T1.student_id = T2.student_id "
                   "GROUP BY T1.student_id ORDER BY total(T2.score) / count(T2.score) DESC LIMIT 1",
    }
    engine = ScriptedEngine(script)
    out = tmp_path / "pred.jsonl"
    seen = []
    report = evaluate_spider(tiny_spider, engine, progress=lambda done, total: seen.append((done, total)),
                             predictions_out=out)
    assert (report.scored, report.correct, report.skipped) == (SCORABLE, 4, SKIPPED)
    assert report.execution_accuracy == pytest.approx(4 / SCORABLE)
    assert report.model == "scripted" and report.adapter is None and report.retries == 0
    assert report.failures == {"SQL error": 2, "no SQL in the reply": 1, "wrong result": 1}
    assert report.guard_refused == 2 and report.guard_refused_correct == 1
    assert seen == [(i, len(DEV)) for i in range(1, len(DEV) + 1)]
    # Only scorable questions reach the model, with the app's prompt in the SQLite dialect.
    assert len(engine.prompts) == SCORABLE
    assert all("SQLite" in p[0]["content"] and p[-1]["role"] == "user" for p in engine.prompts)
    records = {r["index"]: r for r in _read_jsonl(out)}
    assert records[0]["predicted_sql"] == "SELECT COUNT(id) FROM customers" and records[0]["correct"] is True
    assert records[3]["correct"] is False and "nonsense" in records[3]["error"]
    assert records[5]["predicted_sql"] is None and records[5]["correct"] is False
    assert records[8]["correct"] is None and records[8]["skipped"]


def test_retries_give_the_model_its_error(tiny_spider):
    engine = ScriptedEngine({DEV[0][1]: "SELECT nonsense FROM customers"})
    report = evaluate_spider(tiny_spider, engine, retries=1, limit=1, seed=0)
    assert report.retries == 1 and report.scored == 1 and not report.correct
    assert len(engine.prompts) == 2 and "failed" in engine.prompts[1][-1]["content"]


def test_cancel_returns_a_partial_report(tiny_spider):
    cancel = threading.Event()
    engine = ScriptedEngine({}, on_stream=lambda n: cancel.set() if n == 2 else None)
    report = evaluate_spider(tiny_spider, engine, cancel=cancel)
    assert report.cancelled and report.scored == 1 and len(engine.prompts) == 2


def test_needs_an_engine_unless_gold(tiny_spider):
    with pytest.raises(BadInput):
        evaluate_spider(tiny_spider)


def test_tiny_model_generation_path(tiny_spider, tiny_llama_dir, tmp_path):
    """The real engine and pipeline: random-model predictions are junk, so only mechanics are asserted."""
    from pipelines.engine import get_engine

    engine = get_engine(str(tiny_llama_dir), None)
    out = tmp_path / "tiny.jsonl"
    report = evaluate_spider(tiny_spider, engine, adapter=None, params=SamplingParams(max_new_tokens=8),
                             predictions_out=out)
    assert report.scored == SCORABLE and report.skipped == SKIPPED and 0 <= report.correct <= SCORABLE
    records = _read_jsonl(out)
    assert len(records) == len(DEV)
    for record in records:
        if record["db_id"] == "ghost":
            assert record["correct"] is None
        elif record["predicted_sql"] is None or record.get("error"):
            assert record["correct"] is False  # a reply without SQL, or SQL that fails, is wrong
    assert sum(report.failures.values()) == report.scored - report.correct


def test_cli_gold(tiny_spider, tmp_path, capsys):
    from pipelines.__main__ import main

    out, predictions = tmp_path / "r.json", tmp_path / "p.jsonl"
    code = main(["eval-spider", "--spider-dir", str(tiny_spider), "--gold", "--out", str(out),
                 "--predictions-out", str(predictions)])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["execution_accuracy"] == 1.0 and data["scored"] == SCORABLE and data["skipped"] == SKIPPED
    assert data["command"].startswith("python -m pipelines") and data["date"] and data["versions"]["sqlglot"]
    assert len(predictions.read_text().splitlines()) == len(DEV)
    assert json.loads(capsys.readouterr().out)["execution_accuracy"] == 1.0


def test_cli_model(tiny_spider, tiny_llama_dir, tmp_path):
    from pipelines.__main__ import main

    out = tmp_path / "r.json"
    code = main(["eval-spider", "--spider-dir", str(tiny_spider), "--model", str(tiny_llama_dir), "--adapter",
                 "none", "--limit", "3", "--seed", "1", "--max-new-tokens", "4", "--out", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert (data["limit"], data["seed"], data["adapter"], data["questions"]) == (3, 1, None, 3)
    assert data["scored"] + data["skipped"] == 3


def test_cli_bad_folder_is_one_line(tmp_path, capsys):
    from pipelines.__main__ import main

    assert main(["eval-spider", "--spider-dir", str(tmp_path / "nope"), "--gold"]) == 1
    assert capsys.readouterr().err.strip().startswith("error: no Spider folder")


def test_resume_asks_only_what_the_stopped_run_did_not(tiny_spider, tmp_path):
    script = {DEV[0][1]: "SELECT COUNT(id) FROM customers", DEV[3][1]: "SELECT nonsense FROM customers",
              DEV[6][1]: "SELECT score FROM grades WHERE course = 'math'"}
    out = tmp_path / "pred.jsonl"
    whole = evaluate_spider(tiny_spider, ScriptedEngine(script), predictions_out=tmp_path / "whole.jsonl")
    cancel = threading.Event()
    stopped = evaluate_spider(tiny_spider, ScriptedEngine(script, on_stream=lambda n: cancel.set() if n == 4 else None),
                              cancel=cancel, predictions_out=out)
    assert stopped.cancelled and stopped.scored == 3
    with out.open("a") as handle:  # a kill mid-write leaves half a line
        handle.write('{"index": 4, "db_id": "sh')
    engine = ScriptedEngine(script)
    resumed = evaluate_spider(tiny_spider, engine, predictions_out=out, resume=True)
    assert resumed.resumed == 3 and len(engine.prompts) == SCORABLE - 3
    assert (resumed.scored, resumed.correct, resumed.skipped) == (whole.scored, whole.correct, whole.skipped)
    assert resumed.error_breakdown == whole.error_breakdown and resumed.latency_ms["questions"] == whole.scored
    lines = _read_jsonl(out)
    assert sorted(r["index"] for r in lines if not r.get("skipped")) == sorted(
        r["index"] for r in _read_jsonl(tmp_path / "whole.jsonl") if not r.get("skipped"))


def test_resume_needs_the_predictions_file(tiny_spider):
    with pytest.raises(BadInput, match="predictions file"):
        evaluate_spider(tiny_spider, ScriptedEngine({}), resume=True)


@pytest.mark.parametrize("path", ["sqlite", "duckdb"])
def test_revote_chooses_again_among_the_recorded_candidates(tiny_spider, tmp_path, path):
    """A recorded run whose vote went to the majority that ignores "math": choosing again, the model not asked,
    picks the candidate that uses the question's value; the recorded latency is kept."""
    everyone, math = "SELECT score FROM grades", "SELECT score FROM grades WHERE course = 'math'"
    recorded = tmp_path / "recorded.jsonl"
    lines = [{"index": i, "db_id": db, "question": question, "predicted_sql": everyone if i == 6 else None,
              "seconds": 2.5, **({"vote": {"sql": [everyone, everyone, math]}} if i == 6 else {})}
             for i, (db, question, _) in enumerate(DEV)]
    recorded.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "revoted.jsonl"
    as_recorded = evaluate_spider(tiny_spider, predictions_in=recorded, path=path)
    revoted = evaluate_spider(tiny_spider, predictions_in=recorded, path=path, revote=True, predictions_out=out,
                              model_dialect="duckdb")
    assert (as_recorded.correct, revoted.correct) == (0, 1) and revoted.revote
    [line] = [r for r in _read_jsonl(out) if r["index"] == 6]
    assert line["correct"] and line["vote"]["chosen"] == "sample 2" and line["seconds"] == 2.5
    with pytest.raises(BadInput, match="predictions_in"):
        evaluate_spider(tiny_spider, ScriptedEngine({}), revote=True)
