"""Spider in its official layout: questions, schemas and database files.

    DIR/dev.json, DIR/train_spider.json      questions (index = position in the file)
    DIR/tables.json                          schemas of every database
    DIR/database/<db_id>/<db_id>.sqlite      the data (may be missing: such questions are skipped, not scored)

Schemas become the app's own `Schema` objects, so the prompt's schema text is `Schema.to_ddl()` everywhere:
training, evaluation and the app show the model the same shape of text (`pipelines.sql.pipeline.question_messages`).

Column types: the type declared in the `.sqlite` file when the database exists (the model writes SQLite, so it
should see the types SQLite has: INTEGER, REAL, VARCHAR, DATETIME...), upper-cased and without length or
precision arguments (`VARCHAR(255)` -> `VARCHAR`: shorter prompts, nothing the query needs is lost). When the
file is missing or a column has no declared type, tables.json's coarse type is mapped instead
(text -> TEXT, number -> NUMERIC, time -> DATETIME, boolean -> BOOLEAN, others -> TEXT).
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import BadInput
from pipelines.sql.schema import Column, ForeignKey, Schema, Table

SPLIT_FILES = {"dev": "dev.json", "train": "train_spider.json"}

# tables.json's coarse types -> SQLite declared types, used when the database file says nothing.
COARSE_TYPES = {"text": "TEXT", "number": "NUMERIC", "time": "DATETIME", "boolean": "BOOLEAN", "others": "TEXT"}


@dataclass(frozen=True)
class SpiderExample:
    index: int  # position in the split file
    db_id: str
    question: str
    query: str  # gold SQL (SQLite)
    sql: dict | None = None  # the official parsed `sql` dict (dev.json only; train_spider.json has none)


def load_split(spider_dir: str | Path, split: str = "dev") -> list[SpiderExample]:
    """Every question of `split` ("dev" or "train"), in file order."""
    if split not in SPLIT_FILES:
        raise BadInput(f"unknown Spider split {split!r}: use one of {', '.join(SPLIT_FILES)}")
    path = Path(spider_dir) / SPLIT_FILES[split]
    if not path.is_file():
        raise BadInput(f"no {SPLIT_FILES[split]} in {spider_dir}: point --spider-dir at the Spider folder")
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BadInput(f"could not read {path}: {error}") from None
    return [
        SpiderExample(index, item["db_id"], item["question"], item["query"], item.get("sql"))
        for index, item in enumerate(items)
    ]


def database_path(spider_dir: str | Path, db_id: str) -> Path | None:
    """`database/<db_id>/<db_id>.sqlite`, or None when this copy of Spider lacks it."""
    path = Path(spider_dir) / "database" / db_id / f"{db_id}.sqlite"
    return path if path.is_file() else None


def load_schemas(spider_dir: str | Path) -> dict[str, Schema]:
    """{db_id: Schema} for every database in tables.json (also those whose .sqlite file is missing)."""
    path = Path(spider_dir) / "tables.json"
    if not path.is_file():
        raise BadInput(f"no tables.json in {spider_dir}: point --spider-dir at the Spider folder")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BadInput(f"could not read {path}: {error}") from None
    return {entry["db_id"]: schema_from_tables_entry(entry, database_path(spider_dir, entry["db_id"]))
            for entry in entries}


def schema_from_tables_entry(entry: dict, sqlite_path: Path | None = None) -> Schema:
    """One tables.json entry as a Schema; declared types come from `sqlite_path` when given."""
    declared = _declared_types(sqlite_path) if sqlite_path else {}
    tables = [Table(name, []) for name in entry["table_names_original"]]
    located: dict[int, tuple[Table, Column]] = {}  # tables.json column index -> (table, column)
    for index, ((table_index, name), coarse) in enumerate(zip(entry["column_names_original"], entry["column_types"])):
        if table_index < 0:  # the "*" pseudo-column
            continue
        table = tables[table_index]
        column_type = declared.get((table.name.lower(), name.lower())) or COARSE_TYPES.get(coarse, "TEXT")
        column = Column(name, column_type)
        table.columns.append(column)
        located[index] = (table, column)
    for key in entry.get("primary_keys", []):
        for index in key if isinstance(key, list) else [key]:
            if index in located:
                located[index][1].primary_key = True
    seen = set()
    for source, target in entry.get("foreign_keys", []):
        if source not in located or target not in located or (source, target) in seen:
            continue
        seen.add((source, target))
        (table, column), (ref_table, ref_column) = located[source], located[target]
        table.foreign_keys.append(ForeignKey([column.name], ref_table.name, [ref_column.name]))
    return Schema(tables)


def _declared_types(path: Path) -> dict[tuple[str, str], str]:
    """{(table, column) lower-cased: declared type, tidied} from the SQLite file (read-only)."""
    types: dict[tuple[str, str], str] = {}
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return types
    try:
        names = [row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in names:
            for row in con.execute(f'PRAGMA table_info("{table.replace(chr(34), chr(34) * 2)}")'):
                tidy = _tidy_type(row[2])
                if tidy:
                    types[(table.lower(), row[1].lower())] = tidy
    except sqlite3.Error:
        pass
    finally:
        con.close()
    return types


def _tidy_type(declared: str) -> str:
    return re.sub(r"\s*\(.*?\)", "", declared or "").strip().upper()
