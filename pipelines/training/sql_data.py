"""Training examples for the SQL adapter: a Spider-layout folder or a JSONL file -> prompt/completion records.

Each example is the app's own prompt (`pipelines.sql.prompt.build_messages`: the schema as DDL in the system
turn, the question as the user turn) and the gold SQL as the assistant's reply. Records use TRL's conversational
prompt-completion format, so the loss covers only the completion (the SQL and the end-of-turn token).

Sources:
- a Spider folder (`train_spider.json`, `tables.json`, `database/`): the train split only (training never
  touches dev); questions whose database file is missing are skipped and counted, as the evaluation does.
- a JSONL file, one object per line: `{"question", "query", "db_id"}` (schema from a Spider folder's
  tables.json, SQLite dialect) or `{"question", "query", "schema": "CREATE TABLE ..."}` (DuckDB dialect unless
  the row says `"dialect"`). Rows whose question is a Spider dev question are dropped and counted.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.engine import Message
from pipelines.errors import BadInput
from pipelines.sql.databases import check_schema_sql
from pipelines.sql.pipeline import question_messages
from pipelines.sql.prompt import build_messages

TOO_LONG = "longer than max_length"
DATABASE_MISSING = "database file missing"
IN_DEV = "question is in Spider dev"
NO_DUCKDB_RENDERING = "gold SQL has no DuckDB rendering with the same rows"


@dataclass(frozen=True)
class SQLExample:
    question: str
    query: str  # the target SQL, whitespace tidied
    messages: tuple  # the prompt: (system, user) from build_messages
    origin: str  # where it came from: "train_spider.json#12", "mine.jsonl:3"
    db_id: str | None = None

    def record(self) -> dict:
        """TRL's conversational prompt-completion format."""
        return {"prompt": list(self.messages), "completion": [{"role": "assistant", "content": self.query}]}

    def conversation(self) -> list[Message]:
        return [*self.messages, {"role": "assistant", "content": self.query}]


@dataclass
class TrainingData:
    source: str  # the folder or file, as given
    kind: str  # "spider" or "jsonl"
    examples: list[SQLExample]
    rows: int  # read from the source, before skipping
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    skipped_databases: dict[str, int] = field(default_factory=dict)  # db_id -> questions skipped (missing file)
    sampled_from: int | None = None  # set when max_examples took a sample
    sample_size: int | None = None  # how many max_examples took (before examples are skipped)
    synthetic: int = 0  # generated analytics examples added (pipelines.training.synthetic_sql)

    @property
    def used(self) -> int:
        """Examples that go into training (after build_dataset drops those over max_length)."""
        return len(self.examples) - self.skipped.get(TOO_LONG, 0)

    def describe(self) -> str:
        parts = [f"{self.used} examples from {self.kind} {self.source} ({self.rows} rows read"]
        parts += [f", {count} skipped: {reason}" for reason, count in self.skipped.items() if count]
        if self.sampled_from:
            parts.append(f", a seeded sample of {self.sample_size} of {self.sampled_from}")
        if self.synthetic:
            parts.append(f", plus {self.synthetic} synthetic analytics examples")
        return "".join(parts) + ")"

    def summary(self) -> dict:
        return {"source": self.source, "kind": self.kind, "examples": self.used, "rows": self.rows,
                "skipped": dict(self.skipped), "skipped_databases": dict(self.skipped_databases),
                "sampled_from": self.sampled_from, "synthetic": self.synthetic}


def default_spider_dir() -> Path | None:
    """`VOXQL_SPIDER_DIR`, else `../shared/spider` next to the repository, when it holds Spider."""
    import os

    candidates = [os.environ.get("VOXQL_SPIDER_DIR"), Path(__file__).resolve().parents[3] / "shared" / "spider"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "tables.json").is_file():
            return Path(candidate)
    return None


def is_spider_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "tables.json").is_file() and (path / "train_spider.json").is_file()


_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|`[^`]*`|\s+|[^\s'\"`]+")


