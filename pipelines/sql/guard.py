"""The SQL guard: an allowlist check of one query before it may run, with a one-line reason on refusal.

What passes (everything else is refused):
- exactly one statement, and it is a query: SELECT / WITH / UNION-INTERSECT-EXCEPT / VALUES / PIVOT (with DuckDB's
  extras: FROM-first, QUALIFY, GROUP BY ALL, `* EXCLUDE`, COLUMNS, ...), or DESCRIBE / SUMMARIZE / EXPLAIN of one;
- no statement of any other kind anywhere inside it (DML in a CTE, SELECT ... INTO);
- every table is a table of the database (or a CTE in scope); no other catalog or schema, no file, glob or URL
  (`FROM 'x.csv'` is DuckDB's replacement scan);
- table functions only from TABLE_FUNCTIONS; other functions are DuckDB built-ins minus FORBIDDEN_FUNCTIONS and
  anything named duckdb_* or pragma_* (the lists are sandbox_worker's: the sandbox checks DuckDB's tree with them).

The query is parsed by sqlglot in the dialect it was written in and `normalized` is sqlglot's DuckDB rendering of
the checked tree, without comments. That text is then parsed again as DuckDB and checked again, and the two trees
must hold the same tables, columns, literals and clauses: a dialect that reads some text differently from DuckDB
(`$tag$ ... $tag$` is a string to DuckDB and not to sqlite or mysql) turns into a refusal, not into code the guard
never saw.
Names resolve as DuckDB resolves them: a CTE is visible only after its definition (a forward reference reads the
catalog), and a CTE may not take the name of a system view (nor may a query read one).
Functions and tables named like macros stored in the database (`macros=`) are refused: DuckDB would run the macro.
The guard works under a budget (MAX_SQL_CHARS, MAX_TOKENS, MAX_NODES, TIME_BUDGET_S) and refuses, with that
reason, a query that exceeds it; its scope analysis is one pass over the tree.
SQL parsed as SQLite keeps SQLite's meaning of `"France"`: a double-quoted word that names no column in scope is
a string, and the DuckDB rendering writes it as one (DuckDB would read it as a column and fail); its LIKE, which
ignores case, becomes ILIKE. In any dialect, a column of an aggregate query that is neither grouped nor aggregated
(SQLite's "bare column", a habit models keep) is wrapped in any_value() or arg_max()/arg_min(), which is what SQLite
returns for it; and an unqualified column that an inner join equates (`ON a.id = b.id`) is given the first of those
tables. DuckDB would refuse both queries, so no query it runs changes.
The guard is one layer; the sandbox (sandbox.py) assumes it can be wrong.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect

from pipelines.sql.sandbox_worker import FORBIDDEN_FUNCTIONS, FORBIDDEN_PREFIXES, TABLE_FUNCTIONS

MAX_SQL_CHARS = 100_000
MAX_TOKENS = 10_000  # bounds the parse (each pass ~0.3 s at this size here); a long generated query has ~1k
MAX_NODES = 60_000
TIME_BUDGET_S = 2.0  # per check, parse included

_TABLE_FUNCTION_CLASSES = (exp.GenerateSeries, exp.ExplodingGenerateSeries, exp.Unnest, exp.Explode)
_FORBIDDEN_FUNCTION_CLASSES = tuple(getattr(exp, name) for name in (
    "ReadCSV", "ReadParquet", "NextValueFor", "ToFile", "Secret") if hasattr(exp, name))

# Statement kinds that must not appear anywhere in a query. DDL/DML are sqlglot base classes (INSERT, UPDATE,
# DELETE, MERGE, CREATE, DROP, ALTER, ...); Command is sqlglot's fallback for what it cannot parse (LOAD,
# CALL, VACUUM, PREPARE, EXECUTE, RESET, EXPLAIN, CREATE SECRET), so it is refused as a whole too.
_STATEMENT_CLASSES = tuple(getattr(exp, name) for name in (
    "DDL", "DML", "Create", "Drop", "Alter", "Insert", "Update", "Delete", "Merge", "Command", "Copy", "Set",
    "Pragma", "Use", "Transaction", "Commit", "Rollback", "Attach", "Detach", "Install", "Grant", "Revoke", "Kill",
    "LoadData", "Cache", "Uncache", "Refresh", "TruncateTable", "Export", "Analyze", "Declare", "Show", "Comment",
    "Execute", "Into", "Describe", "Summarize",
) if hasattr(exp, name))
_QUERY_CLASSES = (exp.Query, exp.Values)  # Select, Union, Intersect, Except, VALUES, parenthesised queries

_EXPLAIN = re.compile(r"\s*EXPLAIN(\s+ANALY[SZ]E)?\s+", re.I)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
# What DuckDB would read as a file or URL when it is not a table: a path, a glob, a scheme or an extension.
_PATH_LIKE = re.compile(r"[/\\:*?~]|\.[A-Za-z0-9]{1,8}$")


def _not_command_fallback(record: logging.LogRecord) -> bool:
    """sqlglot warns when it falls back to a raw Command; the guard refuses those with its own reason."""
    return "Falling back to parsing as a 'Command'" not in record.getMessage()


logging.getLogger("sqlglot").addFilter(_not_command_fallback)


@dataclass(frozen=True)
class GuardResult:
    sql: str
    allowed: bool
    reason: str | None
    normalized: str | None  # the DuckDB SQL to execute (None when refused)


class _Refused(Exception):
    """Internal: carries the one-line reason out of the tree walk."""


def check_sql(sql: str, known_tables: Iterable[str] | None = None, *, dialect: str = "duckdb",
              columns: Mapping[str, Iterable[str]] | None = None, macros: Iterable[str] = ()) -> GuardResult:
    """Allow `sql` only if it is one read-only query over `known_tables` (None: don't check table names).

    `columns` ({table: column names}) lets SQLite's double-quoted strings be told apart from quoted columns.
    `macros`: names of macros stored in the database, refused (one named like a built-in would replace it).
    Never raises: anything unexpected, including sqlglot failures and recursion limits, is a refusal.
    """
    try:
        tables = None if known_tables is None else {str(name).lower(): str(name) for name in known_tables}
        table_columns = None if columns is None else {
            str(table).lower(): {str(c).lower() for c in names} for table, names in columns.items()}
        budget = _Budget(time.monotonic() + TIME_BUDGET_S, frozenset(str(m).lower() for m in macros))
        return GuardResult(sql, True, None, _check(sql, tables, dialect, table_columns, budget))
    except _Refused as refusal:
        return GuardResult(sql if isinstance(sql, str) else repr(sql), False, str(refusal), None)
    except RecursionError:
        return GuardResult(sql, False, "the query is nested too deeply to check", None)
    except Exception as error:  # a guard bug must refuse, never crash the caller
        return GuardResult(sql if isinstance(sql, str) else repr(sql), False,
                           f"the query could not be checked ({type(error).__name__})", None)


class _Budget:
    """The guard's time limit, checked between phases and every few hundred nodes of a walk."""

    def __init__(self, deadline: float, macros: frozenset[str] = frozenset()) -> None:
        self.deadline = deadline
        self.macros = macros  # carried along with the budget: the walks that need it already take it

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise _Refused(f"the query is too complex to check within {TIME_BUDGET_S:g} s; simplify it")


def _check(sql: str, tables: dict[str, str] | None, dialect: str, columns: dict[str, set[str]] | None,
           budget: _Budget) -> str:
    if not isinstance(sql, str):
        raise _Refused("the query must be text")
    if not sql.strip():
        raise _Refused("the query is empty: write a SELECT statement")
    if len(sql) > MAX_SQL_CHARS:
        raise _Refused(f"the query is too long ({len(sql):,} characters; the limit is {MAX_SQL_CHARS:,})")
    if _CONTROL.search(sql):
        raise _Refused("the query contains control characters")
    if dialect not in _dialects():
        raise _Refused(f"unknown SQL dialect {dialect!r}")
    explain = _EXPLAIN.match(sql)
    if explain:  # sqlglot cannot parse EXPLAIN: check what it explains, then put the prefix back
        if _EXPLAIN.match(sql[explain.end():]):
            raise _Refused("EXPLAIN works on one query, not on another EXPLAIN")
        inner = _check(sql[explain.end():], tables, dialect, columns, budget)
        return f"EXPLAIN {'ANALYZE ' if explain.group(1) else ''}{inner}"
    statement = _parse_one(sql, dialect, budget)
    _check_statement(statement, tables, budget)
    if dialect == "sqlite":
        _keep_sqlite_meaning(statement, columns)
    if columns is not None:
        _qualify_join_keys(statement, columns)
    _complete_bare_columns(statement)
    budget.check()
    normalized = statement.sql(dialect="duckdb", comments=False)
    if dialect != "duckdb" or normalized != sql:
        _check_rendering(statement, normalized, tables, dialect, budget)
    return normalized


def _check_rendering(statement: exp.Expression, normalized: str, tables: dict[str, str] | None, dialect: str,
                     budget: _Budget) -> None:
    """What DuckDB will run is `normalized`: read it as DuckDB, check that tree too, and require that it holds the
    same parts as the tree that was checked. Where the source dialect read the text differently, this refuses."""
    differs = f"the query reads differently in DuckDB than in {dialect}"
    try:
        again = _parse_one(normalized, "duckdb", budget, what="it")
    except _Refused as refusal:
        raise _Refused(f"{differs} (DuckDB {refusal}); write it in DuckDB SQL") from None
    _check_statement(again, tables, budget)
    budget.check()
    if _parts(again, budget) != _parts(statement, budget):
        raise _Refused(f"{differs}; write it in DuckDB SQL")


_COMPARED = (exp.Table, exp.Column, exp.Literal, exp.Select, exp.SetOperation, exp.Subquery, exp.CTE, exp.Values,
             exp.Join, exp.Where, exp.Group, exp.Having, exp.Order, exp.Limit)


def _parts(tree: exp.Expression, budget: _Budget) -> Counter:
    """What a query reads and how it is shaped, for comparing two parses: its tables, columns, literals and
    clauses. Functions are left out (both trees are checked on their own, and sqlglot spells some functions
    differently once rendered: ANY_VALUE becomes AnyValue under IGNORE NULLS), and so are types
    (DECIMAL -> DECIMAL(18, 3))."""
    parts: Counter = Counter()
    stack, count = [tree], 0
    while stack:
        node = stack.pop()
        count += 1
        if count % 256 == 0:
            budget.check()
        if isinstance(node, exp.DataType):
            continue
        stack.extend(node.iter_expressions())
        if isinstance(node, exp.RawString):  # postgres' $$text$$: a string, as DuckDB reads it too
            parts[("Literal", f"True:{node.this}")] += 1
        elif isinstance(node, _COMPARED):
            name = node.name.lower() if isinstance(node, (exp.Table, exp.Column, exp.CTE)) else None
            if isinstance(node, exp.Literal):
                name = f"{node.is_string}:{node.this}"
            parts[(type(node).__name__, name)] += 1
    return parts


def _keep_sqlite_meaning(statement: exp.Expression, columns: dict[str, set[str]] | None) -> None:
    """Rewrite SQLite-only meanings into DuckDB SQL that means the same, so SQLite-trained models' queries run."""
    if columns is not None:
        _sqlite_quoted_strings_to_literals(statement, columns)
    for like in list(statement.find_all(exp.Like)):  # SQLite's LIKE ignores ASCII case; DuckDB's does not
        like.replace(exp.ILike(this=like.this, expression=like.expression))


def _qualify_join_keys(statement: exp.Expression, columns: dict[str, set[str]]) -> None:
    """`SELECT id ... FROM a JOIN b ON a.id = b.id`: DuckDB calls the bare `id` ambiguous, though the inner join
    makes both the same value (what USING would say). Such a column is given the first of those tables."""
    for select in list(statement.find_all(exp.Select)):
        scope = [(t.alias_or_name, t.name.lower()) for t in select.find_all(exp.Table)
                 if t.find_ancestor(exp.Select) is select]
        if len(scope) < 2:
            continue
        linked: dict[str, list[set[str]]] = {}  # column -> groups of aliases an inner join equates on it
        for join in select.args.get("joins") or []:
            if join.args.get("side") or join.args.get("kind") not in (None, "INNER"):
                continue  # an outer join may leave one side NULL
            for equal in (join.args["on"].find_all(exp.EQ) if join.args.get("on") else ()):
                left, right = equal.left, equal.right
                if (isinstance(left, exp.Column) and isinstance(right, exp.Column) and left.table and right.table
                        and left.name.lower() == right.name.lower()):
                    _merge(linked.setdefault(left.name.lower(), []), {left.table.lower(), right.table.lower()})
        outputs = {item.alias.lower() for item in select.expressions if isinstance(item, exp.Alias)}
        for column in list(select.find_all(exp.Column)):
            name = column.name.lower()
            if column.table or name in outputs or name not in linked or column.find_ancestor(exp.Select) is not select:
                continue
            owners = [alias for alias, table in scope if name in columns.get(table, ())]
            if len(owners) > 1 and any({o.lower() for o in owners} <= group for group in linked[name]):
                column.set("table", exp.to_identifier(owners[0]))


def _merge(groups: list[set[str]], pair: set[str]) -> None:
    touching = [g for g in groups if g & pair]
    for group in touching:
        groups.remove(group)
        pair |= group
    groups.append(pair)


def _complete_bare_columns(statement: exp.Expression) -> None:
    """SQLite (and MySQL) allow columns that are neither grouped nor aggregated (`SELECT name, count(*) ... GROUP
    BY id`), taking them from some row of the group, or from the row of the one max()/min() (SQLite's documented
    "bare columns"); DuckDB refuses such a query. Wrap them in any_value(), or arg_max()/arg_min() after one max/min.
    Models keep this habit whatever dialect they were told to write, and only queries DuckDB would refuse change:
    a column that is grouped, part of a grouped expression, or an output name is left alone."""
    for select in list(statement.find_all(exp.Select)):
        _complete_select(select)


def _complete_select(select: exp.Select) -> None:
    group = select.args.get("group")
    items = list(select.expressions)
    own_aggregates = [a for item in items for a in item.find_all(exp.AggFunc)
                      if a.find_ancestor(exp.Select) is select and not a.find_ancestor(exp.Window)]
    if not group and not own_aggregates:
        return
    if group and (any(value for key, value in group.args.items() if key != "expressions")
                  or any(isinstance(key, (exp.Rollup, exp.Cube, exp.GroupingSets)) for key in group.expressions)):
        return  # GROUP BY ALL / ROLLUP / CUBE / GROUPING SETS: left to DuckDB's own rules
    grouped = set()
    for key in (group.expressions if group else []):
        if isinstance(key, exp.Literal) and not key.is_string:  # GROUP BY 2: the second output column
            position = int(key.name) - 1 if key.name.isdigit() else -1
            if 0 <= position < len(items):
                grouped.add(_unaliased(items[position]).sql().lower())
        else:
            grouped.add(key.sql().lower())
    aliases = {item.alias.lower() for item in items if isinstance(item, exp.Alias)}
    grouped |= {_unaliased(item).sql().lower() for item in items if item.alias.lower() in grouped}
    extremes = [a for a in own_aggregates if isinstance(a, (exp.Max, exp.Min))]
    order = select.args.get("order")
    parts = items + [o.this for o in (order.expressions if order else [])]
    if select.args.get("having"):
        parts.append(select.args["having"].this)
    for part in parts:
        for column in list(part.find_all(exp.Column)):
            owner = column.find_ancestor(exp.AggFunc, exp.Select, exp.Lambda)  # the nearest one around it
            if owner is not select or isinstance(column.this, exp.Star):
                continue  # aggregated, in a subquery or a lambda, or t.*
            if not column.table and column.name.lower() in aliases:
                continue  # an output name: ORDER BY n
            if any(node.sql().lower() in grouped for node in _up_to(column, part)):
                continue  # grouped, or inside a grouped expression (GROUP BY a + b)
            if len(extremes) == 1 and extremes[0].this is not None:
                kind = "ARG_MAX" if isinstance(extremes[0], exp.Max) else "ARG_MIN"
                column.replace(exp.Anonymous(this=kind, expressions=[column.copy(), extremes[0].this.copy()]))
            else:
                column.replace(exp.Anonymous(this="ANY_VALUE", expressions=[column.copy()]))


def _unaliased(item: exp.Expression) -> exp.Expression:
    return item.this if isinstance(item, exp.Alias) else item


def _up_to(node: exp.Expression, top: exp.Expression):
    """`node` and its ancestors, up to and including `top`."""
    while node is not None:
        yield node
        if node is top:
            return
        node = node.parent


def _sqlite_quoted_strings_to_literals(statement: exp.Expression, columns: dict[str, set[str]]) -> None:
    """SQLite's rule (its docs, "SQLite Keywords"): a double-quoted word that matches no identifier is a string.

    In scope: the columns of every table the query reads, the output names it defines (aliases, CTE columns)
    and the table and alias names themselves.
    """
    names: set[str] = set()
    for table in statement.find_all(exp.Table):
        names |= columns.get(table.name.lower(), set())
        names.update(n.lower() for n in (table.name, table.alias) if n)
    names.update(alias.alias.lower() for alias in statement.find_all(exp.Alias, exp.TableAlias) if alias.alias)
    for alias in statement.find_all(exp.TableAlias):
        names.update(c.name.lower() for c in alias.columns)
    for column in list(statement.find_all(exp.Column)):
        identifier = column.this
        if (isinstance(identifier, exp.Identifier) and identifier.quoted and not column.table
                and identifier.name.lower() not in names):
            column.replace(exp.Literal.string(identifier.name))


@functools.cache
def _dialects() -> frozenset[str]:
    return frozenset(d.value for d in sqlglot.Dialects if d.value)


def _parse_one(sql: str, dialect: str, budget: _Budget, what: str = "the SQL") -> exp.Expression:
    try:
        reader = Dialect.get_or_raise(dialect)
        tokens = reader.tokenize(sql)
        if len(tokens) > MAX_TOKENS:
            raise _Refused(f"the query is too long ({len(tokens):,} tokens; the limit is {MAX_TOKENS:,})")
        budget.check()
        statements = reader.parser().parse(tokens, sql)
    except sqlglot.errors.ParseError as error:
        raise _Refused(f"could not parse {what}: {_parse_error_text(error)}") from None
    except sqlglot.errors.TokenError as error:
        raise _Refused(f"could not read {what}: {str(error).splitlines()[0][:200]}") from None
    budget.check()
    # Empty statements (`;;`) and trailing comments (`SELECT 1; -- done`) are not statements.
    statements = [s for s in statements if s is not None and not isinstance(s, exp.Semicolon)]
    if not statements:
        raise _Refused("the query is empty: write a SELECT statement")
    if len(statements) > 1:
        raise _Refused(f"only one statement can run at a time (found {len(statements)})")
    return statements[0]


def _parse_error_text(error: sqlglot.errors.ParseError) -> str:
    if error.errors:
        first = error.errors[0]
        near = (first.get("highlight") or "").strip()
        where = f" at line {first.get('line')}, column {first.get('col')}"
        return f"{first.get('description')}{where}" + (f" near {near[:40]!r}" if near else "")
    return str(error).splitlines()[0][:200]


def _check_statement(statement: exp.Expression, tables: dict[str, str] | None, budget: _Budget) -> None:
    target = statement
    if isinstance(statement, (exp.Describe, exp.Summarize)):  # read-only DuckDB extras over a table or query
        target = statement.this
        if not isinstance(target, (exp.Table, *_QUERY_CLASSES)):
            raise _Refused(f"{_kind(statement)} works on one table or query only")
    elif isinstance(statement, exp.Pivot) and isinstance(statement.this, (exp.Table, exp.Subquery)):
        pass  # DuckDB's PIVOT statement (`PIVOT t ON c USING count(*)`): a query, its parts checked below
    elif not isinstance(statement, _QUERY_CLASSES):
        raise _Refused(f"only read-only queries (SELECT, WITH, VALUES) can run; this is {_kind_phrase(statement)}")
    for node, ctes in _walk_with_scope(target, budget):
        if node is not target and isinstance(node, _STATEMENT_CLASSES):
            if isinstance(node, exp.Into):
                raise _Refused("SELECT ... INTO would create a table: remove the INTO clause")
            raise _Refused(f"only reading is allowed, but the query contains {_kind_phrase(node)}")
        if isinstance(node, exp.Table):
            _check_table(node, tables, ctes, budget.macros)
        elif isinstance(node, exp.Func):
            _check_function(node, budget.macros)
        elif isinstance(node, exp.Lateral) and isinstance(node.this, exp.Func):
            _check_table_function(node.this, budget.macros)
        elif isinstance(node, exp.CTE):
            _check_cte_name(node.alias)


class _Scope:
    """The CTE names visible at a point of the query: those of each enclosing WITH defined before that point.

    A chain of (names -> position, how many are visible) links, one per enclosing WITH, so entering a CTE costs
    nothing and a lookup costs the WITH nesting depth: the walk stays linear in the size of the query.
    """

    __slots__ = ("names", "visible", "parent")

    def __init__(self, names: dict[str, int], visible: int, parent: "_Scope | None") -> None:
        self.names, self.visible, self.parent = names, visible, parent

    def __contains__(self, name: str) -> bool:
        scope = self
        while scope is not None:
            position = scope.names.get(name)
            if position is not None and position < scope.visible:
                return True
            scope = scope.parent
        return False


_NO_CTES = _Scope({}, 0, None)


def _walk_with_scope(root: exp.Expression, budget: _Budget):
    """Every node under `root` (itself included) with the CTE scope DuckDB would resolve its names in."""
    stack = [(root, _NO_CTES)]
    seen = 0
    while stack:
        node, scope = stack.pop()
        seen += 1
        if seen % 256 == 0:
            budget.check()
            if seen > MAX_NODES:
                raise _Refused(f"the query is too big to check (more than {MAX_NODES:,} parts)")
        yield node, scope
        with_clause = node.args.get("with_") or node.args.get("with")
        if isinstance(with_clause, exp.With):
            ctes = [cte for cte in with_clause.expressions if isinstance(cte, exp.CTE)]
            names: dict[str, int] = {}
            for position, cte in enumerate(ctes):
                names.setdefault(cte.alias.lower(), position)
            recursive = bool(with_clause.args.get("recursive"))
            for position, cte in enumerate(ctes):
                # A CTE sees the ones before it (and itself, in WITH RECURSIVE); DuckDB reads a later one's
                # name from the catalog.
                cte_scope = _Scope(names, position + 1 if recursive else position, scope)
                stack.append((cte, cte_scope))
            inner = _Scope(names, len(ctes), scope)
            for child in node.iter_expressions():
                if child is not with_clause:
                    stack.append((child, inner))
            continue
        for child in node.iter_expressions():
            stack.append((child, scope))


def _check_cte_name(name: str) -> None:
    lowered = name.lower()
    if lowered in _system_names() or lowered.startswith(FORBIDDEN_PREFIXES):
        raise _Refused(f"a CTE may not be named {name!r}: that is the name of a DuckDB system view")


def _check_table(table: exp.Table, tables: dict[str, str] | None, ctes: _Scope,
                 macros: frozenset[str] = frozenset()) -> None:
    if isinstance(table.this, exp.Func):  # a table function: FROM range(10), FROM read_csv('x')
        _check_table_function(table.this, macros)
        return
    if not isinstance(table.this, exp.Identifier):
        raise _Refused(f"unsupported table reference {table.sql(dialect='duckdb')[:60]!r}")
    name = table.name
    if table.args.get("catalog") or (table.db and table.db.lower() != "main"):
        raise _Refused(f"only the tables of this database can be read, not {table.sql(dialect='duckdb')}")
    if table.args.get("when") is not None:
        raise _Refused("time travel (AT ...) is not supported")
    lowered = name.lower()
    if tables is not None and lowered in tables:
        return
    if _PATH_LIKE.search(name):
        raise _Refused(f"reading files or URLs is not allowed ({name!r})")
    if lowered in ctes:
        return
    if lowered in _system_names() or lowered.startswith(FORBIDDEN_PREFIXES):
        raise _Refused(f"{name!r} is a DuckDB system view: only the database's own tables can be read")
    if tables is not None:
        known = ", ".join(sorted(tables.values())[:12]) + (", ..." if len(tables) > 12 else "")
        raise _Refused(f"unknown table {name!r} (tables: {known or 'none'})")


@functools.cache
def _system_names() -> frozenset[str]:
    """Names DuckDB resolves to its own catalog without a schema: system views (pg_settings, duckdb_databases,
    sqlite_master). A CTE named like a table function (`summary`) shadows nothing: those take parentheses."""
    from pipelines.sql.sandbox_worker import _builtins

    return _builtins()[1]


def _check_table_function(func: exp.Expression, macros: frozenset[str] = frozenset()) -> None:
    name = _function_name(func)
    if name in macros:  # a table macro stored in the database, named like `range`
        raise _Refused(f"{name}() is a macro stored in the database; stored macros are not run")
    if isinstance(func, _TABLE_FUNCTION_CLASSES):
        return
    if name not in TABLE_FUNCTIONS or name.startswith(FORBIDDEN_PREFIXES):
        raise _Refused(f"table function {name}() is not allowed (allowed: {', '.join(sorted(TABLE_FUNCTIONS))})")


def _check_function(func: exp.Func, macros: frozenset[str] = frozenset()) -> None:
    if macros:
        names = {_function_name_cheap(func)} | {n.lower() for n in type(func).sql_names()}
        if names & macros:
            raise _Refused(f"{min(names & macros)}() is a macro stored in the database; stored macros are not run")
    if isinstance(func, _FORBIDDEN_FUNCTION_CLASSES):
        raise _Refused(f"{_function_name(func)}() is not allowed: it reads files or changes state")
    if isinstance(func.parent, (exp.Table, exp.Lateral)) and func.parent.this is func:
        return  # a table function, checked with its table
    if not isinstance(func, exp.Anonymous):
        # A function sqlglot knows by type, rendered as DuckDB's own name; some of those reveal the instance
        # (CURRENT_USER, VERSION). By class, not by rendering each call: that would cost its whole subtree.
        forbidden = _forbidden_classes().get(type(func))
        if forbidden:
            raise _Refused(f"{forbidden}() is not allowed: it reads settings or the instance")
        return
    name = _function_name(func)
    if name in FORBIDDEN_FUNCTIONS or name.startswith(FORBIDDEN_PREFIXES):
        raise _Refused(f"{name}() is not allowed: it reads settings, files or the instance, or changes state")
    if name not in _duckdb_functions():
        raise _Refused(f"unknown function {name}()")


@functools.cache
def _forbidden_classes() -> dict[type, str]:
    """sqlglot's function classes whose DuckDB rendering calls a forbidden function (CurrentVersion ->
    VERSION(), CurrentUser -> CURRENT_USER), found by rendering each class once without arguments."""
    found: dict[type, str] = {}
    stack = [exp.Func]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        names = {n.lower() for n in cls.sql_names()} if cls is not exp.Func else set()
        try:
            rendered = cls().sql(dialect="duckdb", unsupported_level=sqlglot.ErrorLevel.IGNORE)
            names.add(re.split(r"[\s(]", rendered.strip(), maxsplit=1)[0].lower())
        except Exception:  # noqa: BLE001 - a class that needs its arguments to render: its names say enough
            pass
        hit = next((n for n in sorted(names) if n in FORBIDDEN_FUNCTIONS or n.startswith(FORBIDDEN_PREFIXES)), None)
        if hit and cls is not exp.Anonymous:
            found[cls] = hit
    return found


def _function_name_cheap(func: exp.Func) -> str:
    """The name a call is written with (Anonymous) or its class's first SQL name, without rendering."""
    if isinstance(func, exp.Anonymous):
        return func.name.lower()
    names = type(func).sql_names()
    return names[0].lower() if names else type(func).key


def _function_name(func: exp.Expression) -> str:
    if isinstance(func, exp.Anonymous):
        return func.name.lower()
    return func.sql(dialect="duckdb").split("(", 1)[0].strip().lower()


@functools.cache
def _duckdb_functions() -> frozenset[str]:
    """The scalar, aggregate, window and macro functions DuckDB has built in (read once from DuckDB itself)."""
    import duckdb

    with duckdb.connect(":memory:", config={"enable_external_access": False}) as con:
        rows = con.execute(
            "SELECT DISTINCT lower(function_name) FROM duckdb_functions() "
            "WHERE function_type IN ('scalar', 'aggregate', 'window', 'macro')"
        ).fetchall()
    return frozenset(name for (name,) in rows) - FORBIDDEN_FUNCTIONS


def _kind(node: exp.Expression) -> str:
    """What a person calls this statement: DELETE, COPY, LOAD ..."""
    if isinstance(node, exp.Command):
        return str(node.this).upper()
    if isinstance(node, (exp.Create, exp.Drop)):
        kind = node.args.get("kind")
        return f"{type(node).__name__.upper()} {kind}" if kind else type(node).__name__.upper()
    if isinstance(node, exp.Transaction):
        return "BEGIN TRANSACTION"
    if isinstance(node, exp.Column) and not node.table:
        return node.name.upper()  # a lone word such as CHECKPOINT parses as a column
    names = {"TruncateTable": "TRUNCATE", "LoadData": "LOAD DATA", "Into": "SELECT INTO"}
    return names.get(type(node).__name__, type(node).__name__.upper())


def _kind_phrase(node: exp.Expression) -> str:
    if isinstance(node, _STATEMENT_CLASSES) or isinstance(node, exp.Column) and not node.table:
        kind = _kind(node)
        return f"{'an' if kind[0] in 'AEIOU' else 'a'} {kind} statement"
    return f"not a query ({node.sql(dialect='duckdb')[:40]!r})"
