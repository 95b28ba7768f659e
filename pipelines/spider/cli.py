"""CLI: `eval-spider` (execution accuracy on Spider, in SQLite or the app's DuckDB path) and `spider-hardness`
(parser agreement on dev)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipelines.errors import BadInput
from pipelines.sql.cli import add_model_arguments, profile_from_args, sql_engine_from_args


def _write_json(path: str | Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def cmd_eval_spider(args: argparse.Namespace) -> int:
    from pipelines.spider.evaluate import run_metadata

    if not Path(args.spider_dir).is_dir():
        raise BadInput(f"no Spider folder at {args.spider_dir}")
    if args.gold and args.predictions_in:
        raise BadInput("--gold and --predictions-in exclude each other")
    paths = ["sqlite", "duckdb"] if args.path == "both" else [args.path]
    engine = None if args.gold or args.predictions_in else sql_engine_from_args(args)
    summaries = []
    for path in paths:
        report = _evaluate_one_path(args, engine, path)
        result = {**report.to_dict(), **run_metadata(args.command_line), "spider_dir": str(args.spider_dir)}
        if engine is not None:
            result["engine"] = {"engine": engine.info.engine, "device": engine.info.device,
                                "dtype": engine.info.dtype}
        if args.out:
            _write_json(_for_path(args.out, path, len(paths) > 1), result)
        print(_summary(report), file=sys.stderr)
        summaries.append({key: result[key] for key in (
            "path", "execution_accuracy", "scored", "correct", "skipped", "gold_failed", "model", "adapter", "split",
            "limit", "seed")})
        if report.cancelled:
            break
    for summary in summaries:
        print(json.dumps(summary))
    return 0


def _evaluate_one_path(args: argparse.Namespace, engine, path: str):
    from tqdm import tqdm

    from pipelines.engine import DEFAULT_ADAPTER, SamplingParams
    from pipelines.spider.evaluate import evaluate_spider

    bar = tqdm(total=None, desc=f"spider {args.split} ({path})", unit="q", file=sys.stderr, dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
            bar.refresh()
        bar.update(done - bar.n)

    try:
        return evaluate_spider(
            args.spider_dir, engine, split=args.split, limit=args.limit, seed=args.seed,
            adapter=DEFAULT_ADAPTER, gold=args.gold, retries=args.retries,
            params=SamplingParams(max_new_tokens=args.max_new_tokens), progress=progress,
            predictions_out=_for_path(args.predictions_out, path, args.path == "both"),
            keep_distinct=args.keep_distinct, timeout_s=args.timeout, path=path,
            # Spider's gold SQL is SQLite, whatever the profile's adapter writes.
            model_dialect=args.model_dialect or ("sqlite" if args.gold else profile_from_args(args).sql_dialect),
            predictions_in=args.predictions_in, transpile_from=None if args.no_transpile else "duckdb",
            ask_options=dict(constrain=not args.no_constrain, value_hints=not args.no_value_hints,
                             candidates=args.candidates),
            resume=args.resume, revote=args.revote,
        )
    finally:
        bar.close()


def _for_path(file: str | None, path: str, several: bool) -> str | None:
    """With --path both, each path's file gets its name: report.json -> report-sqlite.json, report-duckdb.json."""
    if file is None or not several:
        return file
    file = Path(file)
    return str(file.with_name(f"{file.stem}-{path}{file.suffix}"))


def _summary(report) -> str:
    def pct(value) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    lines = [f"{report.path} path: execution accuracy {pct(report.execution_accuracy)} ({report.correct}/"
             f"{report.scored} scored; {report.skipped} skipped, database missing; {report.gold_failed} gold failed)"]
    for level, score in report.by_hardness.items():
        lines.append(f"  {level:<6} {pct(score.execution_accuracy):>6} ({score.correct}/{score.scored})")
    wrong = ", ".join(f"{kind} {count}" for kind, count in report.error_breakdown.items())
    lines.append(f"  wrong: {wrong}")
    if report.latency_ms.get("questions"):
        lines.append(f"  latency per question: p50 {report.latency_ms['p50_ms']:.0f} ms, "
                     f"p95 {report.latency_ms['p95_ms']:.0f} ms")
    if report.cancelled:
        lines.append("  (cancelled: partial result)")
    return "\n".join(lines)


