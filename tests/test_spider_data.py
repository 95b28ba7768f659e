"""The Spider loader: splits, database paths and schemas, on the tiny fixture and (when present) the real copy."""

from __future__ import annotations

import pytest

from pipelines.errors import BadInput
from pipelines.spider.data import database_path, load_schemas, load_split
from pipelines.spider.tiny import DEV, TRAIN, build_tiny_spider
from tests.conftest import SPIDER_DIR


@pytest.fixture(scope="module")
def tiny_spider(tmp_path_factory):
    return build_tiny_spider(tmp_path_factory.mktemp("tiny-spider"))


def test_load_split_keeps_file_order_as_index(tiny_spider):
    dev = load_split(tiny_spider, "dev")
    assert [e.index for e in dev] == list(range(len(DEV)))
    assert [(e.db_id, e.question, e.query) for e in dev] == DEV
    assert dev[0].sql is not None and dev[1].sql is None
    train = load_split(tiny_spider, "train")
    assert [(e.db_id, e.question, e.query) for e in train] == TRAIN
    assert all(e.sql is None for e in train)


def test_bad_split_or_folder_is_a_clear_error(tiny_spider, tmp_path):
    with pytest.raises(BadInput, match="unknown Spider split"):
        load_split(tiny_spider, "test")
    with pytest.raises(BadInput, match="dev.json"):
        load_split(tmp_path, "dev")
    with pytest.raises(BadInput, match="tables.json"):
        load_schemas(tmp_path)


def test_database_path(tiny_spider):
    assert database_path(tiny_spider, "shop") == tiny_spider / "database" / "shop" / "shop.sqlite"
    assert database_path(tiny_spider, "ghost") is None
    assert database_path(tiny_spider, "nowhere") is None


def test_schemas_come_from_tables_json_with_sqlite_declared_types(tiny_spider):
    schemas = load_schemas(tiny_spider)
    assert set(schemas) == {"shop", "school", "ghost"}
    assert schemas["shop"].column_types() == {
        "customers": {"id": "INTEGER", "name": "VARCHAR", "city": "VARCHAR", "age": "INT"},
        "orders": {"id": "INTEGER", "customer_id": "INTEGER", "amount": "DECIMAL", "status": "TEXT"},
    }
    # No declared type in the file (students.year) or no file at all (ghost): tables.json's coarse type.
    assert schemas["school"].column_types()["students"]["year"] == "NUMERIC"
    assert schemas["ghost"].column_types() == {"things": {"thing_id": "NUMERIC", "label": "TEXT", "made": "DATETIME"}}
    ddl = schemas["school"].to_ddl()
    assert "PRIMARY KEY (student_id, course)" in ddl  # a composite key from tables.json's nested list
    assert "FOREIGN KEY (student_id) REFERENCES students(student_id)" in ddl
    assert "FOREIGN KEY (customer_id) REFERENCES customers(id)" in schemas["shop"].to_ddl()


@pytest.mark.skipif(not (SPIDER_DIR / "dev.json").is_file(), reason="the Spider copy is not here")
def test_real_spider_layout():
    dev = load_split(SPIDER_DIR, "dev")
    train = load_split(SPIDER_DIR, "train")
    schemas = load_schemas(SPIDER_DIR)
    assert len(dev) == 1034 and len(train) == 7000 and len(schemas) == 166
    assert sum(database_path(SPIDER_DIR, e.db_id) is None for e in dev) == 62  # wta_1
    assert {e.db_id for e in dev if database_path(SPIDER_DIR, e.db_id) is None} == {"wta_1"}
    assert all(e.db_id in schemas for e in dev + train)
    assert "CREATE TABLE singer (Singer_ID INT PRIMARY KEY" in schemas["concert_singer"].to_ddl()
