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
import functools
import json
import os
import re
import sys
import threading
from contextlib import contextmanager
import time
import uuid

import duckdb

INTERRUPT_EVERY_S = 0.05  # an interrupt that lands before execution starts is dropped: repeat it
_EXPLAIN = re.compile(r"\s*EXPLAIN(\s+ANALY[SZ]E)?\s+", re.I)
MAX_VALUE_DEPTH = 32  # deeper nested values are cut: JSON encoders and decoders recurse once per level
MAX_SCHEMA_COLUMNS = 20_000  # a schema bigger than this is no use in a prompt, and costs the app to hold

# The policy both the guard (on sqlglot's tree) and this worker (on DuckDB's own tree) enforce.
# Table functions that compute rows from their arguments only: no files, network, catalog or settings.
TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest", "json_each", "json_tree"})
# Built-in functions that change state, wait, read files, the configuration or the instance: settings, plans
# (`json_serialize_plan(..., optimize := true)` folds forbidden calls into constants), versions, and counters
# or ids that reveal other sessions' activity (`current_query_id()`, `txid_current()`).
FORBIDDEN_FUNCTIONS = frozenset({
    "nextval", "currval", "setval", "write_log", "sleep_ms", "pg_sleep", "current_setting", "getenv",
    "query", "query_table", "glob", "read_blob", "read_text", "read_csv", "read_csv_auto", "read_json",
    "read_json_auto", "read_ndjson", "read_parquet", "parquet_scan", "read_duckdb", "sniff_csv",
    "json_execute_serialized_sql", "json_serialize_sql", "json_deserialize_sql", "json_serialize_plan",
    "version", "platform", "user_agent", "extension_versions", "stats", "getvariable",
    "current_query", "current_query_id", "current_connection_id", "current_transaction_id", "txid_current",
    "current_database", "current_catalog", "current_schema", "current_schemas", "current_user", "current_role",
    "session_user", "user", "in_search_path", "database_list", "database_size", "show_databases",
    "has_database_privilege", "has_schema_privilege", "has_sequence_privilege", "pg_my_temp_schema",
    "pg_is_other_temp_schema", "enable_profiling", "disable_profiling", "enable_profile", "disable_profile",
    "enable_object_cache", "disable_object_cache", "copy_database", "import_database",
})
FORBIDDEN_PREFIXES = ("duckdb_", "pragma_")  # the instance's catalogs, settings, logs and memory


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


def check_statement(con: duckdb.DuckDBPyConnection, sql: str, policy: "Policy | None" = None):
    """DuckDB's own parser must see exactly one SELECT (or EXPLAIN of one): the guard may have been bypassed.

    With `policy`, DuckDB's parse tree of that SELECT must also hold only allowed functions and tables
    (`check_tree`): the guard read the query with sqlglot, this reads it the way DuckDB will run it.
    """
    statements = con.extract_statements(sql)
    if len(statements) != 1:
        raise Refusal(f"only one statement can run at a time (found {len(statements)})")
    statement = statements[0]
    kind = statement.type.name
    query = statement.query
    if kind == "EXPLAIN":
        explained = _EXPLAIN.match(query)
        inner = con.extract_statements(query[explained.end():]) if explained else []
        if len(inner) != 1 or inner[0].type.name not in ("SELECT", "MULTI"):
            raise Refusal("the sandbox explains read-only queries only")
        kind, query = inner[0].type.name, inner[0].query
    if kind == "MULTI" and _first_word(query) in ("pivot", "unpivot"):
        # A PIVOT without an IN list: DuckDB reads the distinct values first, so it is two steps that
        # json_serialize_sql cannot show; its words are checked instead.
        if policy is not None:
            policy.check_words(query)
        return statement
    if kind != "SELECT":
        raise Refusal(f"the sandbox runs read-only queries only, not {kind} statements")
    if policy is not None:
        policy.check_tree(con, query)
    return statement


def _first_word(sql: str) -> str:
    words = re.findall(r"[A-Za-z_]+", re.sub(r"--[^\n]*|/\*.*?\*/", " ", sql, flags=re.S)[:200])
    return words[0].lower() if words else ""


