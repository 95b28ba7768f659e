"""The SQL sandbox: run one query read-only, bounded in time, memory, rows and bytes, in a worker process.

Defence in depth, each layer assuming the one before it failed:
1. the guard (guard.py), in `run_guarded` only;
2. DuckDB's own parser must see exactly one SELECT (sandbox_worker.check_statement);
3. a fresh read-only connection per query with external access, extension loading and Python replacement scans
   off, memory/threads/temp-space limits, and the configuration locked;
4. a watchdog that interrupts the query at the timeout, a row cap and a result-size cap;
5. a worker process with OS limits (address space, no file writes, no core dumps) and a scrubbed environment,
   killed and replaced when it overruns the timeout or dies, so nothing a query does can take the app down.

`isolation="inline"` runs layers 2-4 in this process instead (no OS limits, no hard kill): for measurements and
for platforms without `resource`.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipelines.errors import BadInput
from pipelines.sql import sandbox_worker
from pipelines.sql.schema import Schema, schema_from_rows

WORKER_SCRIPT = Path(sandbox_worker.__file__)
WORKER_START_TIMEOUT_S = 60.0
MAX_QUERIES_PER_WORKER = 500  # recycle now and then: a long-lived process only grows
ERROR_KINDS = ("blocked", "timeout", "memory", "sql_error", "bad_input", "busy")
MAX_QUEUED_PER_WORKER = 32  # more queries than this waiting per worker: "busy, try again" at once
WORKER_PREFIX = "voxql-sql-worker-"


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0
    max_rows: int = 1000
    memory_limit: str = "1GB"  # DuckDB's buffer manager limit
    threads: int = 2
    max_result_bytes: int = 8_000_000
    max_temp_directory_size: str = "0GB"  # no spilling to disk: a read-only sandbox writes nothing
    process_memory_mb: int | None = None  # worker address-space limit; None: 1 GB + 3 x memory_limit
    kill_grace_s: float = 2.0  # how long past the timeout before the worker is killed outright
    isolation: str = "process"  # "process" or "inline"


@dataclass
class QueryError:
    kind: str  # blocked | timeout | memory | sql_error | bad_input | busy
    message: str


@dataclass
class QueryResult:
    sql: str
    ok: bool
    columns: list[str] = field(default_factory=list)
    rows: list[list] = field(default_factory=list)
    row_count: int = 0
    truncated: bool = False
    elapsed_ms: float = 0.0
    error: QueryError | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def failed(sql: str, kind: str, message: str, elapsed_ms: float = 0.0) -> QueryResult:
    return QueryResult(sql=sql, ok=False, elapsed_ms=elapsed_ms, error=QueryError(kind, message))


def run_query(db_path: str | Path, sql: str, limits: SandboxLimits = SandboxLimits()) -> QueryResult:
    """Run `sql` in the sandbox, without the guard. Never raises for anything the query does."""
    started = time.perf_counter()
    try:
        db_path = _check_inputs(db_path, sql, limits)
    except BadInput as error:
        return failed(sql if isinstance(sql, str) else repr(sql), "bad_input", str(error))
    request_limits = {**asdict(limits), "process_memory_bytes": _process_memory_bytes(limits)}
    if limits.isolation == "inline":
        reply = sandbox_worker.execute(str(db_path), sql, request_limits)
    else:
        reply = _pool().run({"db": str(db_path), "sql": sql, "limits": request_limits}, limits)
    elapsed_ms = (time.perf_counter() - started) * 1000
    error = reply.get("error")
    return QueryResult(
        sql=sql, ok=error is None, columns=list(reply.get("columns") or []), rows=reply.get("rows") or [],
        row_count=int(reply.get("row_count") or 0), truncated=bool(reply.get("truncated")), elapsed_ms=elapsed_ms,
        error=QueryError(error["kind"], error["message"]) if error else None,
    )


def run_guarded(db_path: str | Path, sql: str, limits: SandboxLimits = SandboxLimits(), *,
                dialect: str = "duckdb") -> QueryResult:
    """The guard (with the database's own table names), then the sandbox on the guard's normalized SQL."""
    from pipelines.sql.guard import check_sql

    started = time.perf_counter()
    try:
        tables = table_names(db_path)
    except BadInput as error:
        return failed(sql if isinstance(sql, str) else repr(sql), "bad_input", str(error))
    verdict = check_sql(sql, tables, dialect=dialect, macros=database_schema(db_path).macros)
    if not verdict.allowed:
        return failed(verdict.sql, "blocked", verdict.reason or "refused",
                      (time.perf_counter() - started) * 1000)
    result = run_query(db_path, verdict.normalized, limits)
    result.sql = sql
    result.elapsed_ms = (time.perf_counter() - started) * 1000
    return result


def table_names(db_path: str | Path) -> list[str]:
    """The database's tables and views (the guard needs them on every query)."""
    return database_schema(db_path).table_names()


def database_schema(db_path: str | Path, limits: SandboxLimits = SandboxLimits()) -> Schema:
    """The schema of a DuckDB file, read once per file version inside the sandbox and cached.

    An uploaded file is untrusted: it is opened only in a worker, with the sandbox settings and limits, never
    in this process (opening a big one here cost seconds and gigabytes on every request).
    """
    path = Path(db_path)
    try:
        stat = path.stat()
    except OSError:
        raise BadInput(f"no such database file: {path}") from None
    return _cached_schema(str(path.resolve()), stat.st_mtime_ns, stat.st_size, limits)


@functools.lru_cache(maxsize=64)
def _cached_schema(path: str, mtime_ns: int, size: int, limits: SandboxLimits) -> Schema:
    return read_schema_in_sandbox(path, limits)


def read_schema_in_sandbox(db_path: str | Path, limits: SandboxLimits = SandboxLimits()) -> Schema:
    """The schema, read in a worker (uncached); BadInput with a one-line reason when the file does not open."""
    found = introspect_in_sandbox(db_path, limits)
    # A view the sandbox refuses to run (it reads what queries may not) is not part of what can be asked about:
    # left out of the schema, the prompt does not offer it and the guard does not know it.
    refused = {name.lower() for name in found["refused_views"]}
    columns = [row for row in found["columns"] if str(row[0]).lower() not in refused]
    return schema_from_rows(columns, found["constraints"], found["macros"])


def introspect_in_sandbox(db_path: str | Path, limits: SandboxLimits = SandboxLimits()) -> dict:
    """sandbox_worker.introspect's rows ({"columns", "constraints", "macros", "refused_views"}), read in a worker."""
    db_path = _check_inputs(db_path, "SELECT 1", limits)
    request_limits = {**asdict(limits), "process_memory_bytes": _process_memory_bytes(limits)}
    if limits.isolation == "inline":
        reply = sandbox_worker.read_schema(str(db_path), request_limits)
    else:
        reply = _pool().run({"op": "schema", "db": str(db_path), "limits": request_limits}, limits)
    error = reply.get("error")
    if error:
        raise BadInput(f"cannot open the database: {error['message']}")
    found = reply.get("schema") or {}
    return {"columns": found.get("columns") or [], "constraints": found.get("constraints") or [],
            "macros": found.get("macros") or [], "refused_views": found.get("refused_views") or {}}


# -- inputs ------------------------------------------------------------------------------------------------------
def _check_inputs(db_path: str | Path, sql: str, limits: SandboxLimits) -> Path:
    if not isinstance(sql, str) or not sql.strip():
        raise BadInput("the query is empty")
    if "\x00" in sql:
        raise BadInput("the query contains a NUL character")
    if limits.timeout_s <= 0 or limits.max_rows < 0 or limits.max_result_bytes <= 0 or limits.threads < 1:
        raise BadInput("timeout, threads and result limits must be positive")
    if limits.isolation not in ("process", "inline"):
        raise BadInput(f"unknown isolation {limits.isolation!r} (process or inline)")
    _memory_bytes(limits.memory_limit)
    path = Path(db_path)
    _check_database_file(path)
    return path.resolve()


def _check_database_file(path: Path) -> None:
    if not path.is_file():
        raise BadInput(f"no such database file: {path}")
    with open(path, "rb") as handle:
        header = handle.read(12)
    if header[8:12] != b"DUCK":
        raise BadInput(f"not a DuckDB database: {path.name} (import CSV, Parquet or SQLite files first)")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)\s*$", re.I)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def _memory_bytes(text: str) -> int:
    match = _SIZE.match(str(text))
    if not match or match.group(2).upper() not in _UNITS:
        raise BadInput(f"bad memory size {text!r} (use e.g. 500MB or 1GB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def _process_memory_bytes(limits: SandboxLimits) -> int:
    """Address space, not resident memory: Python, DuckDB's threads and allocator arenas reserve ~1 GB idle."""
    if limits.process_memory_mb:
        return limits.process_memory_mb * 2**20
    return 2**30 + 3 * _memory_bytes(limits.memory_limit)


# -- worker processes ----------------------------------------------------------------------------------------------
_LIVE_WORKERS: set = set()  # every started worker, busy or idle: all are ended when the app exits


class _Worker:
    """One `python -I sandbox_worker.py` process, in its own empty folder, with a scrubbed environment."""

    def __init__(self) -> None:
        # The app's pid in the name: folders of an app that died are swept by the next one (_sweep_folders).
        self.folder = tempfile.mkdtemp(prefix=f"{WORKER_PREFIX}{os.getpid()}-")
        _LIVE_WORKERS.add(self)
        env = {"HOME": self.folder, "TMPDIR": self.folder, "PATH": os.defpath, "LANG": "C.UTF-8",
               "MALLOC_ARENA_MAX": "2"}  # fewer glibc arenas: less address space reserved per thread
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", str(WORKER_SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, cwd=self.folder, env=env, start_new_session=True,
            )
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        self.queries = 0
        self._buffer = b""
        if self._read_line(time.monotonic() + WORKER_START_TIMEOUT_S, 1024) is None:
            self.kill()
            raise RuntimeError("the SQL sandbox worker did not start")

    def ask(self, request: dict, deadline: float, max_bytes: int) -> dict | None:
        """The worker's reply, or None when it died, overran the deadline or sent too much."""
        try:
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
        except OSError:
            return None
        self.queries += 1
        line = self._read_line(deadline, max_bytes)
        if line is None:
            return None
        try:
            reply = json.loads(line)
            reply["rows"] = sandbox_worker.decode_rows(reply.get("rows") or [])
        except RecursionError:  # the worker cuts values at MAX_VALUE_DEPTH; this is a last line of defence
            return {"error": {"kind": "sql_error", "message": "the result is nested too deeply to show"}}
        except (ValueError, TypeError, KeyError, AttributeError):
            return None  # not what a healthy worker writes: treat it as broken
        return reply

    def _read_line(self, deadline: float, max_bytes: int) -> bytes | None:
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or len(self._buffer) > max_bytes:
                return None
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:  # EOF: the worker died
                    return None
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def exit_reason(self) -> str:
        code = self.process.poll()
        if code is None:
            return "it overran its time"
        return f"it exited with code {code}" if code >= 0 else f"it was killed by signal {-code}"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        shutil.rmtree(self.folder, ignore_errors=True)
        _LIVE_WORKERS.discard(self)


