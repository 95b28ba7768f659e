"""Spider execution accuracy (EX), as the official test-suite evaluation computes it.

Predictions come from the app's own SQL pipeline (`pipelines.sql.pipeline.ask_stream`: the same prompt, decoding,
extraction, guard and self-correction) over each question's SQLite database, one question at a time; the
default `retries=0` is the official single-shot number. Each prediction (the SQL of the pipeline's last
attempt) is then scored by `exec_match` against the gold SQL in SQLite, exactly as the official evaluation
scores a predictions file: the guard's verdict does not decide correctness (a query it refuses is still run,
read-only, and counted right if it matches); `guard_refused` says how often that happened.

`path="duckdb"` asks and runs every question as the app does instead (`pipelines.spider.duckdb_path`): the
database converted to DuckDB by the app's importer, the prediction checked by the guard and run in the sandbox,
the sandbox's rows scored against the gold run in SQLite with the same official rules. There a refused query is
wrong, because in the app it never runs. `predictions_in` scores the SQL of an earlier `predictions_out` file in
either path, with no model.

Questions whose database file is missing are `skipped`: counted, listed per database, never scored. A question
whose gold SQL fails to run is `gold_failed`: counted, never scored (the official code would stop there).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipelines.engine import DEFAULT_ADAPTER, Engine, SamplingParams
from pipelines.errors import BadInput
from pipelines.spider import SPIDER_DIALECT
from pipelines.spider.data import SpiderExample, database_path, load_schemas, load_split
from pipelines.spider.duckdb_path import duckdb_exec_match, open_duckdb_database
from pipelines.spider.exec_match import exec_match
from pipelines.spider.hardness import HARDNESS_LEVELS, example_hardness
from pipelines.spider.sqlite_db import DEFAULT_TIMEOUT_S, SQLiteDatabase
from pipelines.sql.extract import extract_sql

GOLD_MODEL = "gold SQL (--gold)"


@dataclass
class HardnessScore:
    scored: int = 0
    correct: int = 0
    skipped: int = 0

    @property
    def execution_accuracy(self) -> float | None:
        return self.correct / self.scored if self.scored else None

    def to_dict(self) -> dict:
        return {"execution_accuracy": self.execution_accuracy, "scored": self.scored, "correct": self.correct,
                "skipped": self.skipped}


@dataclass
class EvalReport:
    split: str
    limit: int | None
    seed: int
    model: str
    adapter: str | None
    gold: bool = False
    retries: int = 0
    questions: int = 0  # selected for this run (the split, or the seeded sample of `limit`)
    scored: int = 0
    correct: int = 0
    skipped: int = 0  # database file missing: never scored
    gold_failed: int = 0  # gold SQL did not run: never scored
    by_hardness: dict[str, HardnessScore] = field(default_factory=lambda: {h: HardnessScore() for h in HARDNESS_LEVELS})
    skipped_databases: dict[str, int] = field(default_factory=dict)
    path: str = "sqlite"  # where predictions run: "sqlite" (the file as written) or "duckdb" (the app's path)
    model_dialect: str = SPIDER_DIALECT  # the dialect the model is told to write and the guard parses
    predictions_in: str | None = None  # a predictions JSONL scored instead of a model
    revote: bool = False  # its recorded candidates were chosen among again (vote_on_candidates)
    failures: dict[str, int] = field(default_factory=dict)  # why wrong predictions failed to run, by kind
    error_breakdown: dict[str, int] = field(default_factory=dict)  # every wrong prediction, by ERROR_KINDS
    latency_ms: dict = field(default_factory=dict)  # per question (the Answer's total time): p50, p95, mean
    transpiled: int = 0  # SQLite path: predictions that ran only after transpiling them to SQLite
    transpiled_correct: int = 0
    transpile_from: str | None = None
    ask_options: dict = field(default_factory=dict)  # extra keyword arguments given to ask_stream
    guard_refused: int = 0  # predictions the app's guard refused (scored anyway, as the official evaluation would)
    guard_refused_correct: int = 0
    hardness_source: dict[str, int] = field(default_factory=dict)  # "official" (dev.json's sql) / "parsed" (sqlglot)
    generation: str = "pipelines.sql.pipeline.ask_stream, one question at a time"
    keep_distinct: bool = False
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_new_tokens: int | None = None
    cancelled: bool = False
    resumed: int = 0  # questions answered by the run this one resumed (their SQL scored again, their time kept)
    elapsed_s: float = 0.0
    seconds_per_question: float | None = None

    @property
    def execution_accuracy(self) -> float | None:
        return self.correct / self.scored if self.scored else None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["by_hardness"] = {level: score.to_dict() for level, score in self.by_hardness.items()}
        return {"execution_accuracy": self.execution_accuracy, **data}


ProgressCallback = Callable[[int, int], None]


def select_examples(examples: list[SpiderExample], limit: int | None, seed: int) -> list[SpiderExample]:
    """All examples, or a seeded random sample of `limit` of them (kept in file order)."""
    if limit is None or limit >= len(examples):
        return list(examples)
    if limit < 1:
        raise BadInput("--limit must be at least 1")
    chosen = random.Random(seed).sample(range(len(examples)), limit)
    return [examples[i] for i in sorted(chosen)]


PATHS = ("sqlite", "duckdb")
ERROR_KINDS = ("no SQL", "refused", "no such column", "other error", "wrong rows")
# How SQLite and DuckDB (binder errors) say a column is not there.
_NO_SUCH_COLUMN = re.compile(r"no such column|not found in FROM clause|does not have a column named|"
                             r"Referenced column .* not found", re.I)


def evaluate_spider(
    spider_dir: str | Path,
    engine: Engine | None = None,
    *,
    split: str = "dev",
    limit: int | None = None,
    seed: int = 0,
    adapter=DEFAULT_ADAPTER,
    gold: bool = False,
    retries: int = 0,
    params: SamplingParams | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    predictions_out: str | Path | None = None,
    keep_distinct: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    path: str = "sqlite",
    model_dialect: str = SPIDER_DIALECT,
    predictions_in: str | Path | None = None,
    ask_options: dict | None = None,
    transpile_from: str | None = "duckdb",
    duckdb_cache: str | Path | None = None,
    resume: bool = False,
    revote: bool = False,
) -> EvalReport:
    """Score `engine` (or, with `gold=True`, the gold SQL itself; or the SQL of a predictions JSONL given as
    `predictions_in`) on Spider `split` by execution match.

    The model is asked for `model_dialect` SQL in both paths.
    `path="sqlite"`: the question is asked of the SQLite file and the prediction runs in SQLite as written (if it
    fails there, once more transpiled from `transpile_from` to SQLite; None turns that off). `path="duckdb"`: the
    question is asked exactly as the app asks it, of a DuckDB copy of the database (guard + sandbox, the model
    writing `model_dialect`), and the rows the sandbox returns are scored. Gold always runs in SQLite.
    `ask_options` go to `ask_stream` as keyword arguments. `progress(done, total)` is called after each
    question; setting `cancel` stops at the next chance (the current generation is stopped too) and returns the
    partial report with `cancelled=True`.
    `resume` continues a run that stopped part way (cancelled, killed, or ended with a session): the questions
    already in `predictions_out` are not asked again; their recorded SQL, vote and time are kept and scored anew
    with the others, so the report covers the whole selection.
    `revote` (with `predictions_in`): where a question's line records a vote's candidates, they are checked, run
    and chosen among again (`pipelines.sql.pipeline.vote_on_candidates`), the model not asked; this measures a
    change to the guard or to the choice on a recorded run. Its latency is the recorded run's.
    """
    from pipelines.sql.pipeline import DEFAULT_PARAMS, Answer, ask_stream, run_sql, vote_on_candidates

    if path not in PATHS:
        raise BadInput(f"unknown path {path!r}: use one of {', '.join(PATHS)}")
    if gold and predictions_in is not None:
        raise BadInput("score the gold SQL or a predictions file, not both")
    if engine is None and not gold and predictions_in is None:
        raise BadInput("give an engine to evaluate, gold=True to score the gold SQL, or a predictions file")
    if retries < 0:
        raise BadInput("retries must be 0 or more")
    started = time.perf_counter()
    params = params or DEFAULT_PARAMS
    examples = select_examples(load_split(spider_dir, split), limit, seed)
    schemas = load_schemas(spider_dir)
    recorded = _read_predictions(predictions_in, examples) if predictions_in is not None else None
    if revote and recorded is None:
        raise BadInput("revote chooses again among the candidates of a predictions file: give predictions_in")
    if resume and (predictions_out is None or recorded is not None or gold):
        raise BadInput("resume continues a model's run: it needs the predictions file that run was writing")
    answered = _answered_before(predictions_out, examples) if resume else {}
    if gold:
        model, adapter_name = GOLD_MODEL, None
    elif recorded is not None:
        model, adapter_name = f"predictions from {predictions_in}", None
    else:
        adapter = engine.resolve_adapter(adapter)  # fails early on an unknown adapter name
        model, adapter_name = engine.info.model, (engine.info.adapters.get(adapter) if adapter else None)
    from_model = not gold and recorded is None
    ask_options = dict(ask_options or {})
    if from_model and ask_options.get("candidates") is None:
        from pipelines.sql.pipeline import default_candidates

        ask_options["candidates"] = default_candidates(engine)  # recorded as used, not as "the default"
    report = EvalReport(split=split, limit=limit, seed=seed, model=model, adapter=adapter_name, gold=gold,
                        retries=retries if from_model else 0, questions=len(examples), keep_distinct=keep_distinct,
                        timeout_s=timeout_s, max_new_tokens=params.max_new_tokens if from_model else None,
                        path=path, model_dialect=model_dialect if from_model or path == "duckdb" else SPIDER_DIALECT,
                        predictions_in=str(predictions_in) if predictions_in is not None else None,
                        transpile_from=transpile_from if path == "sqlite" else None,
                        ask_options=ask_options, resumed=len(answered), revote=revote)
    if gold:
        report.generation = "the gold SQL, checked and run by pipelines.sql.pipeline.run_sql"
    elif revote:
        report.generation = ("candidates recorded in a predictions file, checked, run and chosen among again by "
                             "pipelines.sql.pipeline.vote_on_candidates (the model not asked; latency as recorded)")
    elif recorded is not None:
        report.generation = "SQL read from a predictions file, checked and run by pipelines.sql.pipeline.run_sql"
    if path == "duckdb":
        report.generation += (" over a DuckDB copy of each database (pipelines.sql.databases.DuckDBDatabase: "
                              "guard + sandbox), scored on the sandbox's rows")
    databases: dict[str, tuple | None] = {}  # db_id -> (SQLite file, the Database questions are asked of)
    failures: Counter = Counter()
    breakdown: Counter = Counter({kind: 0 for kind in ERROR_KINDS})
    sources: Counter = Counter()
    latencies: list[float] = []
    out = _open_predictions(predictions_out, append=resume)
    try:
        for done, example in enumerate(examples):
            if cancel is not None and cancel.is_set():
                report.cancelled = True
                break
            level, source = example_hardness(example)
            sources[source] += 1
            record = {"index": example.index, "db_id": example.db_id, "question": example.question,
                      "predicted_sql": None, "gold_sql": example.query, "correct": None, "hardness": level}
            if example.db_id not in databases:
                databases[example.db_id] = _open_database(spider_dir, example.db_id, schemas, path, model_dialect,
                                                          timeout_s, duckdb_cache)
            opened = databases[example.db_id]
            if opened is None:
                report.skipped += 1
                report.by_hardness[level].skipped += 1
                report.skipped_databases[example.db_id] = report.skipped_databases.get(example.db_id, 0) + 1
                record["skipped"] = "database file missing"
                _write(out, record)
                if progress:
                    progress(done + 1, len(examples))
                continue
            sqlite_path, database = opened

            before = answered.get(example.index)
            log = out if before is None else None  # a resumed question's line is in the file already
            if before is not None:  # asked by the run this one resumes: its SQL is scored again, not re-asked
                answer, predicted = None, before.get("predicted_sql")
                record.update({key: before[key] for key in ("pipeline_error", "vote", "seconds") if key in before})
            elif from_model:
                answer = None
                stream = ask_stream(example.question, database, engine, adapter=adapter, max_retries=retries,
                                    params=params, **{"dialect": model_dialect, **(ask_options or {})})
                try:
                    for item in stream:
                        if isinstance(item, Answer):
                            answer = item
                        elif cancel is not None and cancel.is_set():
                            break
                finally:
                    stream.close()  # stops a generation still running
                if answer is None:  # cancelled mid-question: the question is not scored
                    report.cancelled = True
                    break
                predicted = _model_sql(answer)
            elif revote and recorded[example.index].get("vote"):
                line = recorded[example.index]
                answer = vote_on_candidates(example.question, database, line["vote"]["sql"], dialect=model_dialect)
                predicted = answer.attempts[-1].sql  # the chosen candidate's
                record["seconds"] = line.get("seconds")  # the recorded run's: generation is most of it
            else:
                predicted = example.query if gold else recorded[example.index].get("predicted_sql") or None
                answer = run_sql(predicted, database) if predicted else None
            record["predicted_sql"] = predicted
            record.setdefault("pipeline_error", answer.error if answer is not None else None)
            refused = str(record["pipeline_error"] or "").startswith("refused:")  # the last attempt's error
            if path == "duckdb":
                match = duckdb_exec_match(database, sqlite_path, predicted, example.query,
                                          keep_distinct=keep_distinct, timeout_s=timeout_s)
                refused = match.refused
            else:
                match = exec_match(sqlite_path, predicted, example.query, keep_distinct=keep_distinct,
                                   timeout_s=timeout_s, transpile_from=transpile_from)
            if answer is not None and answer.vote:
                record["vote"] = answer.vote  # every candidate's SQL, and which one won
            if match.ran_sql is not None:
                record["duckdb_sql" if path == "duckdb" else "transpiled_sql"] = match.ran_sql
            if match.gold_error:
                report.gold_failed += 1
                record["gold_error"] = match.gold_error
                _write(log, record)
                if progress:
                    progress(done + 1, len(examples))
                continue
            report.scored += 1
            report.by_hardness[level].scored += 1
            if answer is not None and "seconds" not in record:
                record["seconds"] = round(answer.timings.total_ms / 1000, 3)
            if record.get("seconds") is not None:
                latencies.append(record["seconds"] * 1000)
            if match.correct:
                report.correct += 1
                report.by_hardness[level].correct += 1
            elif match.error:
                failures[_failure_kind(predicted, match.error)] += 1
                record["error"] = match.error
            else:
                failures["wrong result"] += 1
            if not match.correct:
                record["error_kind"] = error_kind(predicted, match)
                breakdown[record["error_kind"]] += 1
            if match.transpiled:
                report.transpiled += 1
                report.transpiled_correct += int(match.correct)
            if refused:
                report.guard_refused += 1
                report.guard_refused_correct += int(match.correct)
            record["correct"] = match.correct
            _write(log, record)
            if progress:
                progress(done + 1, len(examples))
    finally:
        if out is not None:
            out.close()
    report.failures = dict(failures.most_common())
    report.error_breakdown = dict(breakdown)
    report.latency_ms = latency_summary(latencies)
    report.hardness_source = dict(sources)
    report.elapsed_s = round(time.perf_counter() - started, 2)
    asked = report.scored + report.gold_failed - report.resumed  # by this run
    report.seconds_per_question = round(report.elapsed_s / asked, 3) if asked else None
    return report


def _open_database(spider_dir, db_id: str, schemas: dict, path: str, model_dialect: str, timeout_s: float,
                   duckdb_cache) -> tuple | None:
    sqlite_path = database_path(spider_dir, db_id)
    schema = schemas.get(db_id)
    if sqlite_path is None or schema is None:
        return None
    if path == "duckdb":
        return sqlite_path, open_duckdb_database(sqlite_path, model_dialect=model_dialect, timeout_s=timeout_s,
                                                 cache=duckdb_cache)
    return sqlite_path, SQLiteDatabase(sqlite_path, schema, timeout_s=timeout_s)


def _model_sql(answer) -> str | None:
    """The SQL of the pipeline's last attempt as the model wrote it (`answer.sql` may be the guard's DuckDB
    rendering); when that attempt had none, the SQL the answer shows, as before."""
    written = extract_sql(answer.attempts[-1].reply) if answer.attempts else None
    return written or answer.sql


def _read_predictions(path: str | Path, examples: list[SpiderExample]) -> dict[int, dict]:
    """{index: its line} for `examples` from a JSONL written by --predictions-out (same split)."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"no predictions file at {path}")
    by_index: dict[int, dict] = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                by_index[int(row["index"])] = row
            except (ValueError, KeyError, TypeError):
                raise BadInput(f"{path}:{number} is not a predictions line (JSON with an index)") from None
    predictions: dict[int, dict] = {}
    for example in examples:
        row = by_index.get(example.index)
        if row is None:
            raise BadInput(f"{path} has no prediction for question {example.index} of this split")
        if row.get("db_id") != example.db_id or row.get("question") != example.question:
            raise BadInput(f"{path} does not match this split: question {example.index} differs")
        predictions[example.index] = row
    return predictions


