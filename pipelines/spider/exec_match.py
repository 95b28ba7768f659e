"""Execution match, as the official Spider test-suite evaluation (taoyds/test-suite-sql-eval, exec_eval.py).

For one question:
1. `postprocess` both queries (`> =` -> `>=`, `< =` -> `<=`, `! =` -> `!=`) and, unless `keep_distinct`, remove
   every DISTINCT keyword from both (also inside `count(DISTINCT x)`, as the official token filter does);
2. `order_matters` is whether the (processed) gold contains `order by`;
3. run both read-only in SQLite; a prediction that fails (error, timeout) is wrong;
4. the results are equal when both are empty, or when they have the same number of rows and of columns and some
   permutation of the prediction's columns makes the rows equal: as lists when order matters, else as multisets.
   Values are compared as SQLite returns them (no float rounding; 1 and 1.0 are equal as Python values); column
   names are ignored.

Differences from the official code, none of which changes a verdict:
- the official code samples 20 random prediction rows to prune column permutations; here every row prunes
  (a pruned permutation cannot match either way), so the result is deterministic;
- the prediction is fetched up to one row more than the gold has: a longer result is unequal anyway, and a
  runaway prediction cannot exhaust memory;
- a per-query timeout (default 30 s) really interrupts SQLite (the official asyncio timeout cannot interrupt a
  blocking call); a prediction that times out is wrong;
- the official code runs every `.sqlite` file in the database folder (the test suite's extra databases); Spider's
  own folders hold one, and `db_paths` accepts more.
"""

from __future__ import annotations

import re
import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path

from pipelines.spider.sqlite_db import DEFAULT_TIMEOUT_S, QueryTimeout, execute

Row = tuple


# -- query post-processing -------------------------------------------------------------------------------------------
def postprocess(query: str) -> str:
    return query.replace("> =", ">=").replace("< =", "<=").replace("! =", "!=")


# Quoted strings and identifiers are kept whole, so only the bare keyword DISTINCT is removed (as sqlparse's
# token stream does in the official `remove_distinct`).
_TOKENS = re.compile(r"""'(?:[^']|'')*'?|"(?:[^"]|"")*"?|`[^`]*`?|\[[^\]]*\]?|[A-Za-z_][A-Za-z0-9_$]*|.""", re.S)


def remove_distinct(query: str) -> str:
    return "".join(token for token in _TOKENS.findall(query) if token.lower() != "distinct")


def prepare(query: str, keep_distinct: bool = False) -> str:
    query = postprocess(query)
    return query if keep_distinct else remove_distinct(query)


def order_matters(gold: str) -> bool:
    """The official rule: rows are compared in order when the gold SQL says ORDER BY (as text)."""
    return "order by" in gold.lower()


# -- result comparison -----------------------------------------------------------------------------------------------
def _unorder_row(row: Row) -> Row:
    return tuple(sorted(row, key=lambda value: str(value) + str(type(value))))


def _quick_reject(result1: Sequence[Row], result2: Sequence[Row], ordered: bool) -> bool:
    """True when the rows, each taken as a bag of values, already differ (no column permutation can help)."""
    rows1 = [_unorder_row(row) for row in result1]
    rows2 = [_unorder_row(row) for row in result2]
    return rows1 != rows2 if ordered else set(rows1) != set(rows2)


def _multiset_eq(rows1: Sequence[Row], rows2: Sequence[Row]) -> bool:
    return len(rows1) == len(rows2) and Counter(rows1) == Counter(rows2)


def _candidate_permutations(result1: Sequence[Row], result2: Sequence[Row]) -> Iterable[tuple[int, ...]]:
    """Column mappings (gold column i <- prediction column perm[i]) not ruled out by any value."""
    num_cols = len(result2[0])
    allowed = [set(range(num_cols)) for _ in range(num_cols)]
    if num_cols > 3:  # the official code prunes only above 3 columns; pruning never removes a match
        gold_columns = [{row[i] for row in result1} for i in range(num_cols)]
        for row in result2:
            for gold_col in range(num_cols):
                for pred_col in list(allowed[gold_col]):
                    if row[pred_col] not in gold_columns[gold_col]:
                        allowed[gold_col].discard(pred_col)
    return (perm for perm in product(*allowed) if len(set(perm)) == len(perm))


