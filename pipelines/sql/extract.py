"""Pull the SQL out of a model's reply: code fences first, else the first SELECT/WITH paragraph."""

from __future__ import annotations

import re

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_CTE = r"WITH\s+(RECURSIVE\s+)?\w+\s+AS\s*\("
_QUERY_START = re.compile(rf"^\s*(SELECT\b|{_CTE}|VALUES\s*\(|FROM\s+\w+\s+SELECT\b|\(\s*SELECT\b)", re.I)
# In prose, "with" is usually just a word: only `WITH name AS (` starts a query there.
_PROSE_START = re.compile(rf"\bSELECT\b|\b{_CTE}", re.I)


def extract_sql(reply: str) -> str | None:
    """The query in `reply`, without a trailing semicolon, or None when there is none.

    Statements after the first are kept: the guard refuses them with a clear reason rather than this
    function silently dropping them.
    """
    fenced = [(lang.lower(), body.strip()) for lang, body in _FENCE.findall(reply)]
    for lang, body in fenced:
        if lang == "sql" and body:
            return _tidy(body)
    for _, body in fenced:
        if _QUERY_START.match(body):
            return _tidy(body)
    if _QUERY_START.match(reply):
        return _tidy(reply.split("\n\n")[0]) if "```" not in reply else None
    match = _PROSE_START.search(reply)
    if match is None:
        return None
    # A query inside prose ends at its first semicolon: what follows is usually more prose.
    return _tidy(_until_semicolon(reply[match.start():].split("\n\n")[0]))


def _until_semicolon(text: str) -> str:
    quote = None
    for position, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == ";":
            return text[:position]
    return text


def _tidy(sql: str) -> str | None:
    sql = sql.strip().rstrip(";").strip().strip("`").strip()
    return sql or None


def show_group_keys(sql: str, dialect: str | None = None) -> str:
    """A grouped query that shows only aggregates (`SELECT count(*) FROM orders GROUP BY status`) gives numbers
    nobody can read: its group keys are put in front. A query with LIMIT is left alone ("the type with the most
    customers": the count is the answer), as is anything sqlglot cannot read (the guard says why). For the model's
    SQL only: what a person types runs as typed."""
    import sqlglot
    from sqlglot import exp

    try:
        select = sqlglot.parse_one(sql, read=dialect)
    except (sqlglot.errors.SqlglotError, RecursionError):  # RecursionError: nested too deeply, the guard refuses it
        return sql
    group = select.args.get("group") if isinstance(select, exp.Select) else None
    if group is None or select.args.get("limit") or not group.expressions:
        return sql
    keys = group.expressions
    if not all(isinstance(key, exp.Column) for key in keys):  # GROUP BY 1, ALL, ROLLUP, an expression: leave it
        return sql
    if not all(isinstance(item.unalias(), exp.AggFunc) for item in select.expressions):
        return sql
    select.set("expressions", [key.copy() for key in keys] + list(select.expressions))
    return select.sql(dialect=dialect)