class Policy:
    """What a query on one database may name, checked on DuckDB's own parse tree.

    Functions: DuckDB built-ins minus FORBIDDEN_FUNCTIONS, and never a macro of the database itself (a macro
    named `lower` in an uploaded file would shadow the built-in). Table functions: TABLE_FUNCTIONS only.
    Tables: the database's own tables and views, or CTEs of the query, and a CTE may not take the name of a
    system view (`pg_settings`, `duckdb_databases`): DuckDB would read the system view wherever the CTE is
    not in scope (a forward reference), so such a name is refused rather than resolved.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.tables = {name.lower() for (name,) in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
            "AND schema_name = 'main' UNION ALL SELECT view_name FROM duckdb_views() "
            "WHERE NOT internal AND database_name = current_database() AND schema_name = 'main'").fetchall()}
        self.macros = {name.lower() for (name,) in con.execute(
            "SELECT function_name FROM duckdb_functions() WHERE NOT internal").fetchall()}
        builtins, self.system_names = _builtins()
        self.functions = builtins - self.macros
        self.refused_views = self._check_views(con)

    def _check_views(self, con: duckdb.DuckDBPyConnection) -> dict[str, str]:
        """{view: reason} for the database's views whose own query this policy refuses, or that read one.

        A view runs with the sandbox settings, so it cannot read files; but it could read what a query may not
        (`CREATE VIEW v AS SELECT path FROM duckdb_databases()` names the server's folders). Each view's query
        is read once; refusals then spread to the views that read a refused one, however long the chain.
        """
        self.refused_views = {}  # while each view's own query is checked, other views count as tables
        refused: dict[str, str] = {}
        readers: dict[str, list[str]] = {}  # view -> the views whose query reads it
        for name, sql in con.execute("SELECT view_name, sql FROM duckdb_views() WHERE NOT internal "
                                     "AND database_name = current_database()").fetchall():
            match = _VIEW_PREFIX.match(sql or "")
            try:
                if not match:
                    raise Refusal("its definition could not be read")
                names = self._parse(con, sql[match.end():].rstrip().rstrip(";"))
                self.check_names(names)
            except Refusal as refusal:
                refused[name.lower()] = str(refusal)
                continue
            ctes = {n.lower() for n, kind, _ in names if kind == "cte"}
            for table, kind, _ in names:
                if kind == "table" and table.lower() not in ctes:
                    readers.setdefault(table.lower(), []).append(name.lower())
        queue = list(refused)
        while queue:
            view = queue.pop()
            for reader in readers.get(view, []):
                if reader not in refused:
                    refused[reader] = f"it reads the view {view!r}, which {refused[view]}"
                    queue.append(reader)
        return refused

    def check_function(self, name: str, *, table: bool = False) -> None:
        lowered = name.lower()
        if lowered in FORBIDDEN_FUNCTIONS or lowered.startswith(FORBIDDEN_PREFIXES):
            raise Refusal(f"{name}() is not allowed: it reads settings, files or the instance, or changes state")
        if lowered in self.macros:  # a table macro named `range` replaces the built-in just as well
            raise Refusal(f"{name}() is a macro stored in the database; stored macros are not run")
        if table:
            if lowered not in TABLE_FUNCTIONS:
                raise Refusal(f"table function {name}() is not allowed")
        elif lowered not in self.functions and lowered not in TABLE_FUNCTIONS:  # unnest() in a SELECT list
            raise Refusal(f"unknown function {name}()")

    def check_table(self, catalog: str, schema: str, name: str, ctes: set[str]) -> None:
        lowered = name.lower()
        if catalog or schema.lower() not in ("", "main"):
            raise Refusal(f"only the tables of this database can be read, not {'.'.join(filter(None, (catalog, schema, name)))}")
        if lowered in ctes and lowered not in self.system_names:
            return
        if lowered in self.refused_views:
            raise Refusal(f"the view {name!r} is not run: {self.refused_views[lowered]}")
        if lowered in self.tables:
            return
        raise Refusal(f"unknown table {name!r}")

    def check_tree(self, con: duckdb.DuckDBPyConnection, sql: str) -> None:
        """Refuse `sql` (one SELECT) unless DuckDB's own parse tree of it names only what this policy allows."""
        self.check_names(self._parse(con, sql))

    @staticmethod
    def _parse(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple[str, str, dict]]:
        try:
            tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])
        except RecursionError:
            raise Refusal("the query is nested too deeply") from None
        if tree.get("error"):
            raise Refusal(f"DuckDB could not read the query: {str(tree.get('error_message'))[:200]}")
        return tree_names(tree)

    def check_names(self, names: list[tuple[str, str, dict]]) -> None:
        ctes = {name.lower() for name, kind, _ in names if kind == "cte"}
        for name in ctes - self.tables:
            # DuckDB reads the catalog wherever the CTE is not in scope (a forward reference), so a CTE may not
            # take the name of a system view. (One named like a table function shadows nothing: those take
            # parentheses.)
            if name in self.system_names or name.startswith(FORBIDDEN_PREFIXES):
                raise Refusal(f"a CTE may not be named like the system view {name!r}")
        for name in ctes & set(self.refused_views):
            raise Refusal(f"a CTE may not be named like the view {name!r}, which {self.refused_views[name]}")
        for name, kind, node in names:
            if kind in ("function", "table_function"):
                if node.get("schema") or node.get("catalog"):
                    raise Refusal(f"functions are called by their plain name, not {node.get('schema')}.{name}()")
                self.check_function(name, table=kind == "table_function")
            elif kind == "table":
                self.check_table(node.get("catalog_name") or "", node.get("schema_name") or "", name, ctes)

    def check_words(self, sql: str) -> None:
        """For what DuckDB cannot serialise (a PIVOT without IN): no word may name a forbidden function,
        a table function other than TABLE_FUNCTIONS, a system view, or another catalog."""
        for word in re.findall(r"[A-Za-z_][A-Za-z0-9_$]*", re.sub(r"'(?:[^']|'')*'", "''", sql)):
            lowered = word.lower()
            if (lowered in FORBIDDEN_FUNCTIONS or lowered.startswith(FORBIDDEN_PREFIXES)
                    or lowered in self.system_names and lowered not in self.tables or lowered in self.macros
                    or lowered in self.table_function_names - TABLE_FUNCTIONS):
                raise Refusal(f"{word!r} is not allowed in this query")

    @property
    def table_function_names(self) -> frozenset[str]:
        return _table_functions()