def result_eq(result1: Sequence[Row], result2: Sequence[Row], order_matters: bool) -> bool:
    """The official `result_eq`: result1 is the gold, result2 the prediction."""
    result1, result2 = [tuple(r) for r in result1], [tuple(r) for r in result2]
    if len(result1) == 0 and len(result2) == 0:
        return True
    if len(result1) != len(result2):
        return False
    num_cols = len(result1[0])
    if len(result2[0]) != num_cols:
        return False
    if _quick_reject(result1, result2, order_matters):
        return False
    for perm in _candidate_permutations(result1, result2):
        permuted = result2 if num_cols == 1 else [tuple(row[i] for i in perm) for row in result2]
        if order_matters:
            if result1 == permuted:
                return True
        elif set(result1) == set(permuted) and _multiset_eq(result1, permuted):
            return True
    return False


# -- one question ------------------------------------------------------------------------------------------------------
@dataclass
class MatchResult:
    correct: bool
    error: str | None = None  # why the prediction failed to run (None when it ran)
    gold_error: str | None = None  # the gold failed to run: the question cannot be scored fairly (counted wrong)
    refused: bool = False  # the app's guard refused the prediction, so it never ran (DuckDB path only)
    ran_sql: str | None = None  # what actually ran, when that is not the prediction's own text
    transpiled: bool = False  # the prediction failed in SQLite as written and ran after transpiling to SQLite


class GoldFailed(Exception):
    pass


def _describe(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


QUERY_ERRORS = (QueryTimeout, sqlite3.Error, sqlite3.Warning, ValueError, OverflowError, MemoryError)


def gold_rows(path: str | Path, gold: str, *, keep_distinct: bool = False,
              timeout_s: float = DEFAULT_TIMEOUT_S) -> list[Row]:
    """The gold's rows after the official post-processing (raises one of QUERY_ERRORS when it fails)."""
    _, rows, _ = execute(path, prepare(gold, keep_distinct), timeout_s=timeout_s)
    return rows


def exec_match(db_paths: str | Path | Sequence[str | Path], predicted: str | None, gold: str, *,
               keep_distinct: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S,
               transpile_from: str | None = None) -> MatchResult:
    """Is `predicted` execution-equal to `gold` on every database file? (An empty prediction is wrong.)

    `transpile_from` (a sqlglot dialect, e.g. "duckdb"): a prediction that fails in SQLite as written (an SQL
    error, not a timeout) is transpiled from that dialect to SQLite and run again. Queries that run as written
    are never touched, so no verdict of a SQLite prediction that runs can change.
    """
    paths = [db_paths] if isinstance(db_paths, (str, Path)) else list(db_paths)
    gold_sql = prepare(gold, keep_distinct)
    ordered = order_matters(gold_sql)
    if not predicted or not predicted.strip():
        return MatchResult(False, "no SQL was predicted")
    predicted_sql = prepare(predicted, keep_distinct)
    transpiled = False
    for path in paths:
        try:
            _, gold_result, _ = execute(path, gold_sql, timeout_s=timeout_s)
        except QUERY_ERRORS as error:
            # The official code asserts here; one broken gold query must not stop a whole evaluation.
            return MatchResult(False, None, _describe(error))
        try:
            _, predicted_rows, _ = execute(path, predicted_sql, timeout_s=timeout_s, max_rows=len(gold_result) + 1)
        except QUERY_ERRORS as error:
            fallback = None if transpiled or isinstance(error, QueryTimeout) or not transpile_from else \
                to_sqlite(predicted_sql, transpile_from)
            if fallback is None:
                return MatchResult(False, _describe(error), ran_sql=predicted_sql if transpiled else None,
                                   transpiled=transpiled)
            try:
                _, predicted_rows, _ = execute(path, fallback, timeout_s=timeout_s, max_rows=len(gold_result) + 1)
            except QUERY_ERRORS:
                return MatchResult(False, _describe(error))  # the error of the text as written says more
            predicted_sql, transpiled = fallback, True
        if not result_eq(gold_result, predicted_rows, ordered):
            return MatchResult(False, ran_sql=predicted_sql if transpiled else None, transpiled=transpiled)
    return MatchResult(True, ran_sql=predicted_sql if transpiled else None, transpiled=transpiled)


def to_sqlite(sql: str, dialect: str) -> str | None:
    """`sql` read as `dialect` and written as SQLite; None when sqlglot cannot read it or nothing changes."""
    import sqlglot

    try:
        statements = sqlglot.transpile(sql, read=dialect, write="sqlite")
    except (sqlglot.errors.SqlglotError, RecursionError, ValueError):
        return None
    if len(statements) != 1 or statements[0].strip() == sql.strip():
        return None
    return statements[0]
