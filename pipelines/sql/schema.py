"""A database's schema, read from DuckDB or from pasted DDL, rendered as the compact DDL the prompt uses.

Training, evaluation and the app all build the prompt's schema text with `Schema.to_ddl()`, so the model sees
the same shape of text everywhere.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import duckdb


_TEXT_TYPE = re.compile(r"CHAR|TEXT|STRING|CLOB", re.I)


@dataclass
class Column:
    name: str
    type: str
    primary_key: bool = False

    @property
    def is_text(self) -> bool:
        return bool(_TEXT_TYPE.search(self.type or ""))


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
    macros: list[str] = field(default_factory=list)  # macros stored in the database: the guard refuses them

    def table_names(self) -> list[str]:
        return [table.name for table in self.tables]

    @property
    def declares_keys(self) -> bool:
        """Whether any table declares a foreign key (without them, any two tables may be meant to join)."""
        return any(t.foreign_keys for t in self.tables)

    def table(self, name: str) -> Table | None:
        return next((t for t in self.tables if t.name.lower() == name.lower()), None)

    def column_types(self) -> dict[str, dict[str, str]]:
        """{table: {column: type}}, the mapping sqlglot's optimizer takes as `schema=`."""
        return {t.name: {c.name: c.type for c in t.columns} for t in self.tables}

    def to_ddl(self) -> str:
        """One compact `CREATE TABLE` per table, with primary and foreign keys."""
        return "\n".join(_table_ddl(table) for table in self.tables)


def quote_identifier(name: str) -> str:
    """Quote only when needed, so the common case stays short for the model (and `order` still parses)."""
    if (name.replace("_", "a").isalnum() and not name[0].isdigit() and name.isascii()
            and name.lower() not in reserved_words()):
        return name
    return '"' + name.replace('"', '""') + '"'


@functools.cache
def reserved_words() -> frozenset[str]:
    """Words that cannot be a name without quotes (`order`, `select`, ...), from DuckDB's own keyword list."""
    with duckdb.connect(":memory:") as con:
        rows = con.execute("SELECT keyword_name FROM duckdb_keywords() WHERE keyword_category <> 'unreserved'")
        return frozenset(name.lower() for (name,) in rows.fetchall())


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
    """Introspect the user tables and views of the connection's default database (trusted files only: uploads
    are read inside the sandbox, see `sandbox.database_schema`)."""
    from pipelines.sql.sandbox_worker import SCHEMA_COLUMNS_SQL, SCHEMA_CONSTRAINTS_SQL

    schema = schema_from_rows(con.execute(SCHEMA_COLUMNS_SQL).fetchall(),
                              con.execute(SCHEMA_CONSTRAINTS_SQL).fetchall())
    if with_row_counts:
        for table in schema.tables:
            table.row_count = con.execute(f"SELECT count(*) FROM {quote_identifier(table.name)}").fetchone()[0]
    return schema


def schema_from_rows(columns, constraints, macros=()) -> Schema:
    """A Schema from the rows of sandbox_worker's SCHEMA_COLUMNS_SQL and SCHEMA_CONSTRAINTS_SQL."""
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
    return Schema(list(tables.values()), sorted(macros))


def read_schema_from_path(path: str | Path, **kwargs) -> Schema:
    with duckdb.connect(str(path), read_only=True) as con:
        return read_schema(con, **kwargs)


MAX_DDL_CHARS = 200_000  # pasted schema text; sqlglot's parse time grows with it ...
MAX_DDL_TOKENS = 25_000  # ... and with its tokens: this many parse in about half a second (a big schema has ~5k)


def schema_from_ddl(ddl: str, dialect: str = "duckdb") -> Schema:
    """Build a schema from pasted `CREATE TABLE` statements (schema-only mode: nothing to run against).

    Nothing pasted is executed: sqlglot parses the text and only names, types and keys are read from the tree.
    DEFAULT, CHECK and generated-column expressions are never evaluated (the schema needs none of them, and
    evaluating `DEFAULT (repeat('x', 4000000000))` once took 26 s and 7.9 GB of the app's memory).
    """
    import sqlglot
    from sqlglot import exp

    from pipelines.errors import BadInput

    if len(ddl) > MAX_DDL_CHARS:
        raise BadInput(f"the schema is too long ({len(ddl):,} characters; the limit is {MAX_DDL_CHARS:,})")
    try:
        reader = sqlglot.Dialect.get_or_raise(dialect)
        tokens = reader.tokenize(ddl)
        if len(tokens) > MAX_DDL_TOKENS:
            raise BadInput(f"the schema is too long ({len(tokens):,} tokens; the limit is {MAX_DDL_TOKENS:,})")
        statements = [s for s in reader.parser().parse(tokens, ddl) if s is not None]
    except (sqlglot.errors.ParseError, sqlglot.errors.TokenError) as error:
        raise BadInput(f"could not parse the DDL: {str(error).splitlines()[0][:200]}") from None
    except RecursionError:
        raise BadInput("could not parse the DDL: it is nested too deeply") from None
    statements = [s for s in statements if not isinstance(s, exp.Semicolon)]
    if not statements:
        raise BadInput("paste at least one CREATE TABLE statement")
    for statement in statements:
        if not (isinstance(statement, exp.Create) and statement.kind == "TABLE"
                and isinstance(statement.this, exp.Schema)) or statement.expression:
            raise BadInput("only CREATE TABLE statements (without AS SELECT) are accepted as a schema")
    tables: dict[str, Table] = {}
    pending_keys: list[tuple[Table, list[str], exp.Reference]] = []  # resolved once every table is known
    for statement in statements:
        table = _table_from_create(statement.this, pending_keys)
        if table.name.lower() in tables:
            raise BadInput(f"table {table.name!r} is defined twice")
        tables[table.name.lower()] = table
    for table, columns, reference in pending_keys:
        table.foreign_keys.append(_foreign_key(table, columns, reference, tables))
    return Schema(list(tables.values()))


