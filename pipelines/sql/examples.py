"""The bundled example questions, their gold SQL, and whether the shipped model answers them right.

`assets/databases/examples.json` holds, per demo database, each example's question, its gold SQL (DuckDB, written
by hand and checked against the demo data) and, where the question can be read more than one way, the reading
the gold takes. `verify_examples` asks every question as the Ask tab does (`pipelines.sql.pipeline.ask` over the
demo's `DuckDBDatabase`, with the app's settings, on the first try: no self-correction by default) and compares
the answer's rows with the gold's (execution match: the same rows, columns in any order, row order only when the
gold says ORDER BY).
`python -m pipelines verify-examples` writes the result to results/examples-verified.json; the Ask tab reads it
and labels the examples the shipped model gets wrong.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import BadInput
from pipelines.profiles import ASSETS_DIR

EXAMPLES_FILE = ASSETS_DIR / "databases" / "examples.json"
VERIFIED_FILE = ASSETS_DIR.parent / "results" / "examples-verified.json"
NEEDS_GPU = "needs the gpu profile"
NOT_VERIFIED = "not verified"
# Verified on the first try: greedy decoding makes it repeatable (a sampled retry would not be), it is what the
# user waits for, and a stale-file test can afford it. An example right only after a retry is marked.
FIRST_TRY = 0
FLOAT_DIGITS = 9  # significant digits compared: two right queries may add the same doubles in another order


@dataclass(frozen=True)
class Example:
    database: str
    question: str
    gold_sql: str
    reading: str | None = None  # how the gold reads an ambiguous question


def load_examples(path: str | Path = EXAMPLES_FILE) -> dict[str, list[Example]]:
    """{demo database: its examples}, in file order."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    examples: dict[str, list[Example]] = {}
    for database, items in data.items():
        examples[database] = []
        for item in items:
            if not isinstance(item, dict) or not item.get("question") or not item.get("gold_sql"):
                raise BadInput(f"{path}: every example of {database} needs a question and its gold_sql")
            examples[database].append(Example(database, item["question"], item["gold_sql"], item.get("reading")))
    return examples


