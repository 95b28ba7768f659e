import duckdb
import pytest

from pipelines.errors import BadInput
from pipelines.sql.extract import extract_sql
from pipelines.sql.prompt import build_messages, retry_messages
from pipelines.sql.schema import read_schema, read_schema_from_path, schema_from_ddl


def test_read_schema_renders_keys_and_types():
    con = duckdb.connect()
    con.execute("""
        CREATE TABLE customers (id INTEGER PRIMARY KEY, "full name" VARCHAR);
        CREATE TABLE orders (id INTEGER, line INTEGER, customer_id INTEGER REFERENCES customers(id),
                             total DECIMAL(10,2), PRIMARY KEY (id, line));
        INSERT INTO customers VALUES (1, 'a'), (2, 'b');
    """)
    schema = read_schema(con, with_row_counts=True)
    assert schema.table_names() == ["customers", "orders"]
    assert schema.to_ddl().splitlines() == [
        'CREATE TABLE customers (id INTEGER PRIMARY KEY, "full name" VARCHAR);',
        "CREATE TABLE orders (id INTEGER, line INTEGER, customer_id INTEGER, total DECIMAL(10,2), "
        "PRIMARY KEY (id, line), FOREIGN KEY (customer_id) REFERENCES customers(id));",
    ]
    assert schema.table("CUSTOMERS").row_count == 2
    assert schema.column_types()["orders"]["total"] == "DECIMAL(10,2)"


def test_shop_schema_has_the_quickstart_shape(shop_db):
    ddl = read_schema_from_path(shop_db).to_ddl()
    assert "country VARCHAR" in ddl and "created_at TIMESTAMP" in ddl and "total DECIMAL(10,2)" in ddl
    assert "FOREIGN KEY (customer_id) REFERENCES customers(id)" in ddl


def test_schema_from_pasted_ddl():
    schema = schema_from_ddl("CREATE TABLE t (id INT PRIMARY KEY, name TEXT); create table u (t_id int references t(id))")
    assert schema.to_ddl() == (
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name VARCHAR);\n"
        "CREATE TABLE u (t_id INTEGER, FOREIGN KEY (t_id) REFERENCES t(id));"
    )


@pytest.mark.parametrize("ddl, message", [
    ("", "at least one CREATE TABLE"),
    ("DROP TABLE t", "only CREATE TABLE"),
    ("CREATE TABLE t AS SELECT 1", "only CREATE TABLE"),
    ("CREATE TABLE t (id INT", "could not parse"),
    ("CREATE TABLE t (id NOSUCHTYPE)", "unknown type"),
    ("CREATE TABLE t (id INT, ID TEXT)", "twice"),
    ("CREATE TABLE t (id INT REFERENCES nowhere(id))", "not in the schema"),
    ("CREATE TABLE t (" + ", ".join(f"c{i} INT DEFAULT (1 + 1)" for i in range(4000)) + ")", "tokens"),
    ("CREATE TABLE t (x INT);" * 10000, "characters"),
])
def test_bad_ddl_is_a_clear_error(ddl, message):
    with pytest.raises(BadInput, match=message):
        schema_from_ddl(ddl)


def test_prompt_is_the_seed_format():
    messages = build_messages("  How many? ", "CREATE TABLE t (id INTEGER);", "duckdb")
    assert messages == [
        {"role": "system", "content": "You translate natural language to DuckDB SQL.\n\nSchema:\nCREATE TABLE t (id INTEGER);"},
        {"role": "user", "content": "How many?"},
    ]
    assert build_messages("q", "x", "sqlite")[0]["content"].startswith("You translate natural language to SQLite SQL.")
    retry = retry_messages(messages, "SELECT nope", "Binder Error: column nope not found")
    assert [m["role"] for m in retry] == ["system", "user", "assistant", "user"]
    assert "Binder Error: column nope not found" in retry[-1]["content"]


