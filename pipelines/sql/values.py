"""Value hints for the prompt: what the text columns actually hold, so the model writes `status = 'cancelled'`
rather than guessing `'Cancelled'`.

Two kinds, both read through the database's own `run` (the sandbox for DuckDB, read-only SQLite for Spider):
- samples: the most frequent values of each text column, read once per database;
- matches: values equal to a word or phrase of the question, case-insensitively, read per question.
Both are rendered as SQL comments under the schema, within a character budget, by `hint_lines`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipelines.sql.schema import Schema, quote_identifier

SAMPLES_PER_COLUMN = 3
MAX_VALUE_CHARS = 40
MAX_MATCHES = 8
BUDGET_CHARS = 700  # about 200 tokens: the adapters were trained on short prompts
_WORD = re.compile(r"[\w'&.-]+")
# Words too common to be a value the question names ("in" would match a country code IN).
_STOP_WORDS = frozenset("""a an and are as at be by did do does for from has have how in is it its many much
of on or per show than that the their them there these they this those to was were what when where which who
whom whose why with all any each list give find me tell number count total name names""".split())


@dataclass(frozen=True)
class ColumnValues:
    table: str
    column: str
    values: tuple[str, ...]

    def render(self) -> str:
        return f"{self.table}.{self.column} " + ", ".join(sql_string(v) for v in self.values)


def text_columns(schema: Schema) -> list[tuple[str, str]]:
    return [(t.name, c.name) for t in schema.tables for c in t.columns if c.is_text]


def sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _union(parts: list[str]) -> str:
    return " UNION ALL ".join(parts)


def sample_values(database, limit: int = SAMPLES_PER_COLUMN) -> list[ColumnValues]:
    """The most frequent short values of every text column (one query per column, through `database.run`)."""
    found = []
    for table, column in text_columns(database.schema):
        t, c = quote_identifier(table), quote_identifier(column)
        result = database.run(
            f"SELECT CAST({c} AS VARCHAR) AS v FROM {t} WHERE {c} IS NOT NULL AND length(CAST({c} AS VARCHAR)) "
            f"BETWEEN 1 AND {MAX_VALUE_CHARS} GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT {limit}")
        if result.ok and result.rows:
            found.append(ColumnValues(table, column, tuple(str(row[0]) for row in result.rows)))
    return found


def question_phrases(question: str, longest: int = 3) -> list[str]:
    """Words and runs of up to `longest` words of the question, lowercased: the candidates for a match."""
    words = [w.strip(".'-").lower() for w in _WORD.findall(question)]
    words = [w for w in words if w]
    phrases = {" ".join(words[i:i + n]) for n in range(1, longest + 1) for i in range(len(words) - n + 1)}
    return sorted(p for p in phrases if len(p) >= 2 and p not in _STOP_WORDS)


def matching_values(database, question: str) -> list[ColumnValues]:
    """Values of text columns that equal a word or phrase of the question, ignoring case (one query)."""
    phrases = question_phrases(question)
    columns = text_columns(database.schema)
    if not phrases or not columns:
        return []
    candidates = ", ".join(sql_string(p) for p in phrases)
    parts = []
    for index, (table, column) in enumerate(columns):
        c = quote_identifier(column)
        parts.append(f"SELECT DISTINCT {index} AS k, CAST({c} AS VARCHAR) AS v FROM {quote_identifier(table)} "
                     f"WHERE lower(trim(CAST({c} AS VARCHAR))) IN ({candidates})")
    result = database.run(f"SELECT k, v FROM ({_union(parts)}) AS m ORDER BY k, v LIMIT {MAX_MATCHES}")
    if not result.ok:
        return []
    by_column: dict[int, list[str]] = {}
    for k, value in result.rows:
        by_column.setdefault(int(k), []).append(str(value))
    return [ColumnValues(*columns[k], tuple(values)) for k, values in by_column.items()]


def hint_lines(samples: list[ColumnValues], matches: list[ColumnValues], budget: int = BUDGET_CHARS) -> str:
    """The comment lines the prompt shows under the schema; matches first, so the budget never drops them."""
    lines, used = [], 0
    if matches:
        line = "-- Values matching the question: " + "; ".join(m.render() for m in matches)
        lines.append(line)
        used += len(line)
    shown = []
    for column in samples:
        text = column.render()
        if used + len(text) + 2 > budget:
            break
        shown.append(text)
        used += len(text) + 2
    if shown:
        lines.append("-- Example values: " + "; ".join(shown))
    return "\n".join(lines)


_samples: dict[tuple[str, int], list[ColumnValues]] = {}  # a cache, by database file and modification time


def cached_sample_values(database) -> list[ColumnValues]:
    path = getattr(database, "path", None)
    if path is None:
        return sample_values(database)
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _samples:
        _samples[key] = sample_values(database)
    return _samples[key]


def schema_with_values(database, question: str) -> str:
    """The schema DDL the prompt shows, with value hints under it when the database has data to read."""
    ddl = database.schema.to_ddl()
    if not database.can_execute:
        return ddl
    hints = hint_lines(cached_sample_values(database), matching_values(database, question))
    return f"{ddl}\n{hints}" if hints else ddl