# `CREATE [OR REPLACE] [TEMP] VIEW name [(columns)] AS `, before a stored view's query (duckdb_views().sql).
_VIEW_PREFIX = re.compile(r'\s*CREATE\s+(?:OR\s+REPLACE\s+)?(?:TEMP(?:ORARY)?\s+)?VIEW\s+'
                          r'(?:"(?:[^"]|"")*"|[^\s("]+)(?:\.(?:"(?:[^"]|"")*"|[^\s("]+))*\s*'
                          r'(?:\((?:"(?:[^"]|"")*"|[^)"])*\)\s*)?AS\s+', re.I)


def tree_names(tree) -> list[tuple[str, str, dict]]:
    """(name, kind, node) for every function call, table function, base table and CTE in DuckDB's JSON tree.

    Iterative, so a deeply nested query cannot exhaust the stack.
    """
    found = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        kind = node.get("type")
        if kind == "TABLE_FUNCTION" and isinstance(node.get("function"), dict):
            function = node["function"]
            found.append((str(function.get("function_name")), "table_function", function))
            stack.extend(function.get("children") or [])
            stack.extend(function.get("arguments") or [])
            stack.extend(v for k, v in node.items() if k != "function")
            continue
        if kind == "BASE_TABLE":
            found.append((str(node.get("table_name")), "table", node))
        elif "function_name" in node:
            found.append((str(node["function_name"]), "function", node))
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict):
            for entry in cte_map.get("map") or []:
                found.append((str(entry.get("key")), "cte", entry))
        stack.extend(node.values())
    return found


@functools.cache
def _builtins() -> tuple[frozenset[str], frozenset[str]]:
    """DuckDB's built-in function names and the names of its system views, from a fresh in-memory instance."""
    with duckdb.connect(":memory:", config={"enable_external_access": False}) as con:
        functions = frozenset(name.lower() for (name,) in con.execute(
            "SELECT DISTINCT function_name FROM duckdb_functions() WHERE function_type <> 'table'").fetchall())
        views = frozenset(name.lower() for (name,) in con.execute(
            "SELECT view_name FROM duckdb_views() WHERE internal AND schema_name IN ('main', 'pg_catalog')"
        ).fetchall())
    return functions, views


