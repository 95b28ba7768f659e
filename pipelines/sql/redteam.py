"""Red-team corpora for the SQL guard and sandbox, the fixture database they run on, and the scoring.

ATTACKS must be refused by the guard, and again by the sandbox alone (guard bypassed), without any effect:
the database file unchanged, nothing written, no secret read, no setting, path or instance detail returned.
BENIGN must pass the guard and run. GUARD_ONLY is policy that only the guard enforces (things that are harmless
in the sandbox, such as a query too big to check). RUNAWAY must end bounded in the sandbox: rows and bytes capped
or a timeout/memory error, in time, with the next query working. DDL_BOMBS are pasted schemas that must be read
(or refused) quickly, never executed.
`$SECRET` (a readable file holding SECRET_TEXT) and `$OUT` (an empty folder) are filled in at run time. A case
with `db="crafted"` runs on a copy of the shop whose file stores macros named like built-ins (MACROS) and views
that read what queries may not (VIEWS), as an uploaded DuckDB file could.

`python -m pipelines redteam-sql` prints the rates quoted in the README.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

SECRET_TEXT = "voxql-canary-7f3a9c"


@dataclass(frozen=True)
class Case:
    category: str
    sql: str
    dialect: str = "duckdb"
    db: str = "shop"  # or "crafted": the shop plus MACROS and VIEWS stored in the file


def _cases(category: str, *sqls: str, dialect: str = "duckdb", db: str = "shop") -> list[Case]:
    return [Case(category, sql, dialect, db) for sql in sqls]


# Stored in the "crafted" fixture: each replaces a built-in and reveals what `current_setting` would.
MACROS = {
    "lower": "CREATE MACRO lower(x) AS current_setting('memory_limit')",
    "concat": "CREATE MACRO concat(a, b) AS (SELECT string_agg(path, ',') FROM duckdb_databases())",
    "range": "CREATE MACRO range(n) AS TABLE SELECT name, value FROM duckdb_settings()",
    "generate_series": "CREATE MACRO generate_series(a, b) AS TABLE SELECT * FROM duckdb_databases()",
}
# Also stored there: views run under the sandbox settings (no files), but could read the instance.
VIEWS = {
    "v_paths": "CREATE VIEW v_paths AS SELECT path FROM duckdb_databases()",
    "v_settings": "CREATE VIEW v_settings AS SELECT name, value FROM duckdb_settings()",
    "v_version": "CREATE VIEW v_version AS SELECT version() AS v, current_setting('memory_limit') AS m",
    "v_chain": "CREATE VIEW v_chain AS SELECT * FROM v_paths",
    "v_ok": "CREATE VIEW v_ok AS SELECT name, upper(country) AS c FROM customers",
}


ATTACKS: list[Case] = [
    *_cases("ddl",
            "DROP TABLE customers",
            "CREATE TABLE pwned (x INTEGER)",
            "CREATE TEMP TABLE scratch AS SELECT * FROM customers",
            "ALTER TABLE customers ADD COLUMN pwned INTEGER",
            "CREATE VIEW v AS SELECT 1",
            "CREATE MACRO pwn(x) AS x + 1",
            "CREATE SEQUENCE pwned_seq",
            "CREATE INDEX idx ON customers(name)",
            "TRUNCATE customers",
            "COMMENT ON TABLE customers IS 'pwned'"),
    *_cases("dml",
            "DELETE FROM customers",
            "INSERT INTO customers VALUES (99, 'Mallory', 'XX', DATE '2024-01-01')",
            "UPDATE orders SET amount = 0",
            "INSERT OR REPLACE INTO customers VALUES (1, 'Mallory', 'XX', DATE '2024-01-01')",
            "UPDATE orders SET amount = 0 RETURNING *",
            "MERGE INTO customers USING (SELECT 1 AS id) s ON customers.id = s.id WHEN MATCHED THEN DELETE"),
    *_cases("cte_dml",
            "WITH gone AS (DELETE FROM customers RETURNING *) SELECT count(*) FROM gone",
            "WITH n AS (INSERT INTO customers VALUES (99, 'M', 'XX', NULL) RETURNING *) SELECT * FROM n",
            "WITH u AS (UPDATE orders SET amount = 0 RETURNING id) SELECT * FROM u",
            "SELECT * FROM (WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d) AS x"),
    *_cases("stacked",
            "SELECT * FROM customers; DROP TABLE customers",
            "SELECT 1;DELETE FROM orders",
            "SELECT ';'; DROP TABLE customers",
            "SELECT 1 /* ; */; UPDATE orders SET amount = 0",
            "SELECT 1;\n-- harmless\nDELETE FROM customers;",
            "SELECT * FROM orders; COPY orders TO '$OUT/orders.csv'"),
    *_cases("case_and_comments",
            "dRoP tAbLe customers",
            "DeLeTe FrOm orders WHERE 1=1",
            "/* SELECT */ DROP TABLE customers",
            "DROP/**/TABLE customers",
            "-- SELECT * FROM customers\nDELETE FROM customers",
            "/* a */ /* b */ INSERT /* c */ INTO customers SELECT * FROM customers"),
    *_cases("file_read",
            "SELECT * FROM read_csv('$SECRET')",
            "SELECT * FROM read_text('$SECRET')",
            "SELECT * FROM read_blob('$SECRET')",
            "SELECT * FROM read_csv_auto('$SECRET', header = false)",
            "SELECT * FROM read_json_objects('$SECRET')",
            "SELECT * FROM read_parquet('$SECRET')",
            "SELECT * FROM '$SECRET'",
            "FROM '$SECRET'",
            "SELECT * FROM \"$SECRET\"",
            "SELECT * FROM glob('$OUT/*')",
            "SELECT * FROM sniff_csv('$SECRET')",
            "SELECT * FROM parquet_metadata('$SECRET')",
            "SELECT * FROM query_table('$SECRET')"),
    *_cases("file_write",
            "COPY customers TO '$OUT/customers.csv'",
            "COPY (SELECT * FROM customers) TO '$OUT/dump.parquet' (FORMAT parquet)",
            "COPY customers FROM '$SECRET'",
            "EXPORT DATABASE '$OUT/export'",
            "IMPORT DATABASE '$OUT/export'"),
    *_cases("network",
            "SELECT * FROM 'https://example.com/data.csv'",
            "SELECT * FROM read_parquet('s3://bucket/data.parquet')",
            "SELECT * FROM read_csv('http://169.254.169.254/latest/meta-data/')",
            "ATTACH 'https://example.com/remote.duckdb' AS remote"),
    *_cases("attach",
            "ATTACH ':memory:' AS scratch",
            "ATTACH '$OUT/other.duckdb' AS other",
            "DETACH shop",
            "USE memory"),
    *_cases("extensions",
            "INSTALL httpfs",
            "FORCE INSTALL httpfs",
            "LOAD httpfs",
            "LOAD '$OUT/evil.duckdb_extension'"),
    *_cases("settings",
            "SET enable_external_access = true",
            "SET memory_limit = '100GB'",
            "SET GLOBAL threads = 64",
            "RESET memory_limit",
            "PRAGMA enable_profiling",
            "PRAGMA threads = 64",
            "SET VARIABLE pwned = 1",
            "CALL enable_logging(storage = 'file', storage_path = '$OUT/logs')",
            "SELECT * FROM enable_logging()"),
    *_cases("call_prepare",
            "CALL pragma_version()",
            "PREPARE p AS DELETE FROM customers",
            "EXECUTE p",
            "DEALLOCATE p"),
    *_cases("transactions",
            "BEGIN TRANSACTION",
            "COMMIT",
            "ROLLBACK",
            "ABORT"),
    *_cases("maintenance",
            "VACUUM",
            "CHECKPOINT",
            "FORCE CHECKPOINT",
            "ANALYZE"),
    *_cases("secrets",
            "CREATE SECRET s (TYPE s3, KEY_ID 'k', SECRET 'v')",
            "CREATE PERSISTENT SECRET s (TYPE s3, KEY_ID 'k', SECRET 'v')",
            "DROP SECRET s",
            "SELECT * FROM duckdb_secrets()",
            "SELECT * FROM which_secret('s3://bucket/x', 's3')"),
    *_cases("explain_nonquery",
            "EXPLAIN DELETE FROM customers",
            "EXPLAIN ANALYZE DELETE FROM customers",
            "EXPLAIN COPY customers TO '$OUT/x.csv'"),
    *_cases("select_into",
            "SELECT * INTO pwned FROM customers",
            "SELECT id INTO TEMP pwned FROM orders"),
    *_cases("table_functions",
            "SELECT * FROM query('DROP TABLE customers')",
            "SELECT * FROM query('SELECT * FROM read_text(''$SECRET'')')",
            "SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT * FROM read_text(''$SECRET'')'))"),
    *_cases("nested",
            "SELECT * FROM (SELECT * FROM (SELECT * FROM read_text('$SECRET')))",
            "SELECT (SELECT content FROM read_text('$SECRET')) AS c",
            "SELECT * FROM customers WHERE name IN (SELECT content FROM read_text('$SECRET'))",
            "SELECT name FROM customers UNION ALL SELECT content FROM read_text('$SECRET')",
            "WITH s AS (SELECT * FROM read_text('$SECRET')) SELECT * FROM s",
            "SELECT * FROM customers c JOIN read_csv('$SECRET') f ON true",
            "SELECT * FROM customers, LATERAL (SELECT content FROM read_text('$SECRET'))"),
    *_cases("unicode",
            "ＤＲＯＰ TABLE customers",
            "DR\u041eP TABLE customers",  # Cyrillic O
            "SELECT 1\u037e DROP TABLE customers",  # Greek question mark looks like ';'
            "DR\u200bOP TABLE customers",  # zero-width space
            "SELECT * FROM read\u200b_text('$SECRET')",
            "SELECT 1;\u00a0DROP TABLE customers",
            "\ufeffDELETE FROM customers"),
    *_cases("dialects",
            "SELECT 1; DROP TABLE customers",
            "SELECT * INTO OUTFILE '$OUT/x.txt' FROM customers",
            "LOAD DATA INFILE '$SECRET' INTO TABLE customers",
            dialect="mysql"),
    *_cases("dialects",
            "COPY customers TO '$OUT/pg.csv'",
            "SELECT pg_read_file('$SECRET')",
            dialect="postgres"),
    *_cases("dialects",
            "ATTACH DATABASE '$OUT/x.db' AS x",
            "SELECT 1; PRAGMA writable_schema = 1",
            dialect="sqlite"),
    # -- found by an outside red team (issue 11), each with new variants --------------------------------------
    # Dialect confusion: `$tag$ ... $tag$` is a string to DuckDB but not to sqlite, mysql and others, so what
    # those dialects take for a comment or a name is live code in DuckDB.
    *_cases("dialect_confusion",
            "SELECT $a$ -- $a$, (SELECT content FROM read_text('$SECRET'))",
            "SELECT $x$ ' $x$, (SELECT content FROM read_text('$SECRET')) AS c -- '",
            "SELECT $$ /* $$, name, value FROM duckdb_settings() -- */",
            dialect="sqlite"),
    *_cases("dialect_confusion",
            "SELECT $$ /* $$, content FROM read_text('$SECRET') -- */",
            "SELECT $q$ # $q$, (SELECT path FROM duckdb_databases() LIMIT 1)",
            dialect="mysql"),
    *_cases("dialect_confusion",
            "SELECT 1 AS $q$, name FROM customers -- $q$ FROM query('SELECT * FROM read_text(''$SECRET'')')",
            dialect="bigquery"),
    *_cases("dialect_confusion",
            "SELECT $t$ /* $t$, * FROM duckdb_settings() -- */",
            dialect="tsql"),
    *_cases("dialect_confusion",
            "SELECT $z$ -- $z$ AS x, path FROM duckdb_databases()",
            dialect="snowflake"),
    *_cases("dialect_confusion",
            "SELECT $h$ -- $h$, (SELECT content FROM read_blob('$SECRET'))",
            dialect="hive"),
    # Names DuckDB resolves to its own catalog: system views, also behind a CTE that shadows them only later.
    *_cases("system_names",
            "WITH a AS (SELECT name, value FROM pg_settings), pg_settings AS (SELECT 1 AS name, 2 AS value) "
            "SELECT * FROM a",
            "WITH a AS (SELECT path FROM duckdb_databases), duckdb_databases AS (SELECT 1 AS path) SELECT * FROM a",
            "WITH b AS (SELECT * FROM a), a AS (SELECT 1) SELECT * FROM b",
            "WITH x AS (SELECT * FROM x) SELECT * FROM x",
            "WITH duckdb_settings AS (SELECT 1 AS name) SELECT * FROM (SELECT * FROM duckdb_settings)",
            "SELECT name, value FROM pg_settings",
            "SELECT path FROM duckdb_databases",
            "SELECT * FROM pg_catalog.pg_settings",
            "SELECT * FROM information_schema.schemata",
            "SELECT sql FROM sqlite_master",
            "SELECT * FROM duckdb_views",
            "SELECT * FROM pragma_database_list"),
    # Functions that reveal the instance: versions, plans (which fold forbidden calls into constants), and
    # ids and counters that tell what other sessions do.
    *_cases("instance_functions",
            "SELECT version()",
            "SELECT json_serialize_plan('SELECT current_setting(''memory_limit'')', optimize := true)",
            "SELECT json_serialize_sql('SELECT 1')",
            "SELECT current_query_id()",
            "SELECT current_connection_id(), current_transaction_id()",
            "SELECT txid_current()",
            "SELECT platform(), user_agent()",
            "SELECT current_database(), current_schemas(true)",
            "SELECT * FROM duckdb_memory()",
            "SELECT * FROM pragma_database_size()",
            "SELECT * FROM duckdb_connection_count()",
            "SELECT stats(amount) FROM orders",
            "SELECT duckdb_api()",
            "SELECT getvariable('x')"),
    *_cases("instance_functions", "SELECT VERSION(), DATABASE()", dialect="mysql"),
    *_cases("instance_functions", "SELECT current_user, txid_current()", dialect="postgres"),
    # PIVOT statements (allowed, see BENIGN) over what may not be read.
    *_cases("pivot",
            "PIVOT (SELECT name, value FROM duckdb_settings()) ON name USING first(value)",
            "PIVOT (SELECT content FROM read_text('$SECRET')) ON content USING count(*)",
            "PIVOT orders ON status USING first(current_setting('memory_limit'))",
            "PIVOT pg_settings ON name USING first(setting)"),
    # Macros stored in an uploaded DuckDB file, named like built-ins (MACROS), and views over the instance (VIEWS).
    *_cases("stored_macros",
            "SELECT lower(name) FROM customers",
            "SELECT concat(name, country) FROM customers",
            "SELECT * FROM range(3)",
            "SELECT * FROM generate_series(1, 2)",
            "SELECT LOWER(name) FROM customers",
            db="crafted"),
    *_cases("stored_views",
            "SELECT * FROM v_paths",
            "SELECT * FROM v_settings",
            "SELECT * FROM v_version",
            "SELECT * FROM v_chain",
            "SELECT * FROM customers WHERE name IN (SELECT path FROM v_paths)",
            "WITH a AS (SELECT * FROM v_paths), v_paths AS (SELECT 1 AS path) SELECT * FROM a",
            db="crafted"),
]

# Harmless in the sandbox, refused by the guard as policy: only the database's own tables and plain functions.
GUARD_ONLY: list[Case] = _cases(
    "policy",
    "SELECT current_setting('memory_limit')",
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM duckdb_tables()",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM pragma_table_info('customers')",
    "SELECT * FROM query('SELECT 42')",
    "SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT 1'))",
    "SELECT * FROM checkpoint()",
    "SELECT * FROM no_such_table",
    "SELECT no_such_function(1)",
    "SELECT nextval('order_seq')",
    "SELECT * FROM system.main.customers",
    "SELECT * FROM customers AT (VERSION => 1)",
    "DESCRIBE no_such_table",
    # too big to check within the guard's budget (harmless in the sandbox, but the guard runs in the app)
    "SELECT " + "1 + " * 6000 + "1",
    "SELECT " + "(" * 3000 + "1" + ")" * 3000,
    "SELECT 1 WHERE 1 IN (" + ", ".join(str(i) for i in range(6000)) + ")",
)

# Must end bounded in the sandbox (guard bypassed): rows and bytes capped, or a timeout or memory error.
RUNAWAY: list[Case] = _cases(
    "runaway",
    "SELECT " + "[" * 100 + "1" + "]" * 100,  # nesting deeper than JSON encoders recurse
    "SELECT list(i) FROM range(3000000) t(i)",  # one huge nested value
    "SELECT [repeat('x', 1000000)] FROM range(50)",  # strings inside lists
    "SELECT {'a': repeat('x', 5000000), 'b': [repeat('y', 5000000)]}",  # strings inside structs
    "SELECT length(repeat('x', 4000000000))",  # string memory that DuckDB's memory_limit does not count
    "SELECT string_agg(repeat('x', 1000), '') FROM range(10000000)",
    "SELECT count(*) FROM range(100000) a, range(100000) b",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
    "SELECT * FROM range(100000000) ORDER BY random()",
)

# Pasted schemas that would be expensive to execute: they must be parsed (or refused) fast, never run.
DDL_BOMBS: list[str] = [
    "CREATE TABLE t (x INT DEFAULT (length(repeat('x', 4000000000)) + 0))",
    "CREATE TABLE t (x INT CHECK (x > (SELECT count(*) FROM range(100000000000))))",
    "CREATE TABLE t (x INT, y INT GENERATED ALWAYS AS (length(repeat('y', 4000000000))))",
    "CREATE TABLE t (x INT DEFAULT (SELECT content FROM read_text('$SECRET')))",
    "CREATE TABLE t (x " + "STRUCT(a " * 3000 + "INT" + ")" * 3000 + ")",
    "CREATE TABLE t (x INT);" * 30000,
    "CREATE TABLE t AS SELECT * FROM read_text('$SECRET')",
    "CREATE TABLE t (x INT); COPY t TO '$OUT/x.csv'",
]

BENIGN: list[Case] = [
    *_cases("basic",
            "SELECT * FROM customers",
            "SELECT count(*) FROM orders",
            "SELECT name, country FROM customers WHERE country = 'FR' ORDER BY name LIMIT 10",
            "FROM orders",
            "FROM orders SELECT status, count(*) GROUP BY status",
            "SELECT DISTINCT status FROM orders ORDER BY 1",
            "VALUES (1, 'a'), (2, 'b')",
            "SELECT 1;",
            "SELECT 1;;",
            "  select id from customers ;  "),
    *_cases("joins",
            "SELECT c.name, sum(o.amount) AS total FROM customers c JOIN orders o ON o.customer_id = c.id "
            "GROUP BY c.name ORDER BY total DESC",
            "SELECT c.name, o.id FROM customers c LEFT JOIN orders o USING (id)",
            "SELECT p.name, count(*) FROM order_items i JOIN products p ON p.id = i.product_id "
            "JOIN orders o ON o.id = i.order_id WHERE o.status = 'shipped' GROUP BY ALL",
            "SELECT * FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id)",
            "SELECT * FROM customers WHERE id NOT IN (SELECT customer_id FROM orders)",
            "SELECT a.name, b.name FROM customers a CROSS JOIN products b LIMIT 5",
            "SELECT o.id, p.price FROM orders o ASOF JOIN products p ON o.amount >= p.price"),
    *_cases("windows",
            "SELECT id, amount, sum(amount) OVER (PARTITION BY customer_id ORDER BY created_at) AS running "
            "FROM orders",
            "SELECT id, rank() OVER (ORDER BY amount DESC) AS r, lag(amount) OVER (ORDER BY id) FROM orders",
            "SELECT customer_id, amount FROM orders QUALIFY row_number() OVER (PARTITION BY customer_id "
            "ORDER BY amount DESC) = 1",
            "SELECT id, ntile(4) OVER (ORDER BY amount) AS quartile, "
            "avg(amount) OVER w AS avg_amount FROM orders WINDOW w AS (ORDER BY id ROWS 2 PRECEDING)"),
    *_cases("ctes",
            "WITH big AS (SELECT * FROM orders WHERE amount > 50) SELECT count(*) FROM big",
            "WITH a AS (SELECT customer_id, sum(amount) s FROM orders GROUP BY 1), b AS (SELECT avg(s) m FROM a) "
            "SELECT a.* FROM a, b WHERE a.s > b.m",
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10) SELECT sum(i) FROM n",
            "WITH RECURSIVE dates(d) AS (SELECT DATE '2024-01-01' UNION ALL SELECT d + 1 FROM dates "
            "WHERE d < DATE '2024-01-31') SELECT count(*) FROM dates"),
    *_cases("duckdb_extras",
            "SELECT * EXCLUDE (country) FROM customers",
            "SELECT * REPLACE (upper(name) AS name) FROM customers",
            "SELECT COLUMNS('a.*') FROM orders",
            "SELECT max(COLUMNS(* EXCLUDE (id))) FROM products",
            "SELECT country, count(*) FROM customers GROUP BY ALL ORDER BY ALL",
            "FROM orders PIVOT (sum(amount) FOR status IN ('shipped', 'pending'))",
            "SELECT * FROM range(5) t(x)",
            "SELECT * FROM generate_series(1, 3)",
            "SELECT unnest([1, 2, 3]) AS x",
            "SELECT list_transform([1, 2], x -> x * 2), {'a': 1} AS s, [1, 2][1]",
            "SELECT name FROM customers USING SAMPLE 2 ROWS",
            "SUMMARIZE orders",
            "DESCRIBE customers",
            "EXPLAIN SELECT * FROM orders"),
    *_cases("set_operations",
            "SELECT id FROM customers UNION SELECT customer_id FROM orders",
            "SELECT id FROM customers INTERSECT SELECT customer_id FROM orders",
            "SELECT id FROM customers EXCEPT SELECT customer_id FROM orders"),
    *_cases("keywords_in_text",
            "SELECT 'DROP TABLE customers; DELETE FROM orders' AS note",
            "SELECT * FROM orders WHERE status = 'deleted' -- DROP TABLE orders",
            "SELECT /* DELETE FROM customers */ count(*) FROM customers",
            "SELECT name AS \"drop\", 'insert' AS \"update\" FROM customers",
            "SELECT * FROM updates WHERE deleted = false",
            "SELECT 'COPY x TO ''/etc/passwd''' AS s, 'ATTACH' || ' x' AS t",
            "SELECT regexp_replace(name, '[;]', '') FROM customers WHERE name LIKE '%;%' OR name ILIKE 'a%'"),
    *_cases("functions",
            "SELECT date_trunc('month', created_at) AS m, sum(amount) FROM orders GROUP BY 1 ORDER BY 1",
            "SELECT strftime(created_at, '%Y-%m') AS ym, count(*) FROM orders GROUP BY ym",
            "SELECT CASE WHEN amount > 50 THEN 'big' ELSE 'small' END AS size, count(*) FROM orders GROUP BY 1",
            "SELECT coalesce(NULL, 1), nullif(1, 1), greatest(1, 2), round(3.14159, 2), abs(-1)",
            "SELECT string_agg(name, ', ' ORDER BY name) FROM customers",
            "SELECT median(amount), quantile_cont(amount, 0.9), stddev(amount) FROM orders",
            "SELECT current_date - DATE '2024-01-01' AS days, extract(year FROM created_at) FROM orders",
            "SELECT CAST(amount AS INTEGER), amount::VARCHAR, TRY_CAST('x' AS INTEGER) FROM orders"),
    *_cases("dialects", "SELECT name::text, amount::numeric FROM orders o JOIN customers c ON c.id = o.customer_id",
            "SELECT * FROM customers ORDER BY id LIMIT 2 OFFSET 1", dialect="postgres"),
    *_cases("dialects", "SELECT `name` FROM customers LIMIT 1, 2", "SELECT IFNULL(NULL, 1)", dialect="mysql"),
    *_cases("dialects", "SELECT name FROM customers WHERE name LIKE 'A%' LIMIT 3",
            "SELECT strftime('%Y', created_at) FROM orders", dialect="sqlite"),
    *_cases("pivot",
            "PIVOT orders ON status USING count(*)",
            "PIVOT orders ON status USING sum(amount) GROUP BY customer_id",
            "PIVOT orders ON status IN ('shipped', 'pending') USING count(*)",
            "UNPIVOT (SELECT id, amount, customer_id FROM orders) ON amount, customer_id INTO NAME k VALUE v"),
    *_cases("strings_and_names",
            "SELECT $$it's$$ AS s, $tag$a -- b$tag$ AS t",
            "WITH a AS (SELECT 1 AS x), b AS (SELECT * FROM a) SELECT * FROM b, a",
            "WITH settings AS (SELECT 1 AS x), tables AS (SELECT 2 AS y), summary AS (SELECT 3 AS z), "
            "main AS (SELECT 4 AS w) SELECT * FROM settings, tables, summary, main",
            "SELECT current_date - signup_date AS days, now() IS NOT NULL FROM customers",
            "SELECT list(id ORDER BY id) AS ids, {'n': count(*), 'c': [country]} AS s FROM customers "
            "GROUP BY country"),
    *_cases("strings_and_names", "SELECT name FROM customers WHERE name = $$Ada$$", dialect="postgres"),
    *_cases("stored_macros", "SELECT upper(name), trim(country) FROM customers", "SELECT * FROM v_ok",
            db="crafted"),
]


# -- the fixture database ----------------------------------------------------------------------------------------
def build_fixture(path: str | Path) -> Path:
    """A small shop the corpora run on (customers, orders, products, order_items, updates, a sequence)."""
    import duckdb

    path = Path(path)
    path.unlink(missing_ok=True)
    with duckdb.connect(str(path)) as con:
        con.execute("""
            CREATE TABLE customers (id INTEGER PRIMARY KEY, name VARCHAR, country VARCHAR, signup_date DATE);
            INSERT INTO customers VALUES (1, 'Ada', 'FR', DATE '2023-01-05'), (2, 'Bob; Jr', 'US', DATE '2023-02-01'),
                (3, 'Chen', 'CN', DATE '2023-03-09'), (4, 'alice', 'FR', NULL);
            CREATE TABLE products (id INTEGER PRIMARY KEY, name VARCHAR, price DECIMAL(8, 2));
            INSERT INTO products VALUES (1, 'pen', 2.50), (2, 'book', 20.00), (3, 'lamp', 45.00);
            CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id),
                                 amount DOUBLE, status VARCHAR, created_at TIMESTAMP);
            INSERT INTO orders SELECT i, 1 + i % 3, (i * 7) % 100, ['shipped', 'pending', 'deleted'][1 + i % 3],
                TIMESTAMP '2024-01-01' + INTERVAL (i) DAY FROM range(1, 41) t(i);
            CREATE TABLE order_items (order_id INTEGER, product_id INTEGER, quantity INTEGER);
            INSERT INTO order_items SELECT i, 1 + i % 3, 1 + i % 4 FROM range(1, 41) t(i);
            CREATE TABLE updates (id INTEGER, deleted BOOLEAN, note VARCHAR);
            INSERT INTO updates VALUES (1, false, 'DROP TABLE customers'), (2, true, NULL);
            CREATE SEQUENCE order_seq;
        """)
    return path


def build_crafted_fixture(path: str | Path) -> Path:
    """The shop, plus MACROS and VIEWS stored in the file (as an uploaded DuckDB file could hold them)."""
    import duckdb

    path = build_fixture(path)
    with duckdb.connect(str(path)) as con:
        for sql in (*MACROS.values(), *VIEWS.values()):
            con.execute(sql)
    return path


def fill(sql: str, secret_file: Path, out_dir: Path) -> str:
    return sql.replace("$SECRET", str(secret_file)).replace("$OUT", str(out_dir))


# -- scoring -----------------------------------------------------------------------------------------------------
@dataclass
class RedTeamReport:
    attacks: int = 0
    attacks_refused_by_guard: int = 0
    attacks_refused_by_sandbox: int = 0
    guard_only: int = 0
    guard_only_refused: int = 0
    benign: int = 0
    benign_refused_by_guard: int = 0
    benign_failed_to_run: int = 0
    runaway: int = 0
    runaway_bounded: int = 0
    ddl_bombs: int = 0
    ddl_bombs_bounded: int = 0
    database_unchanged: bool = True
    nothing_written: bool = True
    secret_never_returned: bool = True
    failures: list[dict] = field(default_factory=list)
    by_category: dict[str, dict[str, int]] = field(default_factory=dict)

    def rates(self) -> dict[str, float]:
        pct = lambda a, b: round(100.0 * a / b, 2) if b else 0.0  # noqa: E731
        return {
            "attacks_refused_by_guard_pct": pct(self.attacks_refused_by_guard, self.attacks),
            "attacks_refused_by_sandbox_pct": pct(self.attacks_refused_by_sandbox, self.attacks),
            "guard_only_refused_pct": pct(self.guard_only_refused, self.guard_only),
            "benign_refused_pct": pct(self.benign_refused_by_guard, self.benign),
            "benign_failed_pct": pct(self.benign_failed_to_run, self.benign),
            "runaway_bounded_pct": pct(self.runaway_bounded, self.runaway),
            "ddl_bombs_bounded_pct": pct(self.ddl_bombs_bounded, self.ddl_bombs),
        }

    @property
    def perfect(self) -> bool:
        return (self.attacks_refused_by_guard == self.attacks == self.attacks_refused_by_sandbox
                and self.guard_only_refused == self.guard_only and not self.benign_refused_by_guard
                and not self.benign_failed_to_run and self.database_unchanged and self.nothing_written
                and self.secret_never_returned and self.runaway_bounded == self.runaway
                and self.ddl_bombs_bounded == self.ddl_bombs)

    def to_dict(self) -> dict:
        return {**asdict(self), "rates": self.rates(), "perfect": self.perfect}


RUNAWAY_LIMITS = dict(timeout_s=1.0, memory_limit="200MB", max_result_bytes=1_000_000)
DDL_SECONDS = 2.0  # a pasted schema is read within this, or refused


def evaluate(workdir: str | Path | None = None, limits=None) -> RedTeamReport:
    """Run every corpus through the guard, the sandbox alone and guard + sandbox, on fresh fixtures."""
    from pipelines.sql.guard import check_sql
    from pipelines.sql.sandbox import SandboxLimits, database_schema, run_guarded, run_query

    limits = limits or SandboxLimits(timeout_s=5, memory_limit="256MB")
    with tempfile.TemporaryDirectory(prefix="voxql-redteam-") as scratch:
        base = Path(workdir or scratch)
        dbs = {"shop": build_fixture(base / "shop.duckdb"), "crafted": build_crafted_fixture(base / "crafted.duckdb")}
        secret, out = base / "secret.txt", base / "out"
        secret.write_text(f"{SECRET_TEXT}\n")
        out.mkdir(exist_ok=True)
        schemas = {name: database_schema(db) for name, db in dbs.items()}
        digests = {name: _sha256(db) for name, db in dbs.items()}
        report = RedTeamReport()

        def guard(case: Case, sql: str):
            schema = schemas[case.db]
            return check_sql(sql, schema.table_names(), dialect=case.dialect, macros=schema.macros)

        for case in ATTACKS:
            sql = fill(case.sql, secret, out)
            verdict = guard(case, sql)
            result = run_query(dbs[case.db], sql, limits)
            text = json.dumps(result.rows, default=str)
            leaked = SECRET_TEXT in text or str(base) in text  # the canary, or a server path
            report.attacks += 1
            report.attacks_refused_by_guard += not verdict.allowed
            report.attacks_refused_by_sandbox += not result.ok and not leaked
            report.secret_never_returned &= not leaked
            stats = report.by_category.setdefault(case.category, {"attacks": 0, "guard": 0, "sandbox": 0})
            stats["attacks"] += 1
            stats["guard"] += not verdict.allowed
            stats["sandbox"] += not result.ok and not leaked
            if verdict.allowed or result.ok or leaked:
                report.failures.append({"corpus": "attack", "sql": case.sql, "dialect": case.dialect,
                                        "guard": verdict.reason,
                                        "sandbox": asdict(result.error) if result.error else "ran"})
        for case in GUARD_ONLY:
            verdict = guard(case, fill(case.sql, secret, out))
            report.guard_only += 1
            report.guard_only_refused += not verdict.allowed
            if verdict.allowed:
                report.failures.append({"corpus": "guard_only", "sql": case.sql[:200]})
        for case in BENIGN:
            verdict = guard(case, case.sql)
            result = run_guarded(dbs[case.db], case.sql, limits, dialect=case.dialect)
            report.benign += 1
            report.benign_refused_by_guard += not verdict.allowed
            report.benign_failed_to_run += not result.ok
            if not verdict.allowed or not result.ok:
                report.failures.append({"corpus": "benign", "sql": case.sql, "guard": verdict.reason,
                                        "run": asdict(result.error) if result.error else None})
        runaway_limits = SandboxLimits(**RUNAWAY_LIMITS)
        for case in RUNAWAY:
            bounded, detail = _bounded(dbs["shop"], case.sql, runaway_limits)
            report.runaway += 1
            report.runaway_bounded += bounded
            if not bounded:
                report.failures.append({"corpus": "runaway", "sql": case.sql[:200], "detail": detail})
        for ddl in DDL_BOMBS:
            bounded, detail = _ddl_bounded(fill(ddl, secret, out))
            report.ddl_bombs += 1
            report.ddl_bombs_bounded += bounded
            if not bounded:
                report.failures.append({"corpus": "ddl_bomb", "ddl": ddl[:200], "detail": detail})

        report.database_unchanged = all(_sha256(db) == digests[name] for name, db in dbs.items())
        report.nothing_written = not any(out.iterdir())
        return report


def _bounded(db: Path, sql: str, limits) -> tuple[bool, str]:
    """Ended in time with rows and bytes capped, or as timeout/memory; and the next query works."""
    import time

    from pipelines.sql.sandbox import run_query

    started = time.perf_counter()
    result = run_query(db, sql, limits)
    elapsed = time.perf_counter() - started
    size = len(json.dumps(result.rows, default=str))
    ended = result.error.kind in ("timeout", "memory") if result.error else result.truncated or size < 1000
    in_time = elapsed < 4 * limits.timeout_s + 2
    small = size <= 2 * limits.max_result_bytes
    after = run_query(db, "SELECT 42", limits).rows == [[42]]
    detail = f"{'ok' if result.ok else result.error.kind} in {elapsed:.1f} s, {size:,} bytes, next query ok: {after}"
    return ended and in_time and small and after, detail


def _ddl_bounded(ddl: str) -> tuple[bool, str]:
    import time

    from pipelines.errors import BadInput
    from pipelines.sql.schema import schema_from_ddl

    started = time.perf_counter()
    try:
        outcome = f"read ({len(schema_from_ddl(ddl).tables)} tables)"
    except BadInput as error:
        outcome = f"refused: {error}"
    elapsed = time.perf_counter() - started
    return elapsed < DDL_SECONDS, f"{outcome[:120]} in {elapsed:.2f} s"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
