"""`bench-sql`: what the guard and the sandbox cost, against raw DuckDB on the same queries.

Modes, timed per query (wall clock, ms):
- raw: one open read-only DuckDB connection (same thread count), `execute` + `fetchmany(max_rows + 1)`;
- guard: `check_sql` alone;
- sandbox: `run_query` in the worker process (what the app uses);
- guarded: `run_guarded` (guard, table list from cache, sandbox);
- inline: `run_query(isolation="inline")`, a fresh DuckDB instance per query in this process.
Raw, guard, sandbox and guarded alternate query by query, so a noisy neighbour slows them alike.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SHOP_QUERIES = [
    "SELECT 1",
    "SELECT count(*) FROM orders",
    "SELECT status, count(*) AS n, sum(total) AS revenue FROM orders GROUP BY ALL ORDER BY revenue DESC",
    "SELECT c.country, sum(o.total) AS revenue FROM orders o JOIN customers c ON c.id = o.customer_id "
    "GROUP BY c.country ORDER BY revenue DESC",
    "SELECT date_trunc('month', created_at) AS month, sum(total) FROM orders GROUP BY 1 ORDER BY 1",
    "SELECT p.name, sum(i.quantity * i.unit_price) AS revenue FROM order_items i JOIN products p "
    "ON p.id = i.product_id GROUP BY p.name ORDER BY revenue DESC LIMIT 10",
    "SELECT customer_id, id, total FROM orders QUALIFY rank() OVER (PARTITION BY customer_id ORDER BY total DESC) = 1 "
    "ORDER BY total DESC LIMIT 20",
    "WITH spend AS (SELECT customer_id, sum(total) AS s FROM orders GROUP BY 1) "
    "SELECT count(*) FROM spend WHERE s > (SELECT avg(s) FROM spend)",
    "SELECT * FROM orders ORDER BY id LIMIT 1000",
]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _summary(samples: list[float]) -> dict:
    return {"p50_ms": round(statistics.median(samples), 3), "p95_ms": round(_percentile(samples, 0.95), 3),
            "n": len(samples)}


def _time(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def _default_database(folder: Path) -> tuple[Path, list[str]]:
    from pipelines.sql.demo_data import build_shop

    path = build_shop(folder / "shop.duckdb", customers=2_000, products=100, orders=50_000)
    return path, SHOP_QUERIES


def _queries_for(db: Path) -> list[str]:
    from pipelines.sql.schema import quote_identifier, read_schema_from_path

    names = read_schema_from_path(db).table_names()[:5]
    queries = ["SELECT 1"]
    for name in names:
        quoted = quote_identifier(name)
        queries += [f"SELECT count(*) FROM {quoted}", f"SELECT * FROM {quoted} LIMIT 1000"]
    return queries


def run_benchmark(db: str | Path | None = None, repeat: int = 15, spider_dir: str | Path | None = None) -> dict:
    import duckdb

    from pipelines.sql.guard import check_sql
    from pipelines.sql.sandbox import SandboxLimits, WorkerPool, run_guarded, run_query, table_names

    limits = SandboxLimits()
    inline = SandboxLimits(isolation="inline")
    with tempfile.TemporaryDirectory(prefix="voxql-bench-") as scratch:
        if db:
            db_path, queries = Path(db), _queries_for(Path(db))
        else:
            db_path, queries = _default_database(Path(scratch))
        tables = table_names(db_path)

        # Cold start: a new worker process, then its first query.
        pool = WorkerPool(1)
        started = time.perf_counter()
        pool.warm()
        worker_start_ms = (time.perf_counter() - started) * 1000
        pool.close()

        for sql in queries:  # warm everything once: caches, the worker's open database
            assert run_query(db_path, sql, limits).ok, sql
        samples: dict[str, dict[str, list[float]]] = {m: {q: [] for q in queries}
                                                      for m in ("raw", "guard", "sandbox", "guarded", "inline")}
        raw = duckdb.connect(str(db_path), read_only=True, config={"threads": limits.threads})
        try:
            for sql in queries:
                raw.execute(sql).fetchmany(limits.max_rows + 1)  # warm its buffer pool too
            for _ in range(repeat):
                for sql in queries:
                    samples["raw"][sql].append(_time(lambda: raw.execute(sql).fetchmany(limits.max_rows + 1)))
                    samples["guard"][sql].append(_time(lambda: check_sql(sql, tables)))
                    samples["sandbox"][sql].append(_time(lambda: run_query(db_path, sql, limits)))
                    samples["guarded"][sql].append(_time(lambda: run_guarded(db_path, sql, limits)))
        finally:
            raw.close()  # inline mode opens its own instance of the file, which needs this one closed
        for _ in range(repeat):
            for sql in queries:
                samples["inline"][sql].append(_time(lambda: run_query(db_path, sql, inline)))

    per_query = []
    for sql in queries:
        row = {"sql": sql, **{m: _summary(samples[m][sql]) for m in samples}}
        row["sandbox_over_raw"] = round(row["sandbox"]["p50_ms"] / max(row["raw"]["p50_ms"], 1e-6), 2)
        per_query.append(row)
    # The fixed cost is what the sandbox adds to a query that does nothing: `SELECT 1`.
    trivial = next(r for r in per_query if r["sql"] == "SELECT 1")
    fixed_ms = round(max(0.0, trivial["sandbox"]["p50_ms"] - trivial["raw"]["p50_ms"]), 3)
    for row in per_query:
        row["within_1.2x_raw_plus_fixed"] = row["sandbox"]["p50_ms"] <= 1.2 * row["raw"]["p50_ms"] + fixed_ms
    report = {
        "database": str(db) if db else "generated shop (2,000 customers, 50,000 orders)",
        "repeat": repeat,
        "limits": {"timeout_s": limits.timeout_s, "max_rows": limits.max_rows, "memory_limit": limits.memory_limit,
                   "threads": limits.threads},
        "overall": {m: _summary([v for q in queries for v in samples[m][q]]) for m in samples},
        "sandbox_fixed_cost_ms": fixed_ms,
        "worker_cold_start_ms": round(worker_start_ms, 1),
        "queries_within_1.2x_raw_plus_fixed": sum(r["within_1.2x_raw_plus_fixed"] for r in per_query),
        "queries": per_query,
    }
    spider = _spider_guard_timings(spider_dir)
    if spider:
        report["guard_on_spider_dev"] = spider
    _print(report)
    return report


def _spider_guard_timings(spider_dir: str | Path | None) -> dict | None:
    from pipelines.sql.guard import check_sql

    folder = Path(spider_dir or os.environ.get("VOXQL_SPIDER_DIR")
                  or Path(__file__).resolve().parents[3] / "shared" / "spider")
    if not (folder / "dev_gold.sql").is_file():
        return None
    tables = {d["db_id"]: d["table_names_original"] for d in json.loads((folder / "tables.json").read_text())}
    samples, allowed = [], 0
    for line in (folder / "dev_gold.sql").read_text().splitlines():
        if not line.strip():
            continue
        sql, db_id = line.rsplit("\t", 1)
        started = time.perf_counter()
        allowed += check_sql(sql, tables.get(db_id), dialect="sqlite").allowed
        samples.append((time.perf_counter() - started) * 1000)
    return {**_summary(samples), "allowed": allowed, "total": len(samples)}


def _print(report: dict) -> None:
    overall = report["overall"]
    print(f"{'mode':<10}{'p50 ms':>10}{'p95 ms':>10}")
    for mode, stats in overall.items():
        print(f"{mode:<10}{stats['p50_ms']:>10.3f}{stats['p95_ms']:>10.3f}")
    print(f"sandbox fixed cost (SELECT 1, sandbox - raw): {report['sandbox_fixed_cost_ms']:.3f} ms; "
          f"worker cold start {report['worker_cold_start_ms']:.0f} ms")
    print(f"{'raw p50':>9}{'sandbox':>9}{'ratio':>7}{'guard':>8}  ok  query")
    for row in report["queries"]:
        print(f"{row['raw']['p50_ms']:>9.2f}{row['sandbox']['p50_ms']:>9.2f}{row['sandbox_over_raw']:>7.2f}"
              f"{row['guard']['p50_ms']:>8.2f}  {'yes' if row['within_1.2x_raw_plus_fixed'] else 'NO '} "
              f"{row['sql'][:60]}")
    print(f"queries within 1.2 x raw + fixed cost: {report['queries_within_1.2x_raw_plus_fixed']}"
          f"/{len(report['queries'])}")
    if "guard_on_spider_dev" in report:
        s = report["guard_on_spider_dev"]
        print(f"guard on Spider dev gold ({s['total']} queries, sqlite -> duckdb): p50 {s['p50_ms']:.3f} ms, "
              f"p95 {s['p95_ms']:.3f} ms, allowed {s['allowed']}/{s['total']}")