def tidy_sql(query: str) -> str:
    """One line, single spaces, no trailing semicolon; quoted text is left as it is.

    Spider's gold SQL has runs of spaces (`age  >  56`) and the odd newline: tidied targets are shorter and give
    the model one spelling of the same query.
    """
    pieces = [" " if piece.isspace() else piece for piece in _TOKEN.findall(query.strip())]
    return "".join(pieces).strip().rstrip(";").strip()


def load_training_data(
    source: str | Path,
    *,
    schemas_dir: str | Path | None = None,
    max_examples: int | None = None,
    seed: int = 0,
    value_hints: bool = False,
    target_dialect: str = "sqlite",
    synthetic: int = 0,
) -> TrainingData:
    """Read a Spider folder (train split) or a JSONL file of examples.

    For a Spider folder, `value_hints` shows the model the values of the text columns under the schema (the
    app's default prompt, read from each SQLite file), and `target_dialect="duckdb"` renders the gold SQL in
    DuckDB (`duckdb_target`), keeping only the examples whose rendering gives the gold rows in DuckDB.
    `synthetic` adds that many generated analytics examples (`pipelines.training.synthetic_sql`, DuckDB SQL).

    `schemas_dir`: a Spider-layout folder whose tables.json gives the schema of JSONL rows that name a `db_id`
    (default: the JSONL's own folder when it has a tables.json); its dev.json, when present, is what JSONL rows
    are checked against. `max_examples` takes a seeded random sample (kept in source order).
    """
    path = Path(source).expanduser()
    if target_dialect not in ("sqlite", "duckdb"):
        raise BadInput(f"target_dialect must be sqlite or duckdb, not {target_dialect!r}")
    if is_spider_dir(path):
        data = _load_spider(path, value_hints=value_hints, target_dialect=target_dialect,
                            max_examples=max_examples, seed=seed)
    elif path.is_file():
        data = _load_jsonl(path, Path(schemas_dir) if schemas_dir else None)
    elif path.is_dir():
        raise BadInput(f"{path} is not a Spider folder: it needs train_spider.json and tables.json")
    else:
        raise BadInput(f"no such training data: {path} (give a Spider folder or a .jsonl file)")
    if not data.examples:
        raise BadInput(f"no usable training examples in {path}: {data.describe()}")
    if data.kind == "jsonl" and max_examples is not None and max_examples < len(data.examples):
        data.sampled_from, data.sample_size = len(data.examples), max_examples
        data.examples = _sample(data.examples, max_examples, seed)
    if synthetic:
        data.examples += synthetic_training_examples(synthetic, seed, value_hints)
        data.synthetic = synthetic
    return data


def synthetic_training_examples(count: int, seed: int, value_hints: bool) -> list[SQLExample]:
    """Generated analytics questions over invented DuckDB databases (kept in the cache), in the app's prompt."""
    from pipelines.profiles import cache_dir
    from pipelines.sql.databases import DuckDBDatabase
    from pipelines.training.synthetic_sql import synthetic_examples

    examples, databases = [], {}
    for number, example in enumerate(synthetic_examples(count, seed, cache_dir() / "synthetic-sql")):
        database = databases.setdefault(example.database, DuckDBDatabase(example.database))
        messages = question_messages(example.question, database, dialect="duckdb", value_hints=value_hints)
        examples.append(SQLExample(example.question, example.query, tuple(messages), f"synthetic#{number}"))
    return examples