def _table_from_create(definition, pending_keys: list) -> Table:
    from sqlglot import exp

    from pipelines.errors import BadInput

    name = definition.this.name
    table = Table(name, [])
    primary: list[str] = []
    for item in definition.expressions:
        if isinstance(item, exp.ColumnDef):
            column = Column(item.name, _duckdb_type(item.args.get("kind"), item.name, name))
            if any(c.name.lower() == column.name.lower() for c in table.columns):
                raise BadInput(f"column {column.name!r} appears twice in table {name!r}")
            table.columns.append(column)
            for constraint in item.args.get("constraints") or []:
                kind = constraint.args.get("kind")
                if isinstance(kind, exp.PrimaryKeyColumnConstraint):
                    primary.append(column.name)
                elif isinstance(kind, exp.Reference):
                    pending_keys.append((table, [column.name], kind))
        elif isinstance(item, exp.PrimaryKey):
            primary += [e.name for e in item.expressions]
        elif isinstance(item, exp.ForeignKey) and isinstance(item.args.get("reference"), exp.Reference):
            pending_keys.append((table, [e.name for e in item.expressions], item.args["reference"]))
    if not table.columns:
        raise BadInput(f"table {name!r} has no columns")
    for key in primary:
        column = next((c for c in table.columns if c.name.lower() == key.lower()), None)
        if column is None:
            raise BadInput(f"the primary key of {name!r} names a missing column {key!r}")
        column.primary_key = True
    return table


def _foreign_key(table: Table, columns: list[str], reference, tables: dict[str, Table]) -> ForeignKey:
    from pipelines.errors import BadInput

    target_name = reference.this.this.name if hasattr(reference.this, "this") else reference.this.name
    target = tables.get(target_name.lower())
    if target is None:
        raise BadInput(f"table {table.name!r} references a table that is not in the schema: {target_name!r}")
    ref_columns = [e.name for e in reference.this.expressions] or [c.name for c in target.columns if c.primary_key]
    if len(ref_columns) != len(columns):
        raise BadInput(f"the foreign key of {table.name!r} onto {target.name!r} has {len(columns)} column(s) "
                       f"but references {len(ref_columns)}")
    for owner, names in ((table, columns), (target, ref_columns)):
        known = {c.name.lower() for c in owner.columns}
        missing = [n for n in names if n.lower() not in known]
        if missing:
            raise BadInput(f"a foreign key names a column that {owner.name!r} does not have: {missing[0]!r}")
    return ForeignKey(columns, target.name, ref_columns)


# sqlglot's type names -> DuckDB's own (what `duckdb_columns()` would say for a table created with that type).
_DUCKDB_TYPES = {
    "INT": "INTEGER", "MEDIUMINT": "INTEGER", "UINT": "UINTEGER", "INT128": "HUGEINT", "UINT128": "UHUGEINT",
    "TEXT": "VARCHAR", "VARCHAR": "VARCHAR", "CHAR": "VARCHAR", "NVARCHAR": "VARCHAR", "NCHAR": "VARCHAR",
    "LONGTEXT": "VARCHAR", "MEDIUMTEXT": "VARCHAR", "TINYTEXT": "VARCHAR", "NAME": "VARCHAR",
    "TIMESTAMPNTZ": "TIMESTAMP", "DATETIME": "TIMESTAMP", "TIMESTAMPTZ": "TIMESTAMP WITH TIME ZONE",
    "VARBINARY": "BLOB", "BLOB": "BLOB", "BINARY": "BLOB", "LONGBLOB": "BLOB", "MEDIUMBLOB": "BLOB",
}


def _duckdb_type(kind, column: str, table: str) -> str:
    from sqlglot import exp

    from pipelines.errors import BadInput

    if kind is None:
        return "VARCHAR"  # SQLite allows a column without a type; DuckDB's closest is text
    if not isinstance(kind, exp.DataType) or kind.this == exp.DataType.Type.USERDEFINED:
        raise BadInput(f"unknown type {kind.sql(dialect='duckdb')!r} for column {column!r} of table {table!r}")
    name = kind.this.name
    if name == "DECIMAL":
        params = [p.sql() for p in kind.expressions]
        return f"DECIMAL({','.join(params or ['18', '3'])})"
    if name == "ARRAY" and len(kind.expressions) == 1 and not kind.args.get("values"):
        return _duckdb_type(kind.expressions[0], column, table) + "[]"
    return _DUCKDB_TYPES.get(name) or kind.sql(dialect="duckdb")