def builtin_function_names() -> frozenset[str]:
    """Every built-in function name, table functions included."""
    return _builtins()[0] | _table_functions()


@functools.cache
def _table_functions() -> frozenset[str]:
    with duckdb.connect(":memory:", config={"enable_external_access": False}) as con:
        return frozenset(name.lower() for (name,) in con.execute(
            "SELECT DISTINCT function_name FROM duckdb_functions() WHERE function_type = 'table'").fetchall())


def execute(db_path: str, sql: str, limits: dict, database: "Database | None" = None) -> dict:
    """Run `sql` under `limits`; a dict with the fields of sandbox.QueryResult (error as {"kind", "message"}).

    With `database` (an open sandboxed instance, see `Databases`), the query gets a fresh connection to it
    (`cursor()`: its own temp catalog, variables and prepared statements); otherwise a new instance is opened
    and closed around the query (about 15 ms more).
    """
    started = time.perf_counter()
    result = {"columns": [], "rows": [], "row_count": 0, "truncated": False, "error": None}
    try:
        with _session(db_path, limits, database) as (database, con, timed_out):
            try:
                statement = check_statement(con, sql, database.policy)
                cursor = con.execute(statement)
                result["columns"] = [d[0] for d in cursor.description or []]
                result["rows"], result["truncated"] = _fetch(cursor, int(limits["max_rows"]),
                                                             int(limits["max_result_bytes"]))
                result["row_count"] = len(result["rows"])
                if timed_out.is_set():  # an interrupted query may end without an error: its rows are not the answer
                    raise duckdb.InterruptException("interrupted")
            except Refusal as refusal:
                result["error"] = {"kind": "blocked", "message": str(refusal)}
            except BaseException as error:  # noqa: BLE001 - every failure becomes a typed error, never a crash
                result["error"] = classify(error, timed_out.is_set(), limits)
    except BaseException as error:  # noqa: BLE001 - opening the database failed
        result["error"] = classify(error, False, limits)
    if result["error"]:
        result["rows"], result["columns"], result["row_count"], result["truncated"] = [], [], 0, False
    result["elapsed_ms"] = (time.perf_counter() - started) * 1000
    return result


@contextmanager
def _session(db_path: str, limits: dict, database: "Database | None"):
    """(database, connection, timed_out): a watched connection to `database`, or to `db_path` opened for this
    call alone (and closed after it) when no open database is given."""
    own = Database(connect(db_path, limits)) if database is None else None
    try:
        database = database or own
        with _watched(database.con.cursor(), float(limits["timeout_s"])) as (con, timed_out):
            yield database, con, timed_out
    finally:
        if own is not None:
            own.close()


class _watched:
    """A connection with a watchdog that interrupts it after `timeout_s`; closed on exit."""

    def __init__(self, con, timeout_s: float) -> None:
        self.con, self.timeout_s = con, timeout_s
        self.done, self.timed_out = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=_watchdog, args=(con, timeout_s, self.done, self.timed_out),
                                       daemon=True)

    def __enter__(self):
        self.thread.start()
        return self.con, self.timed_out

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()  # it wakes at once; no interrupt may reach a closed connection
        try:
            self.con.close()
        except Exception:  # noqa: BLE001
            pass


def _watchdog(con, timeout_s: float, done: threading.Event, timed_out: threading.Event) -> None:
    """DuckDB has no statement timeout: interrupt from this thread, again and again until the query ends."""
    if done.wait(timeout_s):
        return
    timed_out.set()
    while not done.is_set():
        con.interrupt()
        done.wait(INTERRUPT_EVERY_S)