def cmd_spider_hardness(args: argparse.Namespace) -> int:
    from pipelines.spider.data import load_split
    from pipelines.spider.evaluate import run_metadata
    from pipelines.spider.hardness import hardness_agreement

    result = hardness_agreement(load_split(args.spider_dir, "dev"))
    result = {**result, **run_metadata(args.command_line)}
    if args.out:
        _write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("compared", "agree", "agreement", "unparsed", "confusion")}))
    return 0 if result["compared"] else 1


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval-spider", help="execution accuracy on Spider (official test-suite rules), overall and by hardness")
    parser.add_argument("--spider-dir", required=True, help="Spider folder (dev.json, tables.json, database/)")
    parser.add_argument("--split", choices=["dev", "train"], default="dev")
    parser.add_argument("--limit", type=int, help="score a seeded random sample of N questions")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit sample (default 0)")
    parser.add_argument("--gold", action="store_true", help="score the gold SQL as predictions (must give 1.0)")
    parser.add_argument("--predictions-in", metavar="FILE",
                        help="score the SQL of a --predictions-out JSONL (same split) instead of running a model")
    parser.add_argument("--path", choices=["sqlite", "duckdb", "both"], default="sqlite",
                        help="sqlite: run predictions in SQLite as written (default); duckdb: ask and run as the "
                             "app does, over a DuckDB copy (guard + sandbox); both: one report each")
    parser.add_argument("--model-dialect", choices=["sqlite", "duckdb"],
                        help="the SQL dialect the model is asked for and the guard parses (default: the one the "
                             "adapter was trained on, from its training.json; sqlite for Spider adapters)")
    parser.add_argument("--no-transpile", action="store_true",
                        help="SQLite path: do not retry a prediction that fails in SQLite transpiled from DuckDB")
    parser.add_argument("--no-constrain", action="store_true",
                        help="decode freely instead of following the schema-scoped SQL grammar")
    parser.add_argument("--no-value-hints", action="store_true",
                        help="show the model the schema alone, without values of its text columns")
    parser.add_argument("--candidates", type=int,
                        help="vote by execution over N replies (the greedy one and N-1 sampled; default: as the app, "
                             "8 on engines where samples are cheap, else 1)")
    parser.add_argument("--retries", type=int, default=0,
                        help="self-corrections after an error (default 0: the official single-shot number)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="generation budget per answer (default 256)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-query SQLite timeout in seconds (default 30)")
    parser.add_argument("--keep-distinct", action="store_true", help="do not remove DISTINCT before comparing")
    parser.add_argument("--predictions-out", help="JSONL file: one line per question with its prediction")
    parser.add_argument("--resume", action="store_true",
                        help="continue a run that stopped part way: the questions already in --predictions-out are "
                             "scored from their recorded SQL, not asked again (the report covers them all)")
    parser.add_argument("--revote", action="store_true",
                        help="with --predictions-in: choose again among each question's recorded candidates (checked "
                             "and run again, the model not asked), to measure a change to the guard or the choice")
    parser.add_argument("--out", help="JSON file for the report")
    add_model_arguments(parser)
    parser.set_defaults(func=cmd_eval_spider)

    parser = subparsers.add_parser(
        "spider-hardness", help="check the sqlglot hardness parser against dev.json's official sql dicts")
    parser.add_argument("--spider-dir", required=True)
    parser.add_argument("--out", help="JSON file for the agreement report (with every disagreement)")
    parser.set_defaults(func=cmd_spider_hardness)
