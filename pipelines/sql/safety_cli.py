"""CLI: `check-sql`, `run-sql`, `redteam-sql` and `bench-sql`: the guard and the sandbox for tests and operators.

Output is one JSON object per query, in input order. With `--sql`, the exit code is 0 only when the query was
allowed (check-sql) or ran (run-sql).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipelines.errors import BadInput


def json_default(value):
    """Dates, decimals, UUIDs and the like become strings."""
    return value.hex() if isinstance(value, (bytes, bytearray)) else str(value)


def _finite(value):
    """NaN and infinities are not JSON: write them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def dumps(obj: dict) -> str:
    return json.dumps(obj, default=json_default, ensure_ascii=False)


def read_queries(args: argparse.Namespace) -> Iterator[dict]:
    """{"sql", "dialect"} per query from --sql or --jsonl; a bad line yields {"bad": reason} in its place."""
    if args.sql is not None:
        yield {"sql": args.sql, "dialect": args.dialect}
        return
    stream = sys.stdin if args.jsonl == "-" else _open(args.jsonl)
    with stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                if not isinstance(item, dict) or not isinstance(item.get("sql"), str):
                    raise ValueError('expected {"sql": "..."}')
                yield {"sql": item["sql"], "dialect": item.get("dialect") or args.dialect}
            except ValueError as error:
                yield {"sql": line.rstrip("\n"), "bad": f"line {number} is not valid input: {error}"}


def _open(path: str):
    try:
        return open(path, encoding="utf-8")
    except OSError as error:
        raise BadInput(f"cannot read {path}: {error.strerror}") from None


def _add_input_arguments(parser: argparse.ArgumentParser, *, db_required: bool) -> None:
    if db_required:
        parser.add_argument("--db", required=True, help="DuckDB file (its tables are the ones queries may read)")
    else:
        target = parser.add_mutually_exclusive_group()
        target.add_argument("--db", help="DuckDB file (its tables are the ones queries may read); without --db "
                                         "or --schema table names are not checked")
        target.add_argument("--schema", metavar="FILE.sql",
                            help="CREATE TABLE statements (the UI's pasted-schema mode): check against those tables")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--sql", help="one query")
    source.add_argument("--jsonl", help='file (or - for stdin) of {"sql": ...} lines')
    parser.add_argument("--dialect", default="duckdb", help="dialect the SQL is written in (duckdb, postgres, "
                                                            "sqlite, mysql; default duckdb)")


# -- check-sql -----------------------------------------------------------------------------------------------------
def cmd_check_sql(args: argparse.Namespace) -> int:
    from pipelines.sql.databases import database_from_args
    from pipelines.sql.guard import check_sql

    # The same check as the app: a database's tables, columns and stored macros, or a pasted schema's tables.
    database = database_from_args(args.db, args.schema) if args.db or args.schema else None
    all_allowed = True
    for item in read_queries(args):
        if "bad" in item:
            out = {"sql": item["sql"], "allowed": False, "reason": item["bad"], "normalized": None}
        else:
            verdict = (database.check(item["sql"], item["dialect"]) if database is not None
                       else check_sql(item["sql"], None, dialect=item["dialect"]))
            out = {"sql": verdict.sql, "allowed": verdict.allowed, "reason": verdict.reason,
                   "normalized": verdict.normalized}
        all_allowed &= out["allowed"]
        print(dumps(out), flush=True)
    return 0 if all_allowed or args.sql is None else 1


# -- run-sql -------------------------------------------------------------------------------------------------------
def cmd_run_sql(args: argparse.Namespace) -> int:
    from pipelines.sql.sandbox import SandboxLimits, _pool, failed, run_guarded

    limits = SandboxLimits(timeout_s=args.timeout, max_rows=args.max_rows, memory_limit=args.memory_limit,
                           threads=args.threads)

    def run(item: dict):
        if "bad" in item:
            return failed(item["sql"], "bad_input", item["bad"])
        return run_guarded(args.db, item["sql"], limits, dialect=item["dialect"])

    all_ok = True
    # Queries run in parallel on the worker pool; `map` still yields the results in input order.
    with ThreadPoolExecutor(max_workers=_pool().size) as executor:
        for result in executor.map(run, read_queries(args)):
            out = result.to_dict()
            out["rows"] = [_finite(row) for row in out["rows"]]
            all_ok &= result.ok
            print(dumps(out), flush=True)
    return 0 if all_ok or args.sql is None else 1