def _load_spider(spider_dir: Path, *, value_hints: bool, target_dialect: str, max_examples: int | None,
                 seed: int) -> TrainingData:
    from pipelines.spider.data import database_path, load_schemas, load_split

    schemas = load_schemas(spider_dir)
    rows = load_split(spider_dir, "train")
    missing: Counter = Counter()
    has_database = {db_id: database_path(spider_dir, db_id) is not None for db_id in {row.db_id for row in rows}}
    usable = []
    for row in rows:
        if not has_database[row.db_id] or row.db_id not in schemas:
            missing[row.db_id] += 1
        else:
            usable.append(row)
    data = TrainingData(str(spider_dir), "spider", [], len(rows), {DATABASE_MISSING: sum(missing.values())},
                        dict(missing))
    # Sample before building: value hints and DuckDB targets cost a query or two per example.
    chosen = _sample(usable, max_examples, seed)
    if len(chosen) < len(usable):
        data.sampled_from, data.sample_size = len(usable), len(chosen)
    databases: dict[str, tuple] = {}
    for row in chosen:
        if row.db_id not in databases:
            databases[row.db_id] = _spider_databases(spider_dir, row.db_id, schemas[row.db_id], target_dialect)
        sqlite_db, duckdb_db = databases[row.db_id]
        query = tidy_sql(row.query)
        if target_dialect == "duckdb":
            query = duckdb_target(query, sqlite_db, duckdb_db)
            if query is None:
                data.skipped[NO_DUCKDB_RENDERING] = data.skipped.get(NO_DUCKDB_RENDERING, 0) + 1
                continue
        messages = question_messages(row.question, sqlite_db, dialect=target_dialect, value_hints=value_hints)
        data.examples.append(SQLExample(row.question.strip(), query, tuple(messages),
                                        f"train_spider.json#{row.index}", row.db_id))
    return data


def _sample(items: list, count: int | None, seed: int) -> list:
    """A seeded sample of `count` items, kept in their order (all of them when count is None or larger)."""
    if count is None or count >= len(items):
        return list(items)
    if count < 1:
        raise BadInput("max_examples must be at least 1")
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), count))]


def _spider_databases(spider_dir: Path, db_id: str, schema, target_dialect: str) -> tuple:
    """(the SQLite database the prompt's value hints are read from, its DuckDB copy when targets are DuckDB)."""
    from pipelines.spider.data import database_path
    from pipelines.spider.duckdb_path import open_duckdb_database
    from pipelines.spider.sqlite_db import SQLiteDatabase

    path = database_path(spider_dir, db_id)
    duckdb_db = open_duckdb_database(path, model_dialect="duckdb") if target_dialect == "duckdb" else None
    return SQLiteDatabase(path, schema), duckdb_db


_NULLS = re.compile(r" NULLS (?:FIRST|LAST)\b")


def duckdb_target(gold: str, sqlite_db, duckdb_db) -> str | None:
    """Spider's SQLite gold SQL as the DuckDB a person would write, or None when that gives other rows.

    The guard's SQLite-to-DuckDB rendering does the work (double-quoted strings become single-quoted, bare
    columns of a GROUP BY get ANY_VALUE, a JOIN gets its ON). Its `NULLS FIRST` (SQLite's order of NULLs) is
    dropped: a DuckDB user would not write it, and the rows are compared anyway, in DuckDB against the gold in
    SQLite, with the official execution match.
    """
    from pipelines.spider.duckdb_path import duckdb_exec_match

    verdict = check_schema_sql(gold, sqlite_db.schema, "sqlite")
    if not verdict.allowed:
        return None
    target = _NULLS.sub("", verdict.normalized)
    if not duckdb_exec_match(duckdb_db, sqlite_db.path, target, gold).correct:
        return None
    return target


def _dev_questions(spider_dir: Path | None) -> set[str]:
    if spider_dir is None or not (spider_dir / "dev.json").is_file():
        return set()
    from pipelines.spider.data import load_split

    return {_normal(row.question) for row in load_split(spider_dir, "dev")}


def _normal(question: str) -> str:
    return " ".join(question.lower().split())