def error_kind(predicted: str | None, match) -> str:
    """Why a prediction is wrong, as one of ERROR_KINDS."""
    if not predicted or not predicted.strip():
        return "no SQL"
    if match.refused:
        return "refused"
    if match.error:
        return "no such column" if _NO_SUCH_COLUMN.search(match.error) else "other error"
    return "wrong rows"


def latency_summary(milliseconds: list[float]) -> dict:
    """p50/p95/mean per question in milliseconds (nearest rank), over the questions that were answered."""
    if not milliseconds:
        return {"questions": 0, "p50_ms": None, "p95_ms": None, "mean_ms": None}
    ordered = sorted(milliseconds)

    def rank(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 1)

    return {"questions": len(ordered), "p50_ms": rank(0.50), "p95_ms": rank(0.95),
            "mean_ms": round(sum(ordered) / len(ordered), 1)}


def _failure_kind(predicted: str | None, error: str) -> str:
    if not predicted:
        return "no SQL in the reply"
    if error.startswith("QueryTimeout"):
        return "timeout"
    return "SQL error"


def _answered_before(path: str | Path | None, examples: list[SpiderExample]) -> dict[int, dict]:
    """{index: line} of the questions a stopped run already answered, from its predictions JSONL (none when the
    file is not there yet). A last line cut off by the stop is left out; it is asked again."""
    if path is None or not Path(path).is_file():
        return {}
    wanted = {example.index: example for example in examples}
    answered: dict[int, dict] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        example = wanted.get(row.get("index"))
        if example is None or row.get("skipped") or "predicted_sql" not in row:
            continue
        if row.get("db_id") != example.db_id or row.get("question") != example.question:
            raise BadInput(f"{path}:{number} is from another split or run: question {example.index} differs")
        answered[example.index] = row
    return answered


def _open_predictions(path: str | Path | None, append: bool = False):
    if path is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if append and path.is_file():
        text = path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):  # a line cut off when the run stopped: drop it
            path.write_text(text[: text.rfind("\n") + 1], encoding="utf-8")
    return path.open("a" if append else "w", encoding="utf-8")


def _write(out, record: dict) -> None:
    if out is not None:
        out.write(json.dumps(record, default=str, ensure_ascii=False) + "\n")
        out.flush()


def run_metadata(command: str | None = None) -> dict:
    """What a results file needs to be read later: the command, library versions, the date."""
    import sqlite3
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version}
    for package in ("sqlglot", "duckdb", "torch", "transformers", "peft"):  # without importing them (torch is slow)
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {
        "command": command,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions,
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs",
    }