def _fetch(cursor, max_rows: int, max_bytes: int) -> tuple[list[list], bool]:
    """At most `max_rows` rows and about `max_bytes` of values, fetched in chunks (never the whole result).

    Nested values (lists, structs, maps) count with everything inside them; a row that does not fit is left
    out, unless it is the first, which is kept with its values clipped to the budget.
    """
    rows: list[list] = []
    used = 0
    while len(rows) <= max_rows:
        chunk = cursor.fetchmany(min(1024, max_rows + 1 - len(rows)))
        if not chunk:
            return rows, False
        for row in chunk:
            if len(rows) == max_rows:
                return rows, True
            values, size, clipped = _fit_row(row, max_bytes - used)
            if clipped:
                if not rows:  # one huge row: keep it, each value cut to its share of the budget
                    share = max_bytes // max(1, len(row))
                    rows.append([_fit(value, share, 0)[0] for value in row])
                return rows, True
            used += size
            rows.append(values)
    return rows, True


def _fit_row(row, budget: int) -> tuple[list | None, int, bool]:
    """(values, JSON-ish size, False) of one row within `budget` bytes, or (None, budget, True)."""
    values, size = [], 0
    for value in row:  # the common case (numbers, short strings) without a call per cell
        kind = type(value)
        if kind is str or kind is bytes:
            cost = len(value) + 3
        elif kind in _NESTED:
            value, cost, clipped = _fit(value, budget - size, 0)
            if clipped:
                return None, budget, True
        else:
            cost = 10
        if size + cost > budget:
            return None, budget, True
        size += cost
        values.append(value)
    return values, size, False


_NESTED = (list, tuple, dict)


def _fit(value, budget: int, depth: int):
    """(value, size, clipped?) of a value, cut to `budget` bytes and MAX_VALUE_DEPTH levels of nesting."""
    if isinstance(value, (str, bytes)):
        if len(value) + 2 > budget:
            return _clip(value, max(0, budget - 2)), budget, True
        return value, len(value) + 2, False
    if not isinstance(value, _NESTED):
        return value, 8, budget < 8
    if depth >= MAX_VALUE_DEPTH:
        return "…", 3, True
    is_dict = isinstance(value, dict)
    out = {} if is_dict else []
    used = 2
    for item in (value.items() if is_dict else value):
        key, item = item if is_dict else (None, item)
        if used >= budget:
            return out, budget, True
        fitted, size, clipped = _fit(item, budget - used - 1, depth + 1)
        if is_dict:
            out[key] = fitted
        else:
            out.append(fitted)
        used += size + 1 + (len(str(key)) + 2 if is_dict else 0)
        if clipped:
            return out, budget, True
    return out, used, used > budget


def _clip(value, limit: int):
    if isinstance(value, (str, bytes)) and len(value) > limit:
        return value[:max(0, limit - 1)] + ("…" if isinstance(value, str) else b"")
    return value


# How running out of the worker's address space shows up: DuckDB's own limit, C++'s bad_alloc, a failed mmap.
_MEMORY_WORDS = re.compile(r"out of memory|bad_alloc|could not allocate|failed to allocate|cannot allocate|"
                           r"memory allocation|mmap", re.I)


def classify(error: BaseException, timed_out: bool, limits: dict) -> dict:
    """Map an exception to one of the error kinds with a one-line message."""
    message = (str(error).strip().splitlines() or [type(error).__name__])[0][:500]
    if timed_out or isinstance(error, duckdb.InterruptException):
        return {"kind": "timeout", "message": f"the query ran longer than {limits['timeout_s']:g} s and was stopped"}
    if isinstance(error, (duckdb.OutOfMemoryException, MemoryError)) or _MEMORY_WORDS.search(message):
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


class Database:
    """One open sandboxed instance and the policy for queries on it."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        try:
            self.policy = Policy(con)
        except BaseException:
            con.close()
            raise

    def close(self) -> None:
        try:
            self.con.close()
        except Exception:  # noqa: BLE001
            pass


class Databases:
    """The worker's open sandboxed instances, keyed by file version and settings (opening one costs ~15 ms).

    Sharing an instance is safe because nothing a SELECT can do outlives its connection: the file is read-only,
    the configuration locked, ATTACH/SET/CREATE refused, and temp objects belong to the connection.
    """

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._open: dict[tuple, Database] = {}

    def get(self, db_path: str, limits: dict) -> Database:
        stat = os.stat(db_path)
        key = (db_path, stat.st_mtime_ns, stat.st_size, limits["threads"], limits["memory_limit"],
               limits["max_temp_directory_size"])
        if key in self._open:
            self._open[key] = self._open.pop(key)  # most recently used last
            return self._open[key]
        self.drop(db_path)  # one instance per file: new limits need a new instance
        while len(self._open) >= self.size:
            self._close(next(iter(self._open)))
        self._open[key] = Database(connect(db_path, limits))
        return self._open[key]

    def drop(self, db_path: str) -> None:
        """Forget a file's instances (after a timeout or memory error, start clean)."""
        for key in [k for k in self._open if k[0] == db_path]:
            self._close(key)

    def _close(self, key: tuple) -> None:
        self._open.pop(key).close()


