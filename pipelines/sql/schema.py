"""A database's schema, read from DuckDB or from pasted DDL, rendered as the compact DDL the prompt uses.

Training, evaluation and the app all build the prompt's schema text with `Schema.to_ddl()`, so the model sees
the same shape of text everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import duckdb


@dataclass
class Column:
    name: str
    type: str
    primary_key: bool = False


@dataclass
class ForeignKey:
    columns: list[str]
    ref_table: str
    ref_columns: list[str]


@dataclass
class Table:
    name: str
    columns: list[Column]
    foreign_keys: list[ForeignKey] = field(default_factory=list)
    row_count: int | None = None


@dataclass
class Schema:
    tables: list[Table]

    def table_names(self) -> list[str]:
        return [table.name for table in self.tables]

    def table(self, name: str) -> Table | None:
        return next((t for t in self.tables if t.name.lower() == name.lower()), None)

    def column_types(self) -> dict[str, dict[str, str]]:
        """{table: {column: type}}, the mapping sqlglot's optimizer takes as `schema=`."""
        return {t.name: {c.name: c.type for c in t.columns} for t in self.tables}

    def to_ddl(self) -> str:
        """One compact `CREATE TABLE` per table, with primary and foreign keys."""
        return "\n".join(_table_ddl(table) for table in self.tables)


def quote_identifier(name: str) -> str:
    """Quote only when needed, so the common case stays short for the model."""
    if name.replace("_", "a").isalnum() and not name[0].isdigit() and name.isascii():
        return name
    return '"' + name.replace('"', '""') + '"'


def _table_ddl(table: Table) -> str:
    keys = [c.name for c in table.columns if c.primary_key]
    parts = []
    for column in table.columns:
        text = f"{quote_identifier(column.name)} {column.type}"
        if column.primary_key and len(keys) == 1:
            text += " PRIMARY KEY"
        parts.append(text)
    if len(keys) > 1:
        parts.append(f"PRIMARY KEY ({', '.join(map(quote_identifier, keys))})")
    for fk in table.foreign_keys:
        parts.append(
            f"FOREIGN KEY ({', '.join(map(quote_identifier, fk.columns))}) REFERENCES "
            f"{quote_identifier(fk.ref_table)}({', '.join(map(quote_identifier, fk.ref_columns))})"
        )
    return f"CREATE TABLE {quote_identifier(table.name)} ({', '.join(parts)});"


def read_schema(con: duckdb.DuckDBPyConnection, *, with_row_counts: bool = False) -> Schema:
    """Introspect the user tables and views of the connection's default database."""
    columns = con.execute(
        "SELECT table_name, column_name, data_type FROM duckdb_columns() "
        "WHERE NOT internal AND database_name = current_database() AND schema_name = 'main' "
        "ORDER BY table_name, column_index"
    ).fetchall()
    constraints = con.execute(
        "SELECT table_name, constraint_type, constraint_column_names, referenced_table, referenced_column_names "
        "FROM duckdb_constraints() WHERE database_name = current_database() AND schema_name = 'main' "
        "AND constraint_type IN ('PRIMARY KEY', 'FOREIGN KEY') ORDER BY table_name, constraint_index"
    ).fetchall()
    tables: dict[str, Table] = {}
    for table_name, column_name, data_type in columns:
        tables.setdefault(table_name, Table(table_name, [])).columns.append(Column(column_name, data_type))
    for table_name, kind, names, ref_table, ref_names in constraints:
        table = tables.get(table_name)
        if table is None:
            continue
        if kind == "PRIMARY KEY":
            for column in table.columns:
                column.primary_key = column.primary_key or column.name in names
        else:
            table.foreign_keys.append(ForeignKey(list(names), ref_table, list(ref_names)))
    if with_row_counts:
        for table in tables.values():
            table.row_count = con.execute(f"SELECT count(*) FROM {quote_identifier(table.name)}").fetchone()[0]
    return Schema(list(tables.values()))


def read_schema_from_path(path: str | Path, **kwargs) -> Schema:
    with duckdb.connect(str(path), read_only=True) as con:
        return read_schema(con, **kwargs)


def schema_from_ddl(ddl: str, dialect: str = "duckdb") -> Schema:
    """Build a schema from pasted `CREATE TABLE` statements (schema-only mode: nothing to run against).

    The statements are executed in a private in-memory DuckDB so that types, keys and syntax errors are
    DuckDB's own; anything other than CREATE TABLE is refused.
    """
    import sqlglot
    from sqlglot import exp

    from pipelines.errors import BadInput

    try:
        statements = [s for s in sqlglot.parse(ddl, read=dialect) if s is not None]
    except sqlglot.errors.ParseError as error:
        raise BadInput(f"could not parse the DDL: {str(error).splitlines()[0]}") from None
    if not statements:
        raise BadInput("paste at least one CREATE TABLE statement")
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET enable_external_access = false")
        for statement in statements:
            if not (isinstance(statement, exp.Create) and statement.kind == "TABLE") or statement.expression:
                raise BadInput("only CREATE TABLE statements (without AS SELECT) are accepted as a schema")
        # Tables may be pasted in any order, but a foreign key needs its target first: retry what failed
        # until a round makes no progress.
        pending = [statement.sql(dialect="duckdb") for statement in statements]
        while pending:
            failed: list[tuple[str, duckdb.Error]] = []
            for sql in pending:
                try:
                    con.execute(sql)
                except duckdb.Error as error:
                    failed.append((sql, error))
            if len(failed) == len(pending):
                raise BadInput(f"DuckDB refused the DDL: {str(failed[0][1]).splitlines()[0]}")
            pending = [sql for sql, _ in failed]
        return read_schema(con)
    finally:
        con.close()