# -- comparing an answer with the gold -------------------------------------------------------------------------------
def _comparable(value):
    """One form for values that differ only in type (DECIMAL and DOUBLE, BOOLEAN and 0/1), floats to FLOAT_DIGITS
    significant digits. A DATE and a TIMESTAMP stay different (`2026-01-01` is not `2026-01-01T00:00:00`)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, decimal.Decimal):
        value = float(value)
    if isinstance(value, float):
        return float(f"{value:.{FLOAT_DIGITS}g}")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str, sort_keys=True)
    return value


def rows_match(gold_rows: list[list], predicted_rows: list[list], gold_sql: str) -> bool:
    """Execution match (the Spider rules, pipelines.spider.exec_match.result_eq) on comparable values."""
    from pipelines.spider.exec_match import order_matters, result_eq

    gold = [tuple(_comparable(v) for v in row) for row in gold_rows]
    predicted = [tuple(_comparable(v) for v in row) for row in predicted_rows]
    return result_eq(gold, predicted, order_matters(gold_sql))


# -- verification ----------------------------------------------------------------------------------------------------
def verify_example(example: Example, database, engine, **ask_options) -> dict:
    """Ask one example as the app does and score it against its gold."""
    from pipelines.sql.pipeline import ask, run_sql

    gold = run_sql(example.gold_sql, database)
    if gold.error or gold.truncated:
        raise BadInput(f"the gold SQL of {example.database!r} example {example.question!r} does not run: "
                       f"{gold.error or 'more rows than the sandbox returns'}")
    started = time.perf_counter()
    answer = ask(example.question, database, engine, **ask_options)
    seconds = time.perf_counter() - started
    correct = answer.executed and answer.ok and not answer.truncated and \
        rows_match(gold.rows, answer.rows, example.gold_sql)
    return {"db": example.database, "question": example.question, "gold_sql": example.gold_sql,
            "predicted_sql": answer.sql, "correct": bool(correct), "seconds": round(seconds, 2),
            "attempts": len(answer.attempts), "error": answer.error, "gold_rows": gold.row_count,
            "predicted_rows": answer.row_count if answer.executed else None}


def verify_examples(engine, *, examples: dict[str, list[Example]] | None = None, demos: dict | None = None,
                    progress: Callable[[int, int], None] | None = None, max_retries: int = FIRST_TRY,
                    **ask_options) -> dict:
    """Every example asked of its demo database through `ask`, the app's path and settings except
    `max_retries` (default 0: the first try); the per-example records and the totals."""
    from pipelines.sql.databases import DuckDBDatabase
    from pipelines.sql.demo_data import ensure_demo_databases

    examples = examples if examples is not None else load_examples()
    demos = demos if demos is not None else ensure_demo_databases()
    missing = sorted(set(examples) - set(demos))
    if missing:
        raise BadInput(f"examples name databases that are not demos: {', '.join(missing)}")
    total = sum(map(len, examples.values()))
    records = []
    for name, items in examples.items():
        database = DuckDBDatabase(demos[name].path, name=name)
        for example in items:
            records.append(verify_example(example, database, engine, max_retries=max_retries, **ask_options))
            if progress:
                progress(len(records), total)
    correct = sum(r["correct"] for r in records)
    adapter = engine.info.adapters.get(engine.info.default_adapter) if engine.info.default_adapter else None
    from pipelines.sql.pipeline import default_candidates

    return {"examples": records, "correct": correct, "total": total, "model": engine.info.model,
            "adapter": _repo_relative(adapter), "engine": engine.info.engine,
            "candidates": ask_options.get("candidates") or default_candidates(engine),
            "max_retries": max_retries, "ask_options": dict(ask_options)}


def _repo_relative(spec: str | None) -> str | None:
    """A path inside the checkout as the repository names it (the file must not depend on where it was made)."""
    if not spec:
        return spec
    try:
        return Path(spec).resolve().relative_to(ASSETS_DIR.parent).as_posix()
    except ValueError:
        return spec


# -- what the Ask tab shows ------------------------------------------------------------------------------------------
def read_verified(path: str | Path = VERIFIED_FILE) -> tuple[str | None, dict[tuple[str, str], bool]]:
    """(the profile verified, {(database, question): answered right}); (None, {}) without a readable file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return data.get("profile"), {(r["db"], r["question"]): bool(r["correct"]) for r in data["examples"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, {}


def example_labels(database: str, questions: list[str], profile: str | None = None,
                   path: str | Path = VERIFIED_FILE) -> list[str]:
    """The label of each example button: the question, marked "needs the gpu profile" when the verified model gets
    it wrong and "not verified" when the file does not cover it. For another profile than the one verified,
    nothing is known, so the questions are shown as they are."""
    verified_profile, verified = read_verified(path)
    if profile is not None and verified_profile is not None and profile != verified_profile:
        return list(questions)
    labels = []
    for question in questions:
        right = verified.get((database, question))
        labels.append(question if right else f"{question} ({NEEDS_GPU if right is False else NOT_VERIFIED})")
    return labels


# -- CLI: `python -m pipelines verify-examples` ----------------------------------------------------------------------
def cmd_verify_examples(args) -> int:
    import sys

    from tqdm import tqdm

    from pipelines.spider.evaluate import run_metadata
    from pipelines.sql.cli import profile_from_args, sql_engine_from_args

    profile = profile_from_args(args)
    engine = sql_engine_from_args(args)
    bar = tqdm(total=None, desc="examples", unit="q", file=sys.stderr, dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        result = verify_examples(engine, progress=progress, max_retries=args.retries, dialect=profile.sql_dialect)
    finally:
        bar.close()
    result = {"profile": profile.name, **result, **run_metadata(args.command_line)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str, ensure_ascii=False) + "\n", encoding="utf-8")
    for record in result["examples"]:
        mark = "right" if record["correct"] else "WRONG"
        print(f"{mark:5}  {record['seconds']:6.1f} s  {record['db']}: {record['question']}", file=sys.stderr)
    print(json.dumps({"correct": result["correct"], "total": result["total"], "profile": profile.name,
                      "out": str(out)}))
    return 0


def register(subparsers) -> None:
    from pipelines.sql.cli import add_model_arguments

    parser = subparsers.add_parser(
        "verify-examples", help="ask every bundled example question, compare with its gold SQL, write the result")
    parser.add_argument("--out", default=str(VERIFIED_FILE), help=f"JSON file (default {VERIFIED_FILE.name} "
                                                                     "in results/, which the Ask tab reads)")
    parser.add_argument("--retries", type=int, default=FIRST_TRY,
                        help="self-corrections allowed after an error (default 0: right on the first try)")
    add_model_arguments(parser)
    parser.set_defaults(profile="cpu", func=cmd_verify_examples)  # the file describes the shipped cpu model
