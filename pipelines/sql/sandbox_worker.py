"""Run one query in a locked-down DuckDB connection; also the entry point of the sandbox worker process.

This file imports only the standard library and duckdb, because the worker runs it as a script with
`python -I` (no user site, no environment, no project on sys.path). The parent (sandbox.py) sends one JSON
request per line on stdin and reads one JSON reply per line on stdout. JSON, not pickle: the parent must never
unpickle what a sandboxed process wrote.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import os
import re
import sys
import threading
import time
import uuid

import duckdb

INTERRUPT_EVERY_S = 0.05  # an interrupt that lands before execution starts is dropped: repeat it
_EXPLAIN = re.compile(r"\s*EXPLAIN(\s+ANALY[SZ]E)?\s+", re.I)


class Refusal(Exception):
    """The sandbox's own statement check refused the query (kind "blocked")."""


# In this order: `temp_directory` and `allowed_*` can only change while external access is on, and
# `lock_configuration` must come last. (Passed together as `config=`, DuckDB applies them in its own order and
# refuses.) `temp_directory = ''` means no spilling: otherwise DuckDB creates `<db>.tmp/` next to the database.
_SETTINGS = (
    ("temp_directory", "''"),
    ("enable_external_access", "false"),  # no files, globs, URLs, COPY, ATTACH, EXPORT, INSTALL, LOAD
    ("autoload_known_extensions", "false"),
    ("autoinstall_known_extensions", "false"),
    ("allow_community_extensions", "false"),
    ("python_enable_replacements", "false"),  # `FROM some_variable` must not read the caller's DataFrames
)
_MUST_HOLD = {"enable_external_access": False, "autoload_known_extensions": False,
              "autoinstall_known_extensions": False, "lock_configuration": True, "temp_directory": ""}


def connect(db_path: str, limits: dict) -> duckdb.DuckDBPyConnection:
    """A read-only connection whose database instance has the sandbox settings, locked.

    DuckDB shares one instance per file within a process: when it is already locked (another sandboxed query
    on the same file), the settings are verified instead of set.
    """
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        if not con.execute("SELECT current_setting('lock_configuration')").fetchone()[0]:
            for name, value in (*_SETTINGS, ("threads", int(limits["threads"])),
                                ("memory_limit", _quote(limits["memory_limit"])),
                                ("max_temp_directory_size", _quote(limits["max_temp_directory_size"])),
                                ("lock_configuration", "true")):
                con.execute(f"SET {name} = {value}")
        names = ", ".join(f"current_setting('{name}')" for name in _MUST_HOLD)
        if list(con.execute(f"SELECT {names}").fetchone()) != list(_MUST_HOLD.values()):
            raise RuntimeError("the database is open elsewhere in this process without the sandbox settings")
    except BaseException:
        con.close()
        raise
    return con


def _quote(text) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def check_statement(con: duckdb.DuckDBPyConnection, sql: str):
    """DuckDB's own parser must see exactly one SELECT (or EXPLAIN of one): the guard may have been bypassed."""
    statements = con.extract_statements(sql)
    if len(statements) != 1:
        raise Refusal(f"only one statement can run at a time (found {len(statements)})")
    statement = statements[0]
    kind = statement.type.name
    if kind == "EXPLAIN":
        explained = _EXPLAIN.match(statement.query)
        inner = con.extract_statements(statement.query[explained.end():]) if explained else []
        if len(inner) == 1 and inner[0].type.name == "SELECT":
            return statement
    elif kind == "SELECT":
        return statement
    raise Refusal(f"the sandbox runs read-only queries only, not {kind} statements")


def execute(db_path: str, sql: str, limits: dict, database: duckdb.DuckDBPyConnection | None = None) -> dict:
    """Run `sql` under `limits`; a dict with the fields of sandbox.QueryResult (error as {"kind", "message"}).

    With `database` (an open sandboxed instance, see `Databases`), the query gets a fresh connection to it
    (`cursor()`: its own temp catalog, variables and prepared statements); otherwise a new instance is opened
    and closed around the query (about 15 ms more).
    """
    started = time.perf_counter()
    result = {"columns": [], "rows": [], "row_count": 0, "truncated": False, "error": None}
    done = threading.Event()
    timed_out = threading.Event()
    con = watchdog = None
    try:
        con = database.cursor() if database is not None else connect(db_path, limits)
        statement = check_statement(con, sql)
        watchdog = threading.Thread(target=_watchdog, args=(con, float(limits["timeout_s"]), done, timed_out),
                                    daemon=True)
        watchdog.start()
        cursor = con.execute(statement)
        result["columns"] = [d[0] for d in cursor.description or []]
        result["rows"], result["truncated"] = _fetch(cursor, int(limits["max_rows"]), int(limits["max_result_bytes"]))
        result["row_count"] = len(result["rows"])
        if timed_out.is_set():  # an interrupted query may end without an error: its rows are not the answer
            raise duckdb.InterruptException("interrupted")
    except Refusal as refusal:
        result["error"] = {"kind": "blocked", "message": str(refusal)}
    except BaseException as error:  # noqa: BLE001 - every failure becomes a typed error, never a crash
        result["error"] = classify(error, timed_out.is_set(), limits)
        result["rows"], result["columns"], result["row_count"], result["truncated"] = [], [], 0, False
    finally:
        done.set()
        if watchdog is not None:
            watchdog.join()  # it wakes at once; no interrupt may reach a closed connection
        if con is not None:
            try:
                con.close()
            except Exception:  # noqa: BLE001
                pass
    result["elapsed_ms"] = (time.perf_counter() - started) * 1000
    return result


