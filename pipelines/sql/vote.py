"""Choosing one answer among candidate queries that ran (voting by execution).

Candidates that return the same rows form a group; a bigger group is more likely right, but on a small model the
majority is often a query that ignores part of the question. So groups are ranked by, in order:
1. grounding: how much of the question the query uses: each text value of the database the question names
   (`matching_values`), one more when the query also names that value's column; each number the question
   gives; and, when the question says "not"/"no"/"never"/"without"/"except", a negation in the query;
2. clean votes: members without a visible defect (a join off the foreign keys, a string compared with a
   column that never holds it, or `ANY_VALUE(...)` in a SELECT that groups nothing: one arbitrary row's value
   beside an aggregate of all rows, which no question asks for);
3. all votes; then the earliest group (the greedy reply's first).
Groups with rows outrank empty ones: a question is rarely asked for nothing, and a wrong filter returns nothing
far more often than a wrong query returns rows someone else also got. Within the winning group, the member with
the fewest defects is shown.
Measured on Spider dev (README, "The shipped CPU adapter"); the signals were chosen by reading that set's
failures, so the README also gives the held-out check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlglot
from sqlglot import exp

from pipelines.sql.grammar import join_keys
from pipelines.sql.schema import Schema, quote_identifier
from pipelines.sql.values import ColumnValues, sql_string, matching_values

_NEGATION = re.compile(r"\b(not|no|never|without|except)\b", re.I)
_SQL_NEGATION = re.compile(r"\bNOT\b|<>|!=|\bEXCEPT\b", re.I)
# Words that ask for an aggregate, and the aggregate: "total revenue", "how much", "the average age". "Total
# number of" asks for a count, which needs no cue (a count is what the model writes most).
_AGGREGATE_WORDS = {"sum": re.compile(r"\bhow much\b|\bsum\b|\btotal\b(?!\s+(?:number|count)\b)", re.I),
                    "avg": re.compile(r"\baverage\b|\bmean\b", re.I)}
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])")
_STRING = re.compile(r"'((?:[^']|'')*)'")
MAX_LITERAL_CHECKS = 64  # one query checks them all; a reply with more is not worth the wait


@dataclass(frozen=True)
class QuestionCues:
    values: tuple[ColumnValues, ...]  # text values of the database the question names
    numbers: frozenset[str]
    negated: bool
    aggregates: frozenset[str] = frozenset()  # "sum", "avg": what the question's words ask for


@dataclass(frozen=True)
class Choice:
    index: int  # of the chosen candidate (0: the greedy reply)
    votes: int  # candidates with its result
    clean_votes: int  # ... without a visible defect
    grounding: int


def question_cues(question: str, database) -> QuestionCues:
    values = tuple(matching_values(database, question)) if database.can_execute else ()
    aggregates = frozenset(name for name, words in _AGGREGATE_WORDS.items() if words.search(question))
    return QuestionCues(values, frozenset(_NUMBER.findall(question)), bool(_NEGATION.search(question)), aggregates)


def grounding(sql: str | None, cues: QuestionCues) -> int:
    if not sql:
        return 0
    literals = {text.replace("''", "'").strip().lower() for text in _STRING.findall(sql)}
    lowered = sql.lower()
    score = 0
    for column in cues.values:
        if any(value.strip().lower() in literals for value in column.values):
            score += 1 + (column.column.lower() in lowered)
    score += len(cues.numbers & set(_NUMBER.findall(sql)))
    if cues.negated and _SQL_NEGATION.search(sql):
        score += 1
    score += sum(1 for name in cues.aggregates if re.search(rf"\b{name}\s*\(", sql, re.I))
    return score


def choose(sqls: list[str | None], results: list[tuple | None], question: str, database) -> Choice:
    """The candidate to answer with. `sqls[i]` ran and returned `results[i]` (a hashable key of its rows; None:
    it did not run); `results[i][2]` is its row count. Index 0, the greedy reply, is chosen when none ran."""
    groups: dict[tuple, list[int]] = {}
    for index, result in enumerate(results):
        if result is not None:
            groups.setdefault(result, []).append(index)
    if not groups:
        return Choice(0, 0, 0, 0)
    groups = {key: members for key, members in groups.items() if key[2] > 0} or groups
    ran = [i for members in groups.values() for i in members]
    cues = question_cues(question, database)
    scores = {i: grounding(sqls[i], cues) for i in ran}
    defects = _defects({i: sqls[i] for i in ran}, database)

    def rank(members: list[int]) -> tuple:
        clean = sum(1 for i in members if defects[i] == 0)
        return -max(scores[i] for i in members), -clean, -len(members), members[0]

    winner = min(groups.values(), key=rank)
    chosen = min(winner, key=lambda i: (defects[i], i))
    return Choice(chosen, len(winner), sum(1 for i in winner if defects[i] == 0), scores[chosen])


# -- visible defects -------------------------------------------------------------------------------------------------
def _defects(sqls: dict[int, str], database) -> dict[int, int]:
    """{index: joins off the foreign keys + string literals compared with a column that never holds them
    + ANY_VALUE in a SELECT without GROUP BY}."""
    schema = database.schema
    columns = {t.name.lower(): {c.name.lower(): c.name for c in t.columns} for t in schema.tables}
    keys = _key_pairs(schema)
    counts, comparisons = {}, {}
    for index, sql in sqls.items():
        try:
            tree = sqlglot.parse_one(sql, read="duckdb")
        except (sqlglot.errors.SqlglotError, RecursionError, ValueError):
            counts[index] = 0
            continue
        off_key, arbitrary, compared = 0, 0, []
        for select in tree.find_all(exp.Select):
            tables = _tables_in(select)
            if schema.declares_keys:  # with no declared keys, any join may be meant
                off_key += sum(1 for pair in _join_pairs(select, tables, columns) if not _keyed(pair, keys))
            compared += _compared_literals(select, tables, columns)
            arbitrary += _arbitrary_values(select)
        counts[index], comparisons[index] = off_key + arbitrary, compared
    held = _held_literals({c for found in comparisons.values() for c in found}, database, columns)
    for index, found in comparisons.items():
        counts[index] += sum(1 for c in found if held.get(c, True) is False)
    return counts


def _arbitrary_values(select: exp.Select) -> int:
    """1 when this SELECT takes ANY_VALUE(...) while grouping nothing (the adapter learned ANY_VALUE from Spider's
    gold rendered in DuckDB, where it stands beside a GROUP BY, and writes it without one)."""
    if select.args.get("group"):
        return 0
    return int(any(node.find_ancestor(exp.Select) is select for node in select.find_all(exp.AnyValue)))


def _key_pairs(schema: Schema) -> set[frozenset]:
    """The grammar's join keys, as {frozenset({(table, column), (table, column)})}, lowercased."""
    return {frozenset([(a.lower(), column_a.lower()), (b.lower(), column_b.lower())])
            for (a, b), pairs in join_keys(schema).items() for column_a, column_b in pairs}


