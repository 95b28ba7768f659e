"""`python -m pipelines bench-space`: start the app as a cpu-basic Space would, and time and weigh it.

Spaces runs `python app.py` with `SPACE_ID` set, after installing requirements.txt. This command does the same
here, on a fresh cache (a Space's first start: the embedded model is converted and the demo databases built),
and measures:
- `serving_s`: from the process start to the page answering HTTP 200;
- `first_answer_s`: from then to the first answer of `/ask` through `gradio_client`, as a visitor would ask it;
- `peak_rss_mb`: the app and its worker processes together, sampled every 0.2 s until the end.
It passes when the page serves within `--serve-within` seconds (a minute) and the peak stays within the
hardware's memory (cpu-basic: 16 GB). The report goes to results/ with the command, versions and date.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "results"
CPU_BASIC_MEMORY_MB = 16 * 1024


def tree_rss_mb(root: int) -> float:
    """Resident memory of `root` and all its descendants (read from /proc: Linux, where Spaces run)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited while listing
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        tree.update(children)
        frontier.extend(children)
    pages = 0
    for pid in tree:
        try:
            pages += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except OSError:
            pass
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakMemory:
    """The peak of `tree_rss_mb(pid)`, sampled on a thread until `stop()`."""

    def __init__(self, pid: int, every_s: float = 0.2):
        self.pid, self.peak_mb = pid, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(every_s,), daemon=True)
        self._thread.start()

    def _sample(self, every_s: float) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, tree_rss_mb(self.pid))
            self._stop.wait(every_s)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mb


def _wait_for_page(url: str, process: subprocess.Popen, timeout_s: float) -> float | None:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        if process.poll() is not None:
            return None
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.perf_counter()
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return None


def bench_space(question: str, database: str, *, timeout_s: float, cache: Path, log_path: Path) -> dict:
    """Start app.py as a Space, wait for the page, ask one question through the API, stop it."""
    from gradio_client import Client

    from pipelines.engine.vllm_engine import free_port

    port = free_port()
    env = {**os.environ, "SPACE_ID": "voxql/bench-space", "VOXQL_CACHE": str(cache), "VOXQL_PROFILE": "cpu",
           "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    url = f"http://127.0.0.1:{port}/"
    with open(log_path, "w") as log:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "app.py"], cwd=REPO_ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
        memory = PeakMemory(process.pid)
        report: dict = {"question": question, "database": database}
        try:
            served_at = _wait_for_page(url, process, timeout_s)
            if served_at is None:
                report["error"] = f"the page did not answer within {timeout_s:.0f} s (log: {log_path})"
                return report
            report["serving_s"] = round(served_at - started, 1)
            client = Client(url, verbose=False)
            sql, status, result, *_ = client.predict(question=question, database=database, adapter="default",
                                                     constrain=True, value_hints=True, api_name="/ask")
            report["first_answer_s"] = round(time.perf_counter() - served_at, 1)
            report["answer"] = {"sql": sql, "status": status, "rows": len((result or {}).get("data") or [])}
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            report["peak_rss_mb"] = round(memory.stop())
    return report


def cmd_bench_space(args: argparse.Namespace) -> int:
    from pipelines.spider.evaluate import run_metadata

    with tempfile.TemporaryDirectory(prefix="voxql-space-") as fresh:
        cache = Path(args.cache) if args.cache else Path(fresh)
        report = bench_space(args.question, args.database, timeout_s=args.timeout,
                             cache=cache, log_path=Path(fresh) / "app.log" if not args.log else Path(args.log))
    report.update({
        "cache": "kept: " + args.cache if args.cache else "fresh (a Space's first start)",
        "memory_limit_mb": CPU_BASIC_MEMORY_MB, "serve_within_s": args.serve_within,
        "cpus": os.cpu_count(),
        "passed": report.get("serving_s", float("inf")) <= args.serve_within
                  and report.get("peak_rss_mb", float("inf")) <= CPU_BASIC_MEMORY_MB
                  and bool(report.get("answer", {}).get("rows")),
        **run_metadata(args.command_line),
    })
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return 0 if report["passed"] else 1


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench-space", help="start the app as a cpu-basic Space would; time and weigh it")
    parser.add_argument("--question", default="How many singers do we have?")
    parser.add_argument("--database", default="concert_singer")
    parser.add_argument("--cache", help="use this VOXQL_CACHE instead of a fresh one (a restart, not a first start)")
    parser.add_argument("--serve-within", type=float, default=60.0, help="seconds the page may take (default 60)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    parser.add_argument("--log", help="keep the app's log here")
    parser.add_argument("--out", default=str(RESULTS_DIR / "bench-space-cpu-basic.json"))
    parser.set_defaults(func=cmd_bench_space)