def kill_all_workers() -> None:
    """End every worker and remove its folder, busy ones too (at exit: nothing will wait for their answers)."""
    for worker in list(_LIVE_WORKERS):
        worker.kill()


atexit.register(kill_all_workers)


class WorkerPool:
    """Up to `size` worker processes, reused across queries; a broken one is killed and replaced on demand.

    Time spent waiting for a worker counts in the query's timeout. A query is answered "busy" at once, instead
    of waiting out its timeout, when the queries ahead of it would take longer than that timeout at the pool's
    recent pace (an average of recent query times), or when more than MAX_QUEUED_PER_WORKER per worker wait.
    """

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._count = 0
        self._waiting = 0
        self._pace_s = 0.05  # moving average of the time a worker takes per query
        self._cond = threading.Condition()

    def run(self, request: dict, limits: SandboxLimits) -> dict:
        started = time.monotonic()
        try:
            worker = self._acquire(started + limits.timeout_s)
        except _Busy as busy:
            return {"error": {"kind": "busy", "message": str(busy)}}
        except (OSError, RuntimeError) as error:
            return {"error": {"kind": "sql_error", "message": f"the SQL sandbox could not start: {error}"}}
        remaining = limits.timeout_s - (time.monotonic() - started)
        if remaining <= 0.05:
            self._release(worker, healthy=True)
            return {"error": {"kind": "busy", "message": f"the SQL sandbox was busy for the whole "
                                                         f"{limits.timeout_s:g} s timeout; try again"}}
        request = {**request, "limits": {**request["limits"], "timeout_s": remaining}}
        deadline = time.monotonic() + remaining + max(limits.kill_grace_s, 0.25 * limits.timeout_s)
        reply = None
        asked = time.monotonic()
        try:
            reply = worker.ask(request, deadline, 2 * limits.max_result_bytes + 1_000_000)
        finally:
            with self._cond:
                self._pace_s = 0.8 * self._pace_s + 0.2 * (time.monotonic() - asked)
            self._release(worker, healthy=reply is not None)
        if reply is not None:
            return reply
        if time.monotonic() >= deadline:
            return {"error": {"kind": "timeout", "message": f"the query ran longer than {limits.timeout_s:g} s; "
                                                           "its sandbox process was stopped"}}
        return {"error": {"kind": "memory", "message": "the query crashed its sandbox process "
                                                      f"({worker.exit_reason()}), most likely by running out of "
                                                      f"memory; the sandbox was restarted"}}

    def warm(self) -> None:
        """Start one worker ahead of the first query (about 0.1-0.3 s)."""
        self._release(self._acquire(time.monotonic() + WORKER_START_TIMEOUT_S), healthy=True)

    def _acquire(self, deadline: float) -> _Worker:
        with self._cond:
            if not self._idle and self._count >= self.size:
                expected_wait = (self._waiting + 1) * self._pace_s / self.size
                if (self._waiting >= MAX_QUEUED_PER_WORKER * self.size
                        or expected_wait > deadline - time.monotonic()):
                    raise _Busy(f"the SQL sandbox is busy ({self._waiting + self.size} queries ahead of this one); "
                                "try again in a moment")
                self._waiting += 1
                try:
                    while not self._idle and self._count >= self.size:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise _Busy("the SQL sandbox stayed busy for the whole timeout; try again")
                        self._cond.wait(remaining)
                finally:
                    self._waiting -= 1
            if self._idle:
                return self._idle.pop()
            self._count += 1
        try:
            worker = _Worker()
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._all.add(worker)
        return worker

    def _release(self, worker: _Worker, *, healthy: bool) -> None:
        recycle = not healthy or worker.queries >= MAX_QUERIES_PER_WORKER or worker.process.poll() is not None
        if recycle:
            worker.kill()
        with self._cond:
            if recycle:
                self._count -= 1
                self._all.discard(worker)
            else:
                self._idle.append(worker)
            self._cond.notify()

    def close(self) -> None:
        """Stop every worker, busy ones too (at exit), and remove their folders."""
        with self._cond:
            workers, self._idle, self._all = list(self._all), [], set()
            self._count = 0
        for worker in workers:
            worker.kill()


class _Busy(Exception):
    """No worker within the query's time, or too many queries waiting already."""


def _sweep_folders() -> None:
    """Remove worker folders whose app process is gone (a crash or a kill leaves them behind)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{WORKER_PREFIX}*"):
        pid = folder.name[len(WORKER_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass  # alive, or someone else's


@functools.cache
def _pool() -> WorkerPool:
    """The process's pool (a cache of started workers, like a loaded model). VOXQL_SQL_WORKERS sets its size."""
    size = int(os.environ.get("VOXQL_SQL_WORKERS") or min(4, os.cpu_count() or 1))
    _sweep_folders()
    pool = WorkerPool(size)
    atexit.register(pool.close)
    return pool


def warm_up() -> None:
    """Start a sandbox worker now (the app calls this at launch so the first query doesn't wait for it)."""
    _pool().warm()
