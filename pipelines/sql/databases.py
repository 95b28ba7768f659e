"""What a question can be asked of: a DuckDB file run through guard and sandbox, or a pasted schema only.

Each kind knows its dialect, its schema, how to check a query and how to run it; the SQL pipeline needs
nothing else, so other back ends (Spider's SQLite files) plug in the same way.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pipelines.sql.guard import GuardResult, check_sql
from pipelines.sql.sandbox import QueryResult, SandboxLimits, database_schema, run_query
from pipelines.sql.schema import Schema, schema_from_ddl


def check_schema_sql(sql: str, schema: Schema, dialect: str) -> GuardResult:
    """The guard over a schema's tables, with its columns (for SQLite's double-quoted strings) and the macros
    stored in the database (a macro named `lower` would shadow the built-in)."""
    return check_sql(sql, schema.table_names(), dialect=dialect, columns=schema.column_types(),
                     macros=schema.macros)


class Database(Protocol):
    name: str
    dialect: str  # the sqlglot dialect the database runs
    schema: Schema
    can_execute: bool

    def check(self, sql: str, dialect: str | None = None) -> GuardResult:
        """The guard's verdict on `sql`, written in `dialect` (default: the database's own)."""

    def run(self, sql: str) -> QueryResult: ...


@dataclass
class DuckDBDatabase:
    """A DuckDB file, opened read-only in the sandbox for every query (its schema too, read once and cached)."""

    path: Path
    name: str = ""
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    dialect: str = "duckdb"
    can_execute: bool = True
    schema: Schema = field(init=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.name = self.name or self.path.stem
        self.schema = database_schema(self.path)

    def check(self, sql: str, dialect: str | None = None) -> GuardResult:
        return check_schema_sql(sql, self.schema, dialect or self.dialect)

    def run(self, sql: str) -> QueryResult:
        return run_query(self.path, sql, self.limits)


@dataclass
class SchemaOnlyDatabase:
    """Pasted CREATE TABLE statements: queries are generated and validated, never run."""

    ddl: str
    name: str = "pasted schema"
    dialect: str = "duckdb"
    can_execute: bool = False
    schema: Schema = field(init=False)

    def __post_init__(self) -> None:
        self.schema = _parsed_ddl(self.ddl)

    def check(self, sql: str, dialect: str | None = None) -> GuardResult:
        return check_schema_sql(sql, self.schema, dialect or self.dialect)

    def run(self, sql: str) -> QueryResult:
        raise RuntimeError("a schema-only database has no data to run queries on")


@functools.lru_cache(maxsize=32)
def _parsed_ddl(ddl: str) -> Schema:
    """A pasted schema is parsed once (the app makes a SchemaOnlyDatabase for every question)."""
    return schema_from_ddl(ddl)


def database_from_args(db: str | Path | None, schema_file: str | Path | None) -> "DuckDBDatabase | SchemaOnlyDatabase":
    """What `--db FILE` or `--schema FILE.sql` names on a command line: a DuckDB file, or a pasted schema."""
    from pipelines.errors import BadInput

    if schema_file:
        try:
            ddl = Path(schema_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise BadInput(f"cannot read the schema file {schema_file}: {getattr(error, 'strerror', None) or error}"
                           ) from None
        return SchemaOnlyDatabase(ddl, name=Path(schema_file).stem)
    return DuckDBDatabase(Path(db))


def open_database(path: str | Path, workdir: str | Path) -> DuckDBDatabase:
    """A database for a DuckDB file, or for a CSV/Parquet/SQLite file imported into `workdir` (as uploads are)."""
    from pipelines.errors import BadInput
    from pipelines.sql.uploads import import_upload

    path = Path(path)
    if not path.is_file():
        raise BadInput(f"no such database file: {path}")
    return DuckDBDatabase(import_upload(path, Path(workdir)), name=path.stem)