@pytest.mark.parametrize("reply, sql", [
    ("SELECT 1;", "SELECT 1"),
    ("Here you go:\n```sql\nSELECT a FROM t;\n```\nIt counts.", "SELECT a FROM t"),
    ("```\nWITH a AS (SELECT 1) SELECT * FROM a\n```", "WITH a AS (SELECT 1) SELECT * FROM a"),
    ("```sql\nSELECT 1", "SELECT 1"),  # reply cut off by max_new_tokens
    ("The query is SELECT * FROM x WHERE y = ';'; hope it helps", "SELECT * FROM x WHERE y = ';'"),
    ("SELECT a\nFROM t\n\nThis selects a.", "SELECT a\nFROM t"),
    ("```python\nprint(1)\n```\n```sql\nSELECT 2\n```", "SELECT 2"),
    ("SELECT 1; DROP TABLE t", "SELECT 1; DROP TABLE t"),  # kept whole: the guard refuses it with a reason
    ("I cannot answer that.", None),
    ("With the schema above, count the rows.", None),  # "with" in prose is not a query
    ("Use this: with t AS (SELECT 1) SELECT * FROM t", "with t AS (SELECT 1) SELECT * FROM t"),
    ("", None),
])
def test_extract_sql(reply, sql):
    assert extract_sql(reply) == sql


def test_pasted_ddl_is_parsed_never_executed():
    """A DEFAULT that would take gigabytes to evaluate is never evaluated: only names, types and keys are read."""
    import time

    started = time.perf_counter()
    schema = schema_from_ddl(
        "CREATE TABLE b (x INT DEFAULT (length(repeat('x', 4000000000)) + 0) CHECK (x > 0), "
        "y INT GENERATED ALWAYS AS (x + 1), \"order\" VARCHAR(20) NOT NULL, PRIMARY KEY (x));"
        "CREATE TABLE a (id INT, b_x INT, FOREIGN KEY (b_x) REFERENCES b)")  # pasted before its target: fine
    assert time.perf_counter() - started < 2
    assert schema.to_ddl().splitlines() == [
        'CREATE TABLE b (x INTEGER PRIMARY KEY, y INTEGER, "order" VARCHAR);',
        "CREATE TABLE a (id INTEGER, b_x INTEGER, FOREIGN KEY (b_x) REFERENCES b(x));",
    ]
    assert schema_from_ddl(schema.to_ddl()).to_ddl() == schema.to_ddl()  # reserved words come back quoted


def test_pasted_types_read_as_duckdb_names():
    schema = schema_from_ddl("CREATE TABLE t (a TEXT, b DECIMAL(8,2), c NUMERIC, d DOUBLE, e TIMESTAMP, f BLOB, "
                             "g BIGINT, h DATE, i BOOLEAN, j INTEGER[])")
    assert [c.type for c in schema.tables[0].columns] == [
        "VARCHAR", "DECIMAL(8,2)", "DECIMAL(18,3)", "DOUBLE", "TIMESTAMP", "BLOB", "BIGINT", "DATE", "BOOLEAN",
        "INTEGER[]"]


@pytest.mark.parametrize("sql, shown", [
    ("SELECT count(*) FROM orders GROUP BY status", "SELECT status, COUNT(*) FROM orders GROUP BY status"),
    ("SELECT sum(o.total) AS revenue FROM orders AS o GROUP BY o.country",
     "SELECT o.country, SUM(o.total) AS revenue FROM orders AS o GROUP BY o.country"),
    # left alone: a key already shown; LIMIT (the count is the answer); GROUP BY 1; no GROUP BY; unreadable
    ("SELECT status, count(*) FROM orders GROUP BY status", None),
    ("SELECT count(*) FROM orders GROUP BY status ORDER BY count(*) DESC LIMIT 1", None),
    ("SELECT count(*) FROM orders GROUP BY 1", None),
    ("SELECT count(*) FROM orders", None),
    ("SELECT count(*) FROM", None),
])
def test_a_grouped_aggregate_shows_its_group_keys(sql, shown):
    from pipelines.sql.extract import show_group_keys

    assert show_group_keys(sql, "duckdb") == (shown or sql)
