"""Spider through the app's own path: each SQLite database converted to DuckDB, queries checked and run as the app
runs them (`pipelines.sql.databases.DuckDBDatabase`: the guard, then the sandbox worker), and the rows scored
against the gold SQL run in SQLite with the official rules.

- Conversion uses the project's own importer (`pipelines.sql.uploads.sqlite_to_duckdb`, what an upload of a
  SQLite file goes through), once per database file; the result is cached under
  `pipelines.profiles.cache_dir()/spider-duckdb/`, named by the database and a hash of the SQLite file and of
  the converter's source, so a changed file or converter gives a fresh copy.
- The model writes `model_dialect` SQL (default sqlite: the Spider adapters write SQLite): the guard parses it in
  that dialect and what runs is its DuckDB rendering, exactly as in the app.
- DuckDB values are brought to what SQLite returns where only the type differs (`sqlite_value`), so a right
  query is not scored wrong for returning DECIMAL 2.50 where SQLite says 2.5, or a DATE where SQLite has text.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import uuid
from pathlib import Path

from pipelines.spider import SPIDER_DIALECT
from pipelines.spider.exec_match import (
    QUERY_ERRORS, MatchResult, _describe, gold_rows, order_matters, prepare, result_eq)
from pipelines.spider.sqlite_db import DEFAULT_TIMEOUT_S
from pipelines.sql.databases import DuckDBDatabase
from pipelines.sql.sandbox import SandboxLimits

CACHE_FOLDER = "spider-duckdb"
# Scoring needs every row the gold has (Spider dev's largest gold result is 1,860 rows); the app's 1,000-row
# display cap would make a right answer look wrong. Everything else is the app's sandbox as configured.
SCORING_MAX_ROWS = 100_000
SCORING_MAX_RESULT_BYTES = 64_000_000


def duckdb_cache_dir() -> Path:
    from pipelines.profiles import cache_dir

    folder = cache_dir() / CACHE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _converter_fingerprint() -> str:
    from pipelines.sql import uploads

    return hashlib.sha256(Path(uploads.__file__).read_bytes()).hexdigest()


def converted_path(sqlite_path: str | Path, cache: str | Path | None = None) -> Path:
    """The DuckDB copy of a Spider SQLite file, converted on first use (and again when the file or converter moves)."""
    from pipelines.sql.uploads import sqlite_to_duckdb

    sqlite_path = Path(sqlite_path)
    digest = hashlib.sha256(sqlite_path.read_bytes())
    digest.update(_converter_fingerprint().encode())
    folder = Path(cache) if cache is not None else duckdb_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{sqlite_path.stem}-{digest.hexdigest()[:16]}.duckdb"
    if not target.is_file():
        # Spider's files are trusted input, so the importer runs in this process; a rename makes the copy appear
        # whole or not at all (two evaluations may race to build the same one).
        partial = target.with_name(f"{target.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            sqlite_to_duckdb(sqlite_path, partial)
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
            partial.with_name(partial.name + ".wal").unlink(missing_ok=True)
    return target


def open_duckdb_database(sqlite_path: str | Path, *, model_dialect: str = SPIDER_DIALECT,
                         timeout_s: float = DEFAULT_TIMEOUT_S, cache: str | Path | None = None) -> DuckDBDatabase:
    """The app's `DuckDBDatabase` over the converted copy, reading `model_dialect` SQL."""
    limits = SandboxLimits(timeout_s=timeout_s, max_rows=SCORING_MAX_ROWS,
                           max_result_bytes=SCORING_MAX_RESULT_BYTES)
    path = converted_path(sqlite_path, cache)
    return DuckDBDatabase(path, name=Path(sqlite_path).stem, limits=limits, dialect=model_dialect)


# -- values: DuckDB's types -> what SQLite would have returned -------------------------------------------------------
def sqlite_value(value):
    """`value` as SQLite would return it where only the type differs: DECIMAL -> float (int when integral, as
    SQLite keeps integer arithmetic integer), BOOLEAN -> 0/1, DATE/TIMESTAMP/TIME -> SQLite's text form
    (`YYYY-MM-DD`, `YYYY-MM-DD HH:MM:SS`), UUID -> text. Ints, HUGEINT included, stay ints."""
    if value is None or type(value) in (int, float, str, bytes):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return float(value)
        return int(value) if value == value.to_integral_value() and value.as_tuple().exponent >= 0 else float(value)
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ", timespec="microseconds" if value.microsecond else "seconds")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (list, tuple, dict)):  # no SQLite counterpart: compare by text
        return str(value)
    return value


def sqlite_rows(rows) -> list[tuple]:
    return [tuple(sqlite_value(v) for v in row) for row in rows]


# -- one question ----------------------------------------------------------------------------------------------------
def duckdb_exec_match(database: DuckDBDatabase, sqlite_path: str | Path, predicted: str | None, gold: str, *,
                      keep_distinct: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S) -> MatchResult:
    """The official execution match with the prediction checked and run as the app does (guard + DuckDB sandbox).

    Both queries get the official post-processing (DISTINCT removed unless `keep_distinct`; order matters only when
    the gold says ORDER BY); the gold runs in SQLite. A prediction the guard refuses is wrong (`refused=True`): in
    the app it never runs.
    """
    try:
        gold_result = gold_rows(sqlite_path, gold, keep_distinct=keep_distinct, timeout_s=timeout_s)
    except QUERY_ERRORS as error:
        return MatchResult(False, None, _describe(error))
    if not predicted or not predicted.strip():
        return MatchResult(False, "no SQL was predicted")
    verdict = database.check(prepare(predicted, keep_distinct))
    if not verdict.allowed:
        return MatchResult(False, f"refused: {verdict.reason}", refused=True)
    result = database.run(verdict.normalized)
    if not result.ok:
        return MatchResult(False, f"{result.error.kind}: {result.error.message}", ran_sql=verdict.normalized)
    if result.truncated:  # past the caps, far above any Spider gold (1,860 rows at most): it cannot match
        return MatchResult(False, ran_sql=verdict.normalized)
    ordered = order_matters(prepare(gold, keep_distinct))
    return MatchResult(result_eq(gold_result, sqlite_rows(result.rows), ordered), ran_sql=verdict.normalized)
