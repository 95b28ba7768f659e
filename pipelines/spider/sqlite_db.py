"""Spider's SQLite files as a `Database` for the SQL pipeline, and the one way this package runs SQLite.

Every query gets a fresh connection that is read-only three times over: the file is opened with
`file:...?mode=ro`, `PRAGMA query_only` is on, and an authorizer allows reading and functions only (no ATTACH,
PRAGMA, writes or schema changes). A progress handler stops a query at its timeout. Text that is not valid
UTF-8 is decoded with errors ignored, as the official Spider evaluation does (some Spider databases hold
such text).

The guard (`check_sql(..., dialect="sqlite")`) gives the verdict, but what runs is the SQLite text itself: the
guard's `normalized` is DuckDB SQL, and Spider queries must run in SQLite exactly as written.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.spider import SPIDER_DIALECT
from pipelines.sql.guard import GuardResult, check_sql
from pipelines.sql.sandbox import QueryError, QueryResult
from pipelines.sql.schema import Schema

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_ROWS = 1000
_PROGRESS_EVERY = 1000  # SQLite VM instructions between timeout checks

_ALLOWED_ACTIONS = frozenset(
    getattr(sqlite3, name) for name in ("SQLITE_SELECT", "SQLITE_READ", "SQLITE_FUNCTION", "SQLITE_RECURSIVE")
    if hasattr(sqlite3, name)
)


class QueryTimeout(Exception):
    """The query ran past its timeout and was interrupted."""


def _authorize(action, *_args) -> int:
    return sqlite3.SQLITE_OK if action in _ALLOWED_ACTIONS else sqlite3.SQLITE_DENY


def connect_readonly(path: str | Path) -> sqlite3.Connection:
    """A read-only connection (raises sqlite3.Error when the file cannot be opened)."""
    path = Path(path)
    if not path.is_file():  # mode=ro never creates a file, but say clearly what is missing
        raise sqlite3.OperationalError(f"no such database file: {path}")
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    con.text_factory = lambda data: data.decode(errors="ignore")
    con.execute("PRAGMA query_only = ON")
    con.set_authorizer(_authorize)
    return con


def execute(path: str | Path, sql: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
            max_rows: int | None = None) -> tuple[list[str], list[tuple], bool]:
    """Run one query read-only: (column names, rows as tuples, truncated).

    At most `max_rows` rows are fetched (None: all of them); `truncated` says more were there. Raises
    `QueryTimeout` past `timeout_s` and sqlite3.Error / sqlite3.Warning (or ValueError/OverflowError from the
    driver) on a failing query.
    """
    con = connect_readonly(path)
    deadline = time.monotonic() + timeout_s
    timed_out = False

    def check_deadline() -> int:
        nonlocal timed_out
        if time.monotonic() > deadline:
            timed_out = True
            return 1  # non-zero interrupts the query
        return 0

    con.set_progress_handler(check_deadline, _PROGRESS_EVERY)
    try:
        cursor = con.execute(sql)
        columns = [d[0] for d in cursor.description or []]
        if max_rows is None:
            return columns, cursor.fetchall(), False
        rows = cursor.fetchmany(max_rows + 1)
        return columns, rows[:max_rows], len(rows) > max_rows
    except sqlite3.OperationalError:
        if timed_out:
            raise QueryTimeout(f"the query ran longer than {timeout_s:g} s and was stopped") from None
        raise
    finally:
        con.close()


@dataclass
class SQLiteDatabase:
    """One Spider database: the `Database` protocol of pipelines.sql.databases, over a read-only SQLite file.

    `schema` is the tables.json schema (pipelines.spider.data.load_schemas), so prompts show the same text in
    training, evaluation and the app.
    """

    path: Path
    schema: Schema
    name: str = ""
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_rows: int = DEFAULT_MAX_ROWS
    dialect: str = SPIDER_DIALECT
    can_execute: bool = True
    _tables: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.name = self.name or self.path.stem
        self._tables = self.schema.table_names()

    def check(self, sql: str, dialect: str | None = None) -> GuardResult:
        verdict = check_sql(sql, self._tables, dialect=dialect or self.dialect)
        if not verdict.allowed:
            return verdict
        # The verdict is the guard's; what runs is the SQLite text it checked (normalized is DuckDB SQL).
        return GuardResult(verdict.sql, True, None, sql)

    def run(self, sql: str) -> QueryResult:
        started = time.perf_counter()

        def elapsed() -> float:
            return (time.perf_counter() - started) * 1000

        try:
            columns, rows, truncated = execute(self.path, sql, timeout_s=self.timeout_s, max_rows=self.max_rows)
        except QueryTimeout as error:
            return QueryResult(sql, False, elapsed_ms=elapsed(), error=QueryError("timeout", str(error)))
        except sqlite3.DatabaseError as error:
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            kind = "blocked" if "not authorized" in message else "sql_error"
            return QueryResult(sql, False, elapsed_ms=elapsed(), error=QueryError(kind, message))
        except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError, MemoryError) as error:
            return QueryResult(sql, False, elapsed_ms=elapsed(),
                               error=QueryError("sql_error", f"{type(error).__name__}: {error}"))
        return QueryResult(sql, True, columns=columns, rows=[list(row) for row in rows], row_count=len(rows),
                           truncated=truncated, elapsed_ms=elapsed())