def _load_jsonl(path: Path, schemas_dir: Path | None) -> TrainingData:
    from pipelines.sql.schema import schema_from_ddl

    if schemas_dir is None and (path.parent / "tables.json").is_file():
        schemas_dir = path.parent
    spider_schemas = None
    dev = _dev_questions(schemas_dir)
    ddl_cache: dict[tuple[str, str], str] = {}
    examples: list[SQLExample] = []
    skipped: Counter = Counter()
    missing: Counter = Counter()
    rows = 0
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise BadInput(f"could not read {path}: {error}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        rows += 1
        where = f"{path.name}:{number}"
        try:
            row = json.loads(line)
        except ValueError:
            raise BadInput(f"{where}: not a JSON object") from None
        if not isinstance(row, dict) or not row.get("question") or not row.get("query"):
            raise BadInput(f"{where}: each line needs \"question\" and \"query\"")
        if _normal(row["question"]) in dev:
            skipped[IN_DEV] += 1
            continue
        if row.get("schema"):
            dialect = row.get("dialect") or "duckdb"
            key = (row["schema"], dialect)
            if key not in ddl_cache:
                ddl_cache[key] = schema_from_ddl(row["schema"], dialect).to_ddl()
            ddl, db_id = ddl_cache[key], None
        elif row.get("db_id"):
            if spider_schemas is None:
                if schemas_dir is None:
                    raise BadInput(f"{where}: rows with a db_id need the Spider folder whose tables.json has "
                                   "their schemas (--schemas DIR), or a \"schema\" with CREATE TABLE statements")
                spider_schemas = _spider_schemas(schemas_dir)
            db_id = row["db_id"]
            if db_id not in spider_schemas:
                raise BadInput(f"{where}: database {db_id!r} is not in {schemas_dir / 'tables.json'}")
            if spider_schemas[db_id] is None:
                missing[db_id] += 1
                continue
            dialect = row.get("dialect") or "sqlite"
            ddl = spider_schemas[db_id]
        else:
            raise BadInput(f"{where}: each line needs a \"db_id\" or a \"schema\" (CREATE TABLE statements)")
        messages = tuple(build_messages(row["question"], ddl, dialect))
        examples.append(SQLExample(row["question"].strip(), tidy_sql(row["query"]), messages, where, db_id))
    if missing:
        skipped[DATABASE_MISSING] = sum(missing.values())
    return TrainingData(str(path), "jsonl", examples, rows, dict(skipped), dict(missing))


def _spider_schemas(spider_dir: Path) -> dict[str, str | None]:
    """{db_id: DDL}, None for databases whose file is missing (skipped, as for the Spider folder itself)."""
    from pipelines.spider.data import database_path, load_schemas

    check_files = (spider_dir / "database").is_dir()
    return {db_id: (None if check_files and database_path(spider_dir, db_id) is None else schema.to_ddl())
            for db_id, schema in load_schemas(spider_dir).items()}


# -- tokens -------------------------------------------------------------------------------------------------------
@dataclass
class TokenStats:
    examples: int
    tokens: int
    p50: int
    p95: int
    max: int
    dropped_too_long: int

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def conversation_lengths(examples: list[SQLExample], tokenizer) -> list[int]:
    """Tokens of each whole training sequence (prompt + SQL + end of turn), as the chat template renders it."""
    texts = [tokenizer.apply_chat_template(example.conversation(), tokenize=False) for example in examples]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def build_dataset(data: TrainingData, tokenizer, max_length: int | None):
    """(a `datasets.Dataset` of prompt/completion records, TokenStats); examples over `max_length` are dropped.

    Dropping beats truncating: a truncated example usually loses its SQL (the schema comes first), and packing
    would otherwise spend a whole block on a prompt with nothing to learn.
    """
    from datasets import Dataset

    lengths = conversation_lengths(data.examples, tokenizer)
    keep = [i for i, n in enumerate(lengths) if max_length is None or n <= max_length]
    dropped = len(lengths) - len(keep)
    if dropped:
        data.skipped[TOO_LONG] = dropped
    if not keep:
        raise BadInput(f"every example is longer than max_length={max_length} tokens: raise it")
    kept = sorted(lengths[i] for i in keep)
    stats = TokenStats(len(keep), sum(kept), kept[len(kept) // 2], kept[min(len(kept) - 1, int(0.95 * len(kept)))],
                       kept[-1], dropped)
    return Dataset.from_list([data.examples[i].record() for i in keep]), stats
