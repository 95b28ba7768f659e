"""Spider execution accuracy (EX), as the official test-suite evaluation computes it.

Predictions come from the app's own SQL pipeline (`pipelines.sql.pipeline.ask_stream`: the same prompt, decoding,
extraction, guard and self-correction) over each question's SQLite database, one question at a time; the
default `retries=0` is the official single-shot number. Each prediction (the SQL of the pipeline's last
attempt) is then scored by `exec_match` against the gold SQL in SQLite, exactly as the official evaluation
scores a predictions file: the guard's verdict does not decide correctness (a query it refuses is still run,
read-only, and counted right if it matches); `guard_refused` says how often that happened.

Questions whose database file is missing are `skipped`: counted, listed per database, never scored. A question
whose gold SQL fails to run is `gold_failed`: counted, never scored (the official code would stop there).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipelines.engine import DEFAULT_ADAPTER, Engine, SamplingParams
from pipelines.errors import BadInput
from pipelines.spider.data import SpiderExample, database_path, load_schemas, load_split
from pipelines.spider.exec_match import exec_match
from pipelines.spider.hardness import HARDNESS_LEVELS, example_hardness
from pipelines.spider.sqlite_db import DEFAULT_TIMEOUT_S, SQLiteDatabase

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
    failures: dict[str, int] = field(default_factory=dict)  # why wrong predictions failed to run, by kind
    guard_refused: int = 0  # predictions the app's guard refused (scored anyway, as the official evaluation would)
    guard_refused_correct: int = 0
    hardness_source: dict[str, int] = field(default_factory=dict)  # "official" (dev.json's sql) / "parsed" (sqlglot)
    generation: str = "pipelines.sql.pipeline.ask_stream, one question at a time"
    keep_distinct: bool = False
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_new_tokens: int | None = None
    cancelled: bool = False
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
) -> EvalReport:
    """Score `engine` (or, with `gold=True`, the gold SQL itself) on Spider `split` by execution match.

    `progress(done, total)` is called after each question; setting `cancel` stops at the next chance (the current
    generation is stopped too) and returns the partial report with `cancelled=True`.
    """
    from pipelines.sql.pipeline import DEFAULT_PARAMS, Answer, ask_stream, run_sql

    if engine is None and not gold:
        raise BadInput("give an engine to evaluate, or gold=True to score the gold SQL")
    if retries < 0:
        raise BadInput("retries must be 0 or more")
    started = time.perf_counter()
    params = params or DEFAULT_PARAMS
    examples = select_examples(load_split(spider_dir, split), limit, seed)
    schemas = load_schemas(spider_dir)
    if gold:
        model, adapter_name = GOLD_MODEL, None
    else:
        adapter = engine.resolve_adapter(adapter)  # fails early on an unknown adapter name
        model, adapter_name = engine.info.model, (engine.info.adapters.get(adapter) if adapter else None)
    report = EvalReport(split=split, limit=limit, seed=seed, model=model, adapter=adapter_name, gold=gold,
                        retries=0 if gold else retries, questions=len(examples), keep_distinct=keep_distinct,
                        timeout_s=timeout_s, max_new_tokens=None if gold else params.max_new_tokens)
    if gold:
        report.generation = "the gold SQL, checked and run by pipelines.sql.pipeline.run_sql"
    databases: dict[str, SQLiteDatabase | None] = {}
    failures: Counter = Counter()
    sources: Counter = Counter()
    out = _open_predictions(predictions_out)
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
                path = database_path(spider_dir, example.db_id)
                schema = schemas.get(example.db_id)
                databases[example.db_id] = (SQLiteDatabase(path, schema, timeout_s=timeout_s)
                                            if path is not None and schema is not None else None)
            database = databases[example.db_id]
            if database is None:
                report.skipped += 1
                report.by_hardness[level].skipped += 1
                report.skipped_databases[example.db_id] = report.skipped_databases.get(example.db_id, 0) + 1
                record["skipped"] = "database file missing"
                _write(out, record)
                if progress:
                    progress(done + 1, len(examples))
                continue

            if gold:
                answer = run_sql(example.query, database)
            else:
                answer = None
                stream = ask_stream(example.question, database, engine, adapter=adapter, max_retries=retries,
                                    params=params)
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
            predicted = answer.sql
            refused = any(a.stage == "validate" and a.error for a in answer.attempts[-1:])
            match = exec_match(database.path, predicted, example.query, keep_distinct=keep_distinct,
                               timeout_s=timeout_s)
            record.update(predicted_sql=predicted, pipeline_error=answer.error)
            if match.gold_error:
                report.gold_failed += 1
                record["gold_error"] = match.gold_error
                _write(out, record)
                if progress:
                    progress(done + 1, len(examples))
                continue
            report.scored += 1
            report.by_hardness[level].scored += 1
            if match.correct:
                report.correct += 1
                report.by_hardness[level].correct += 1
            elif match.error:
                failures[_failure_kind(predicted, match.error)] += 1
                record["error"] = match.error
            else:
                failures["wrong result"] += 1
            if refused:
                report.guard_refused += 1
                report.guard_refused_correct += int(match.correct)
            record["correct"] = match.correct
            _write(out, record)
            if progress:
                progress(done + 1, len(examples))
    finally:
        if out is not None:
            out.close()
    report.failures = dict(failures.most_common())
    report.hardness_source = dict(sources)
    report.elapsed_s = round(time.perf_counter() - started, 2)
    handled = report.scored + report.gold_failed
    report.seconds_per_question = round(report.elapsed_s / handled, 3) if handled else None
    return report


def _failure_kind(predicted: str | None, error: str) -> str:
    if not predicted:
        return "no SQL in the reply"
    if error.startswith("QueryTimeout"):
        return "timeout"
    return "SQL error"


def _open_predictions(path: str | Path | None):
    if path is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("w", encoding="utf-8")


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