def _tables_in(select: exp.Select) -> dict[str, str]:
    """{alias or name: table name}, lowercased, for the tables this SELECT itself reads."""
    return {t.alias_or_name.lower(): t.name.lower() for t in select.find_all(exp.Table)
            if t.find_ancestor(exp.Select) is select}


def _table_of(column: exp.Column, tables: dict[str, str], columns: dict[str, dict]) -> str | None:
    if column.table:
        table = tables.get(column.table.lower())
        return table if column.name.lower() in columns.get(table, {}) else None
    return next((t for t in tables.values() if column.name.lower() in columns.get(t, {})), None)


def _join_pairs(select: exp.Select, tables: dict, columns: dict):
    for join in select.args.get("joins") or []:
        on = join.args.get("on")
        for equal in (on.find_all(exp.EQ) if on is not None else ()):
            left, right = equal.left, equal.right
            if isinstance(left, exp.Column) and isinstance(right, exp.Column):
                yield ((_table_of(left, tables, columns), left.name.lower()),
                       (_table_of(right, tables, columns), right.name.lower()))


def _keyed(pair, keys: set[frozenset]) -> bool:
    """One of the grammar's join keys; or equal column names where no key links the two tables."""
    (left_table, left), (right_table, right) = pair
    if frozenset(pair) in keys:
        return True
    linked = any({t for t, _ in key} == {left_table, right_table} for key in keys)
    return left == right and not linked


def _compared_literals(select: exp.Select, tables: dict, columns: dict) -> list[tuple[str, str, str]]:
    """(table, column, text) of each `column = 'text'` / `<>` in this SELECT's own conditions."""
    found = []
    for comparison in select.find_all(exp.EQ, exp.NEQ):
        if comparison.find_ancestor(exp.Select) is not select:
            continue
        column, literal = comparison.left, comparison.right
        if isinstance(column, exp.Literal):
            column, literal = literal, column
        if isinstance(column, exp.Column) and isinstance(literal, exp.Literal) and literal.is_string:
            table = _table_of(column, tables, columns)
            if table is not None:
                found.append((table, columns[table][column.name.lower()], literal.this))
    return found


def _held_literals(wanted: set[tuple[str, str, str]], database, columns: dict) -> dict[tuple, bool]:
    """{(table, column, text): whether the column holds that text}, in one query; {} when it cannot run."""
    wanted = sorted(wanted)[:MAX_LITERAL_CHECKS]
    if not wanted or not database.can_execute:
        return {}
    names = {t.name.lower(): t.name for t in database.schema.tables}
    parts = [f"SELECT * FROM (SELECT {k} AS k FROM {quote_identifier(names[table])} WHERE "
             f"CAST({quote_identifier(column)} AS VARCHAR) = {sql_string(text)} LIMIT 1) AS q{k}"
             for k, (table, column, text) in enumerate(wanted)]
    result = database.run(" UNION ALL ".join(parts))
    if not result.ok:
        return {}
    found = {int(row[0]) for row in result.rows}
    return {check: k in found for k, check in enumerate(wanted)}
