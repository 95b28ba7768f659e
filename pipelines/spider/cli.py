"""CLI: `eval-spider` (execution accuracy on Spider) and `spider-hardness` (parser agreement on dev)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from pipelines.errors import BadInput
from pipelines.sql.cli import add_model_arguments, sql_engine_from_args


def _command_line() -> str:
    return "python -m pipelines " + shlex.join(sys.argv[1:])


def _write_json(path: str | Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def cmd_eval_spider(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pipelines.engine import DEFAULT_ADAPTER, SamplingParams
    from pipelines.spider.evaluate import evaluate_spider, run_metadata

    if not Path(args.spider_dir).is_dir():
        raise BadInput(f"no Spider folder at {args.spider_dir}")
    engine = None if args.gold else sql_engine_from_args(args)
    bar = tqdm(total=None, desc=f"spider {args.split}", unit="q", file=sys.stderr, dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
            bar.refresh()
        bar.update(done - bar.n)

    try:
        report = evaluate_spider(
            args.spider_dir, engine, split=args.split, limit=args.limit, seed=args.seed,
            adapter=DEFAULT_ADAPTER, gold=args.gold, retries=args.retries,
            params=SamplingParams(max_new_tokens=args.max_new_tokens), progress=progress,
            predictions_out=args.predictions_out, keep_distinct=args.keep_distinct, timeout_s=args.timeout,
        )
    finally:
        bar.close()
    result = {**report.to_dict(), **run_metadata(_command_line()), "spider_dir": str(args.spider_dir)}
    if engine is not None:
        result["engine"] = {"engine": engine.info.engine, "device": engine.info.device, "dtype": engine.info.dtype}
    if args.out:
        _write_json(args.out, result)
    print(_summary(report), file=sys.stderr)
    print(json.dumps({key: result[key] for key in ("execution_accuracy", "scored", "correct", "skipped",
                                                   "gold_failed", "model", "adapter", "split", "limit", "seed")}))
    return 0


def _summary(report) -> str:
    def pct(value) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    lines = [f"execution accuracy {pct(report.execution_accuracy)} ({report.correct}/{report.scored} scored; "
             f"{report.skipped} skipped, database missing; {report.gold_failed} gold failed)"]
    for level, score in report.by_hardness.items():
        lines.append(f"  {level:<6} {pct(score.execution_accuracy):>6} ({score.correct}/{score.scored})")
    if report.cancelled:
        lines.append("  (cancelled: partial result)")
    return "\n".join(lines)


def cmd_spider_hardness(args: argparse.Namespace) -> int:
    from pipelines.spider.data import load_split
    from pipelines.spider.evaluate import run_metadata
    from pipelines.spider.hardness import hardness_agreement

    result = hardness_agreement(load_split(args.spider_dir, "dev"))
    result = {**result, **run_metadata(_command_line())}
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
    parser.add_argument("--retries", type=int, default=0,
                        help="self-corrections after an error (default 0: the official single-shot number)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="generation budget per answer (default 256)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-query SQLite timeout in seconds (default 30)")
    parser.add_argument("--keep-distinct", action="store_true", help="do not remove DISTINCT before comparing")
    parser.add_argument("--predictions-out", help="JSONL file: one line per question with its prediction")
    parser.add_argument("--out", help="JSON file for the report")
    add_model_arguments(parser)
    parser.set_defaults(func=cmd_eval_spider)

    parser = subparsers.add_parser(
        "spider-hardness", help="check the sqlglot hardness parser against dev.json's official sql dicts")
    parser.add_argument("--spider-dir", required=True)
    parser.add_argument("--out", help="JSON file for the agreement report (with every disagreement)")
    parser.set_defaults(func=cmd_spider_hardness)
