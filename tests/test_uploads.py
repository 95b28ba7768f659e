"""Uploads: sniffed by content, limited in size, clear errors, one private folder per session."""

from __future__ import annotations

import os
import sqlite3
import stat
import tempfile
from pathlib import Path

import duckdb
import pytest

from pipelines.errors import BadInput
from pipelines.sql.sandbox import run_query
from pipelines.sql.schema import read_schema_from_path
from pipelines.sql.uploads import (
    import_upload,
    new_session_dir,
    remove_session_dir,
    sniff,
    sqlite_to_duckdb,
    table_name,
)

SPIDER_DIR = Path(os.environ.get("VOXQL_SPIDER_DIR") or Path(__file__).resolve().parents[2] / "shared" / "spider")


@pytest.fixture
def session():
    folder = new_session_dir()
    yield folder
    remove_session_dir(folder)


def _rows(db: Path, sql: str) -> list:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


def _sqlite(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE region (id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE shop (id int, name text, region_id text, opened date, score, PRIMARY KEY (id),
                           FOREIGN KEY (region_id) REFERENCES region(id));
        CREATE TABLE dirty (k int PRIMARY KEY, v int);
        INSERT INTO region VALUES (1, 'North'), (2, 'South');
        INSERT INTO shop VALUES (1, 'A', '1', '2020-01-01', 1.5), (2, 'B', '2', '2021-05-01', 'n/a');
        INSERT INTO dirty VALUES (1, 10);
    """)
    con.execute("PRAGMA ignore_check_constraints = 1")
    con.execute("CREATE TABLE dup (k int, v int)")  # duplicate 'keys' must not lose rows
    con.executemany("INSERT INTO dup VALUES (?, ?)", [(1, 1), (1, 2)])
    con.commit()
    con.close()
    return path


def test_csv_becomes_one_table_named_after_the_file(session, tmp_path):
    source = tmp_path / "Sales 2024 (final).csv"
    source.write_text("region,amount,day\nEU,1.5,2024-01-01\nUS,2,2024-01-02\n")
    db = import_upload(source, session)
    assert db.parent == session and db.suffix == ".duckdb"
    assert read_schema_from_path(db).table_names() == ["sales_2024_final"]
    assert _rows(db, "SELECT region, amount FROM sales_2024_final ORDER BY 1") == [("EU", 1.5), ("US", 2.0)]


def test_tsv_latin1_and_reserved_names(session, tmp_path):
    tsv = tmp_path / "order.tsv"
    tsv.write_text("a\tb\n1\t2\n")
    latin = tmp_path / "people.csv"
    latin.write_bytes("name,city\nJosé,Zürich\n".encode("latin-1"))
    assert read_schema_from_path(import_upload(tsv, session)).table_names() == ["order_table"]
    assert _rows(import_upload(latin, session), "SELECT * FROM people") == [("José", "Zürich")]


def test_content_wins_over_the_extension(session, tmp_path):
    parquet = tmp_path / "looks_like.csv"
    duckdb.sql(f"COPY (SELECT 42 AS x) TO '{parquet}' (FORMAT parquet)")
    assert sniff(parquet) == "parquet"
    assert _rows(import_upload(parquet, session), "SELECT x FROM looks_like") == [(42,)]
    csv = tmp_path / "data.parquet"
    csv.write_text("x\n1\n")
    assert sniff(csv) == "csv"


def test_sqlite_keeps_keys_the_data_honours(session, tmp_path):
    db = import_upload(_sqlite(tmp_path / "shops.db"), session)
    schema = read_schema_from_path(db)
    assert set(schema.table_names()) == {"region", "shop", "dirty", "dup"}
    shop = schema.table("shop")
    assert [c.name for c in shop.columns if c.primary_key] == ["id"]
    assert [(fk.columns, fk.ref_table) for fk in shop.foreign_keys] == [(["region_id"], "region")]
    assert {c.name: c.type for c in shop.columns}["score"] == "VARCHAR"  # 1.5 and 'n/a' both fit
    assert _rows(db, "SELECT count(*) FROM dup") == [(2,)]


def test_duckdb_files_are_copied_and_opened_read_only(session, tmp_path):
    source = tmp_path / "mine.bin"
    with duckdb.connect(str(source)) as con:
        con.execute("CREATE TABLE t AS SELECT 1 AS a")
    before = source.read_bytes()
    db = import_upload(source, session)
    assert db != source and _rows(db, "SELECT a FROM t") == [(1,)]
    # Queries can neither change the copy nor write into the session folder.
    assert not run_query(db, "DELETE FROM t").ok
    assert not run_query(db, f"COPY t TO '{session / 'x.csv'}'").ok
    assert source.read_bytes() == before and sorted(p.name for p in session.iterdir()) == [db.name]


BAD_FILES = [
    ("empty.csv", b"", "empty"),
    ("blank.csv", b"\n \n\n", "empty"),
    ("noise.csv", bytes(range(256)) * 20, "unsupported binary"),
    ("book.xlsx", b"PK\x03\x04" + b"\x00" * 100, "Excel"),
    ("broken.parquet", b"PAR1" + b"\x01" * 500, "Parquet"),
    ("broken.sqlite", b"SQLite format 3\x00" + b"\x07" * 5000, "SQLite"),
    ("broken.duckdb", b"\x00" * 8 + b"DUCK" + b"\x05" * 5000, "could not be opened"),
    ("ragged.csv", b"a,b\n1,2\n" + b"x,y\n" * 3000 + b"1,2,3,4,5,6,7\n", "CSV"),
]


@pytest.mark.parametrize("name, content, words", BAD_FILES, ids=[name for name, _, _ in BAD_FILES])
def test_bad_files_give_one_line_errors(session, tmp_path, name, content, words):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(BadInput) as error:
        import_upload(path, session)
    assert words in str(error.value) and "\n" not in str(error.value)
    assert [p for p in session.iterdir()] == []  # nothing half-made is left behind


def test_size_limit(session, tmp_path, monkeypatch):
    path = tmp_path / "big.csv"
    path.write_text("x\n" + "1\n" * 2000)
    monkeypatch.setenv("VOXQL_MAX_UPLOAD_MB", "0.001")
    with pytest.raises(BadInput, match="limit"):
        import_upload(path, session)


def test_session_folders_are_private_and_removed(tmp_path):
    folder = new_session_dir()
    assert folder.is_dir() and stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert folder.parent == Path(tempfile.gettempdir())
    (folder / "x.duckdb").write_text("x")
    remove_session_dir(folder)
    assert not folder.exists()
    outsider = tmp_path / "keep"
    outsider.mkdir()
    remove_session_dir(outsider)  # not a session folder: left alone
    assert outsider.exists()


def test_table_names_are_sanitised():
    assert table_name("2024 report.csv") == "t_2024_report"
    assert table_name("ünïcode-näme.csv") == "n_code_n_me"
    assert table_name("select.csv") == "select_table"
    assert table_name("....csv") == "data"


@pytest.mark.skipif(not (SPIDER_DIR / "database").is_dir(), reason=f"Spider not found at {SPIDER_DIR}")
def test_spider_database_converts_with_its_keys(tmp_path):
    source = SPIDER_DIR / "database" / "concert_singer" / "concert_singer.sqlite"
    target = tmp_path / "concert_singer.duckdb"
    sqlite_to_duckdb(source, target)
    schema = read_schema_from_path(target)
    assert {t.lower() for t in schema.table_names()} == {"stadium", "singer", "concert", "singer_in_concert"}
    assert sum(len(t.foreign_keys) for t in schema.tables) == 3
    with sqlite3.connect(source) as con:
        for table in schema.table_names():
            assert _rows(target, f'SELECT count(*) FROM "{table}"')[0][0] == \
                con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]


def test_sqlite_keywords_and_generated_columns(session, tmp_path):
    """A table and columns named like keywords upload and can be asked about; generated columns are kept."""
    from pipelines.sql.databases import DuckDBDatabase
    from pipelines.sql.values import schema_with_values

    path = tmp_path / "keywords.sqlite"
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE "order" ("order" INTEGER PRIMARY KEY, "group" TEXT, price REAL, qty INT,
                              total REAL GENERATED ALWAYS AS (price * qty) VIRTUAL,
                              label TEXT GENERATED ALWAYS AS (upper("group")) STORED);
        INSERT INTO "order" ("order", "group", price, qty) VALUES (1, 'a', 2.5, 2), (2, 'b', 1.0, 3);
        CREATE TABLE item (id INTEGER PRIMARY KEY, order_id INTEGER REFERENCES "order"("order"));
        INSERT INTO item VALUES (1, 1);
    """)
    con.close()
    database = DuckDBDatabase(import_upload(path, session))
    assert 'CREATE TABLE "order" ("order" BIGINT PRIMARY KEY, "group" VARCHAR, price DOUBLE, qty BIGINT, ' \
           'total DOUBLE, label VARCHAR);' in database.schema.to_ddl()
    assert 'REFERENCES "order"("order")' in database.schema.to_ddl()
    assert database.run('SELECT "order", total, label FROM "order" ORDER BY 1').rows == [[1, 5.0, "A"], [2, 3.0, "B"]]
    assert "order.group 'a', 'b'" in schema_with_values(database, "which order is in group a")


def test_import_output_size_is_capped(session, tmp_path, monkeypatch):
    import random
    import string

    monkeypatch.setenv("VOXQL_MAX_IMPORT_MB", "1")
    rng = random.Random(0)
    path = tmp_path / "wide.csv"
    path.write_text("id,s\n" + "".join(f"{i},{''.join(rng.choices(string.ascii_letters, k=40))}\n"
                                       for i in range(60000)))
    with pytest.raises(BadInput, match="larger than 1 MB"):
        import_upload(path, session)
    assert list(session.iterdir()) == []


def test_duckdb_files_whose_macros_shadow_built_ins_are_refused(session, tmp_path):
    source = tmp_path / "macros.duckdb"
    with duckdb.connect(str(source)) as con:
        con.execute("CREATE TABLE t AS SELECT 'A' AS s; CREATE MACRO lower(x) AS 'pwned'; "
                    "CREATE MACRO range(n) AS TABLE SELECT 1; CREATE MACRO mine(x) AS x + 1")
    with pytest.raises(BadInput, match=r"macros named like built-in functions \(lower, range\)"):
        import_upload(source, session)
    assert list(session.iterdir()) == []


def test_duckdb_files_with_views_over_the_instance_are_refused(session, tmp_path):
    source = tmp_path / "views.duckdb"
    with duckdb.connect(str(source)) as con:
        con.execute("CREATE TABLE t AS SELECT 1 AS a; CREATE VIEW fine AS SELECT a + 1 AS b FROM t; "
                    "CREATE VIEW where_am_i AS SELECT path FROM duckdb_databases()")
    with pytest.raises(BadInput, match=r"view that reads what queries may not: where_am_i \(duckdb_databases"):
        import_upload(source, session)
    assert list(session.iterdir()) == []
