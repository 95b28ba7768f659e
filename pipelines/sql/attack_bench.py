"""`bench-under-attack`: does the app process stay small and answer others while one user attacks it?

One attacker thread sends the red-team corpora (attacks, runaway queries, guard-budget cases, pasted-schema
bombs) through the app's own path, one after another, for `--seconds`. Meanwhile a second user asks a plain
question (`SELECT 42` through the guard and the sandbox) every quarter second, and this process's resident
memory is sampled. The report: the other user's latency (p50/p95/max), the share answered within 2 s, the
process's peak RSS, and what the attacker got.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ANSWER_WITHIN_S = 2.0
RSS_LIMIT_MB = 1536


def rss_mb() -> float:
    """This process's resident memory (Linux), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(seconds: float = 30.0) -> dict:
    from pipelines.errors import BadInput
    from pipelines.sql import redteam
    from pipelines.sql.guard import check_sql
    from pipelines.sql.sandbox import SandboxLimits, database_schema, run_guarded
    from pipelines.sql.schema import schema_from_ddl

    with tempfile.TemporaryDirectory(prefix="voxql-attack-bench-") as scratch:
        base = Path(scratch)
        shop = redteam.build_fixture(base / "shop.duckdb")
        dbs = {"shop": shop, "crafted": redteam.build_crafted_fixture(base / "crafted.duckdb")}
        secret, out = base / "secret.txt", base / "out"
        secret.write_text(redteam.SECRET_TEXT + "\n")
        out.mkdir()
        tables = database_schema(shop).table_names()
        limits = SandboxLimits()  # the app's defaults
        stop = threading.Event()
        attacks = {"queries": 0, "ran": 0, "refused_or_bounded": 0, "ddl": 0, "guard_only": 0, "leaked": 0}

        def attacker() -> None:
            corpus = [("query", c.sql, c.dialect, c.db) for c in redteam.ATTACKS + redteam.RUNAWAY] + \
                     [("guard", c.sql, c.dialect, c.db) for c in redteam.GUARD_ONLY] + \
                     [("ddl", ddl, "duckdb", "shop") for ddl in redteam.DDL_BOMBS]
            while not stop.is_set():
                for kind, text, dialect, db in corpus:
                    if stop.is_set():
                        return
                    text = redteam.fill(text, secret, out)
                    if kind == "query":
                        result = run_guarded(dbs[db], text, limits, dialect=dialect)
                        attacks["queries"] += 1
                        attacks["ran"] += result.ok
                        attacks["refused_or_bounded"] += not result.ok or result.truncated
                        attacks["leaked"] += redteam.SECRET_TEXT in json.dumps(result.rows, default=str)
                    elif kind == "guard":
                        check_sql(text, tables, dialect=dialect)
                        attacks["guard_only"] += 1
                    else:
                        try:
                            schema_from_ddl(text)
                        except BadInput:
                            pass
                        attacks["ddl"] += 1

        peak = [rss_mb()]

        def sample_memory() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rss_mb())
                time.sleep(0.1)

        threads = [threading.Thread(target=attacker, daemon=True), threading.Thread(target=sample_memory, daemon=True)]
        start_rss = rss_mb()
        for thread in threads:
            thread.start()
        latencies, failures = [], 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            result = run_guarded(shop, "SELECT 42 AS answer", limits)
            latencies.append(time.perf_counter() - started)
            failures += result.rows != [[42]]
            time.sleep(0.25)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    latencies.sort()
    return {
        "seconds": seconds, "attacker": attacks,
        "other_user": {"questions": len(latencies), "wrong_or_failed": failures,
                       "p50_s": round(statistics.median(latencies), 3),
                       "p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3),
                       "max_s": round(latencies[-1], 3),
                       "within_2s": round(sum(t <= ANSWER_WITHIN_S for t in latencies) / len(latencies), 3)},
        "app_rss_mb": {"start": round(start_rss, 1), "peak": round(peak[0], 1), "limit": RSS_LIMIT_MB},
        "passed": peak[0] <= RSS_LIMIT_MB and failures == 0 and latencies[-1] <= ANSWER_WITHIN_S
        and attacks["leaked"] == 0,
    }


def cmd_bench_under_attack(args) -> int:
    import datetime as dt
    import platform

    report = {"command": getattr(args, "command_line", "bench-under-attack"),
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": platform.machine(), **run(args.seconds)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    print(f"wrote {out}", file=sys.stderr)
    return 0 if report["passed"] else 1


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench-under-attack", help="the app process's memory and another user's "
                                                              "latency while one user runs the red-team corpora")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--out", default="results/bench-under-attack.json")
    parser.set_defaults(func=cmd_bench_under_attack)