def _watchdog(con, timeout_s: float, done: threading.Event, timed_out: threading.Event) -> None:
    """DuckDB has no statement timeout: interrupt from this thread, again and again until the query ends."""
    if done.wait(timeout_s):
        return
    timed_out.set()
    while not done.is_set():
        con.interrupt()
        done.wait(INTERRUPT_EVERY_S)


def _fetch(cursor, max_rows: int, max_bytes: int) -> tuple[list[list], bool]:
    """At most `max_rows` rows and about `max_bytes` of values, fetched in chunks (never the whole result)."""
    rows: list[list] = []
    used = 0
    while len(rows) <= max_rows:
        chunk = cursor.fetchmany(min(1024, max_rows + 1 - len(rows)))
        if not chunk:
            return rows, False
        for row in chunk:
            if len(rows) == max_rows:
                return rows, True
            size = _row_size(row)
            if used + size > max_bytes:
                if not rows:  # one huge row: keep it, with its long strings clipped to the budget
                    rows.append([_clip(value, max_bytes // max(1, len(row))) for value in row])
                return rows, True
            used += size
            rows.append(list(row))
    return rows, True


def _row_size(row) -> int:
    size = 0
    for value in row:  # the common case (numbers, short strings) without a call per cell
        kind = type(value)
        size += len(value) + 3 if kind is str or kind is bytes else _size(value) if kind in _NESTED else 10
    return size


_NESTED = (list, tuple, dict)


def _size(value) -> int:
    """Roughly the bytes a value takes in JSON: good enough to cap a result, cheap enough per cell."""
    if isinstance(value, (str, bytes)):
        return len(value) + 2
    if isinstance(value, (list, tuple)):
        return 2 + sum(_size(v) + 1 for v in value)
    if isinstance(value, dict):
        return 2 + sum(_size(k) + _size(v) + 2 for k, v in value.items())
    return 8


def _clip(value, limit: int):
    if isinstance(value, (str, bytes)) and len(value) > limit:
        return value[:max(0, limit - 1)] + ("…" if isinstance(value, str) else b"")
    return value


def classify(error: BaseException, timed_out: bool, limits: dict) -> dict:
    """Map an exception to one of the error kinds with a one-line message."""
    message = (str(error).strip().splitlines() or [type(error).__name__])[0][:500]
    if timed_out or isinstance(error, duckdb.InterruptException):
        return {"kind": "timeout", "message": f"the query ran longer than {limits['timeout_s']:g} s and was stopped"}
    if isinstance(error, (duckdb.OutOfMemoryException, MemoryError)) or "Out of Memory" in message:
        return {"kind": "memory",
                "message": f"the query needs more memory than the sandbox allows ({limits['memory_limit']})"}
    if isinstance(error, duckdb.PermissionException) or "read-only mode" in message \
            or "configuration has been locked" in message:
        return {"kind": "blocked", "message": f"the sandbox refused it: {message}"}
    if isinstance(error, duckdb.Error):
        return {"kind": "sql_error", "message": message}
    return {"kind": "sql_error", "message": f"{type(error).__name__}: {message}"}


# -- JSON with the types DuckDB returns -------------------------------------------------------------------------
_PLAIN = frozenset({type(None), bool, int, float, str})
_TAGGED = {  # exact type -> (tag, to text); subclasses go through `encode`'s isinstance checks
    dt.datetime: ("datetime", dt.datetime.isoformat), dt.date: ("date", dt.date.isoformat),
    dt.time: ("time", dt.time.isoformat), decimal.Decimal: ("decimal", str), uuid.UUID: ("uuid", str),
    dt.timedelta: ("timedelta", lambda v: [v.days, v.seconds, v.microseconds]),
    bytes: ("bytes", lambda v: base64.b64encode(v).decode()),
}
_DECODERS = {
    "datetime": dt.datetime.fromisoformat, "date": dt.date.fromisoformat, "time": dt.time.fromisoformat,
    "timedelta": lambda v: dt.timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
    "decimal": decimal.Decimal, "uuid": uuid.UUID, "bytes": base64.b64decode,
}


def encode_rows(rows: list[list]) -> list[list]:
    return [[v if type(v) in _PLAIN else encode(v) for v in row] for row in rows]


def encode(value):
    """JSON-safe form of a result value; non-JSON types become {"$t": type, "v": text}."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind in _TAGGED:
        tag, to_text = _TAGGED[kind]
        return {"$t": tag, "v": to_text(value)}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {"$t": "map", "v": [[encode(k), encode(v)] for k, v in value.items()]}
    if isinstance(value, (bool, int, float, str)):
        return value
    for base, (tag, to_text) in _TAGGED.items():
        if isinstance(value, base):
            return {"$t": tag, "v": to_text(value)}
    if isinstance(value, (bytearray, memoryview)):
        return {"$t": "bytes", "v": base64.b64encode(bytes(value)).decode()}
    return str(value)


def decode_rows(rows: list[list]) -> list[list]:
    return [[v if type(v) in _PLAIN else decode(v) for v in row] for row in rows]


def decode(value):
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    kind, text = value.get("$t"), value.get("v")
    if kind == "map":
        pairs = [(decode(k), decode(v)) for k, v in text]
        return {(k if _hashable(k) else str(k)): v for k, v in pairs}
    decoder = _DECODERS.get(kind)
    return decoder(text) if decoder else str(text)


def _hashable(value) -> bool:
    try:
        hash(value)
        return True
    except TypeError:
        return False


class Databases:
    """The worker's open sandboxed instances, keyed by file version and settings (opening one costs ~15 ms).

    Sharing an instance is safe because nothing a SELECT can do outlives its connection: the file is read-only,
    the configuration locked, ATTACH/SET/CREATE refused, and temp objects belong to the connection.
    """

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._open: dict[tuple, duckdb.DuckDBPyConnection] = {}

    def get(self, db_path: str, limits: dict) -> duckdb.DuckDBPyConnection:
        stat = os.stat(db_path)
        key = (db_path, stat.st_mtime_ns, stat.st_size, limits["threads"], limits["memory_limit"],
               limits["max_temp_directory_size"])
        if key in self._open:
            self._open[key] = self._open.pop(key)  # most recently used last
            return self._open[key]
        self.drop(db_path)  # one instance per file: new limits need a new instance
        while len(self._open) >= self.size:
            self._close(next(iter(self._open)))
        self._open[key] = connect(db_path, limits)
        return self._open[key]

    def drop(self, db_path: str) -> None:
        """Forget a file's instances (after a timeout or memory error, start clean)."""
        for key in [k for k in self._open if k[0] == db_path]:
            self._close(key)

    def _close(self, key: tuple) -> None:
        try:
            self._open.pop(key).close()
        except Exception:  # noqa: BLE001
            pass


# -- the worker process ----------------------------------------------------------------------------------------
def _lock_down() -> None:
    """Process limits that hold whatever DuckDB does: no file writes, no core dumps, few file descriptors."""
    import resource
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the app's terminal is the app's business
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past RLIMIT_FSIZE fails (EFBIG) instead of killing
    for limit, value in ((resource.RLIMIT_FSIZE, 0), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard if hard > 0 else 256), hard))


def _set_memory_limit(limit_bytes: int | None) -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = resource.RLIM_INFINITY if not limit_bytes else limit_bytes
    if hard != resource.RLIM_INFINITY:
        soft = hard if soft == resource.RLIM_INFINITY else min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def serve(request: dict, databases: Databases) -> dict:
    db_path, sql, limits = request["db"], request["sql"], request["limits"]
    try:
        database = databases.get(db_path, limits)
    except BaseException as error:  # noqa: BLE001
        return {"columns": [], "rows": [], "row_count": 0, "truncated": False, "elapsed_ms": 0.0,
                "error": classify(error, False, limits)}
    reply = execute(db_path, sql, limits, database)
    if reply["error"] and reply["error"]["kind"] in ("timeout", "memory"):
        databases.drop(db_path)
    return reply


def main() -> int:
    _lock_down()
    databases = Databases()
    out = sys.stdout
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        try:
            request = json.loads(line)
            _set_memory_limit(request["limits"].get("process_memory_bytes"))
            reply = serve(request, databases)
            reply["rows"] = encode_rows(reply["rows"])
            text = json.dumps(reply)
        except MemoryError:
            text = json.dumps({"error": {"kind": "memory", "message": "the result did not fit in the sandbox's memory"},
                               "columns": [], "rows": [], "row_count": 0, "truncated": False, "elapsed_ms": 0.0})
        _set_memory_limit(None)  # writing the reply must not fail for want of memory
        out.write(text + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