# -- the schema of a database, read inside the sandbox -------------------------------------------------------------
SCHEMA_COLUMNS_SQL = (
    "SELECT table_name, column_name, data_type FROM duckdb_columns() "
    "WHERE NOT internal AND database_name = current_database() AND schema_name = 'main' "
    "ORDER BY table_name, column_index")
SCHEMA_CONSTRAINTS_SQL = (
    "SELECT table_name, constraint_type, constraint_column_names, referenced_table, referenced_column_names "
    "FROM duckdb_constraints() WHERE database_name = current_database() AND schema_name = 'main' "
    "AND constraint_type IN ('PRIMARY KEY', 'FOREIGN KEY') ORDER BY table_name, constraint_index")


def introspect(con: duckdb.DuckDBPyConnection, policy: Policy | None = None) -> dict:
    """The rows `schema.read_schema` builds a Schema from, and the names of the database's own macros.

    BadInput-like refusal (kind "bad_input") when the schema is too big to be of use in a prompt.
    """
    count = con.execute(SCHEMA_COLUMNS_SQL.replace(
        "SELECT table_name, column_name, data_type", "SELECT count(*)").split(" ORDER BY")[0]).fetchone()[0]
    if count > MAX_SCHEMA_COLUMNS:
        raise Refusal(f"the database has {count:,} columns; at most {MAX_SCHEMA_COLUMNS:,} can be asked about")
    return {"columns": [list(row) for row in con.execute(SCHEMA_COLUMNS_SQL).fetchall()],
            "constraints": [list(row) for row in con.execute(SCHEMA_CONSTRAINTS_SQL).fetchall()],
            "macros": sorted({name for (name,) in con.execute(
                "SELECT function_name FROM duckdb_functions() WHERE NOT internal").fetchall()}),
            "refused_views": dict(policy.refused_views) if policy else {}}


def read_schema(db_path: str, limits: dict, database: Database | None = None) -> dict:
    """`introspect` under the sandbox settings and the timeout; {"schema": ..., "error": None} or an error."""
    try:
        with _session(db_path, limits, database) as (database, con, timed_out):
            try:
                return {"schema": introspect(con, database.policy), "error": None}
            except Refusal as refusal:
                return {"schema": None, "error": {"kind": "bad_input", "message": str(refusal)}}
            except BaseException as error:  # noqa: BLE001
                return {"schema": None, "error": classify(error, timed_out.is_set(), limits)}
    except BaseException as error:  # noqa: BLE001 - the file does not open in the sandbox
        return {"schema": None, "error": classify(error, False, limits)}


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
    db_path, limits = request["db"], request["limits"]
    try:
        database = databases.get(db_path, limits)
    except BaseException as error:  # noqa: BLE001
        return {"columns": [], "rows": [], "row_count": 0, "truncated": False, "elapsed_ms": 0.0, "schema": None,
                "error": classify(error, False, limits)}
    if request.get("op") == "schema":
        reply = read_schema(db_path, limits, database)
    else:
        reply = execute(db_path, request["sql"], limits, database)
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
            reply["rows"] = encode_rows(reply.get("rows") or [])
            text = json.dumps(reply)
        except MemoryError:
            text = _error_line("memory", "the result did not fit in the sandbox's memory")
        except RecursionError:
            text = _error_line("sql_error", "the result is nested too deeply to send")
        _set_memory_limit(None)  # writing the reply must not fail for want of memory
        out.write(text + "\n")
        out.flush()
    return 0


def _error_line(kind: str, message: str) -> str:
    return json.dumps({"error": {"kind": kind, "message": message}, "columns": [], "rows": [], "row_count": 0,
                       "truncated": False, "elapsed_ms": 0.0})


if __name__ == "__main__":
    sys.exit(main())