# -- redteam-sql ---------------------------------------------------------------------------------------------------
def cmd_redteam_sql(args: argparse.Namespace) -> int:
    from pipelines.sql.redteam import ATTACKS, BENIGN, DDL_BOMBS, GUARD_ONLY, RUNAWAY, evaluate

    report = evaluate()
    rates = report.rates()
    print(f"attacks: {report.attacks} ({len({c.category for c in ATTACKS})} categories); "
          f"refused by the guard {rates['attacks_refused_by_guard_pct']}%, "
          f"by the sandbox alone {rates['attacks_refused_by_sandbox_pct']}%")
    print(f"guard-only policy cases: {len(GUARD_ONLY)}; refused {rates['guard_only_refused_pct']}%")
    print(f"benign queries: {len(BENIGN)}; refused by the guard {rates['benign_refused_pct']}%, "
          f"failed to run {rates['benign_failed_pct']}%")
    print(f"runaway queries: {len(RUNAWAY)}; bounded {rates['runaway_bounded_pct']}%; "
          f"pasted-schema bombs: {len(DDL_BOMBS)}; read or refused in time {rates['ddl_bombs_bounded_pct']}%")
    print(f"database unchanged: {report.database_unchanged}; nothing written: {report.nothing_written}; "
          f"secret never returned: {report.secret_never_returned}")
    for failure in report.failures:
        print(f"FAIL {dumps(failure)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "python -m pipelines redteam-sql", **_environment(),
                               **report.to_dict()}, indent=2, default=json_default))
    print(f"wrote {out}", file=sys.stderr)
    return 0 if report.perfect else 1


def _environment() -> dict:
    import datetime as dt
    import os
    import platform

    import duckdb
    import sqlglot

    return {"date": dt.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
            "duckdb": duckdb.__version__, "sqlglot": sqlglot.__version__, "machine": platform.machine(),
            "platform": platform.platform(), "cpu_cores": os.cpu_count()}


# -- bench-sql -----------------------------------------------------------------------------------------------------
def cmd_bench_sql(args: argparse.Namespace) -> int:
    from pipelines.sql.bench import run_benchmark

    report = run_benchmark(db=args.db, repeat=args.repeat, spider_dir=args.spider)
    report = {"command": "python -m pipelines bench-sql " + " ".join(sys.argv[2:]), **_environment(), **report}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=json_default))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("check-sql", help="check queries with the SQL guard (nothing runs)")
    _add_input_arguments(parser, db_required=False)
    parser.set_defaults(func=cmd_check_sql)

    parser = subparsers.add_parser("run-sql", help="run queries through the guard and the read-only sandbox")
    _add_input_arguments(parser, db_required=True)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per query (default 10)")
    parser.add_argument("--max-rows", type=int, default=1000, help="rows returned at most (default 1000)")
    parser.add_argument("--memory-limit", default="1GB", help="DuckDB memory limit per query (default 1GB)")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads per query (default 2)")
    parser.set_defaults(func=cmd_run_sql)

    parser = subparsers.add_parser("redteam-sql", help="score the guard and the sandbox on the red-team corpora")
    parser.add_argument("--out", default="results/redteam-sql.json", help="JSON report path")
    parser.set_defaults(func=cmd_redteam_sql)

    parser = subparsers.add_parser("bench-sql", help="guard and sandbox overhead against raw DuckDB")
    parser.add_argument("--db", help="DuckDB file and its queries (default: a generated shop database)")
    parser.add_argument("--repeat", type=int, default=15, help="runs per query and mode (default 15)")
    parser.add_argument("--spider", help="Spider folder: also time the guard on its dev gold SQL "
                                         "(default: ../shared/spider or VOXQL_SPIDER_DIR when present)")
    parser.add_argument("--out", default="results/bench-sql.json", help="JSON report path")
    parser.set_defaults(func=cmd_bench_sql)

    from pipelines.sql import attack_bench

    attack_bench.register(subparsers)
