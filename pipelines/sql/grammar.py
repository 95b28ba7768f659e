"""A schema-scoped SQL grammar (Lark) for constrained decoding: the model can only write queries that parse and
that name columns of the tables their FROM brings in.

A context-free grammar cannot look ahead from `SELECT T2.age` to the FROM clause that decides what T2 is, so it
branches instead: one copy of the query rules per *scope*, a list of tables in join order with an alias scheme
(`T1, T2` as Spider writes them, the table names themselves, or initials such as `c` for customers). Inside a
copy, a column is only one of that scope's columns. While the model writes the SELECT list every scope that has
such columns stays alive; the FROM clause then settles which one it is (PICARD, Scholak et al. 2021, checks the
same during beam search). Scopes are single tables, tables joined along a foreign key (both ways round) and
chains of three; a schema that declares no foreign keys allows any pair. A join between tables that keys link
must be ON those keys.

String literals are single-quoted only (DuckDB reads a double-quoted word as a column); identifiers are quoted
when they need it. Keywords and names are case-insensitive, as in SQL. Subqueries (IN, EXISTS, scalar) are
whole queries with scopes of their own; WITH, FROM-subqueries and self-joins are outside the grammar, and the
engine falls back to free decoding when the model needs them and the grammar dead-ends.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass

from pipelines.sql.schema import Schema, quote_identifier

# Caps that keep the grammar (and the parser's live branches) small on wide schemas.
MAX_SCOPES = 240
MAX_CHAIN_TABLES = 12  # three-table chains only for schemas up to this many tables
SMALL_SCHEMA_TABLES = 4  # up to this many tables, any two may be joined
_KEY_NAME = re.compile(r"(id|code|key|no|number)$", re.I)

AGGREGATES = ("count", "sum", "avg", "min", "max")
SCALAR_FUNCTIONS = ("lower", "upper", "length", "abs", "round", "coalesce", "nullif", "substr", "substring",
                    "trim", "replace", "concat", "year", "month", "day", "quarter", "dayofweek", "date_diff",
                    "date_part", "strftime", "greatest", "least", "floor", "ceil")
DATE_PARTS = ("year", "quarter", "month", "week", "day", "hour", "minute", "second", "dow")
TYPES = ("INTEGER", "BIGINT", "DOUBLE", "REAL", "FLOAT", "DECIMAL", "NUMERIC", "VARCHAR", "TEXT", "DATE",
         "TIMESTAMP", "BOOLEAN")


@dataclass(frozen=True)
class Scope:
    tables: tuple[str, ...]  # in join order
    aliases: tuple[str | None, ...]  # None: the table is referred to by its own name


def _lit(text: str) -> str:
    """A case-insensitive Lark literal."""
    return json.dumps(text) + "i"


def _name(identifier: str) -> str:
    """How an identifier may be written: bare (any case) when it can be, else double-quoted exactly."""
    quoted = quote_identifier(identifier)
    return json.dumps(quoted) if quoted.startswith('"') else _lit(quoted)


def _initials(table: str) -> str:
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", table) if p]
    return "".join(p[0] for p in parts).lower() if parts and parts[0][0].isalpha() else ""


def join_keys(schema: Schema) -> dict[tuple[str, str], set[tuple[str, str]]]:
    """{(table a, table b): {(column of a, column of b)}}: the columns two tables join along, both ways round.
    Declared foreign keys, and key-like columns of the same name (declared keys are often incomplete), but not
    two tables' own keys (`orders.id = customers.id` joins rows that have nothing to do with each other) nor a
    text column with a number (Spider's `airlines.Airline` is a name, `flights.Airline` the airline's uid).
    The vote's off-key defect (`vote._key_pairs`) uses the same keys."""
    names = {t.name.lower(): t for t in schema.tables}
    pairs: dict[tuple[str, str], set[tuple[str, str]]] = {}

    def add(a, column_a: str, b, column_b: str) -> None:
        if a.name != b.name:
            pairs.setdefault((a.name, b.name), set()).add((column_a, column_b))
            pairs.setdefault((b.name, a.name), set()).add((column_b, column_a))

    for table in schema.tables:
        for fk in table.foreign_keys:
            target = names.get(fk.ref_table.lower())
            for column, ref_column in zip(fk.columns, fk.ref_columns) if target else ():
                add(table, column, target, ref_column)
    for a, b in itertools.combinations(schema.tables, 2):
        columns_b = {c.name.lower(): c for c in b.columns}
        for column in a.columns:
            other = columns_b.get(column.name.lower())
            if not other or all(c.primary_key or c.name.lower() == "id" for c in (column, other)) or \
                    column.is_text != other.is_text:
                continue
            if any(c.primary_key or _KEY_NAME.search(c.name) for c in (column, other)):
                add(a, column.name, b, other.name)
    return pairs


def _join_graph(schema: Schema) -> dict[str, set[str]]:
    """Which tables may be joined: along `join_keys`, and any two tables of a small schema or of one that
    declares no keys."""
    graph: dict[str, set[str]] = {t.name: set() for t in schema.tables}
    for a, b in join_keys(schema):
        graph[a].add(b)
    if not schema.declares_keys or len(graph) <= SMALL_SCHEMA_TABLES:
        for a, b in itertools.permutations(graph, 2):
            graph[a].add(b)
    return graph


def scopes(schema: Schema) -> list[Scope]:
    """Every table list a FROM clause may bring in, each with every alias scheme."""
    graph = _join_graph(schema)
    orders: list[tuple[str, ...]] = [(t,) for t in graph]
    orders += [(a, b) for a in graph for b in sorted(graph[a])]
    if len(graph) <= MAX_CHAIN_TABLES:
        for a, b in [o for o in orders if len(o) == 2]:
            for c in sorted((graph[a] | graph[b]) - {a, b}):
                orders.append((a, b, c))
    result: list[Scope] = []
    for order in orders:
        schemes = [tuple(f"T{i + 1}" for i in range(len(order))), tuple(None for _ in order)]
        if len(order) == 1:  # a subquery goes on counting its outer query's aliases: (SELECT T3.x FROM t AS T3)
            schemes += [("T2",), ("T3",)]
        initials = tuple(_initials(t) for t in order)
        if all(initials) and len(set(initials)) == len(initials) and initials not in schemes:
            schemes.append(initials)
        result.extend(Scope(order, aliases) for aliases in schemes)
    return result[:MAX_SCOPES]


def _on_condition(scope: Scope, position: int, keys: dict, e: str) -> str:
    """What may follow ON when the scope's table at `position` joins the ones before it: an equality along their
    join keys (then any further condition), or any condition where no key links them (a small or keyless
    schema). A join off the keys (`ON T1.id = T2.id`) is the small model's commonest wrong join."""
    table = scope.tables[position]

    def qualified(index: int, column: str) -> str:
        alias = scope.aliases[index]
        return f"{_lit(alias) if alias else _name(scope.tables[index])} \".\" {_name(column)}"

    equalities = []
    for earlier in range(position):
        for column_earlier, column in sorted(keys.get((scope.tables[earlier], table), ())):
            left, right = qualified(earlier, column_earlier), qualified(position, column)
            equalities += [f"{left} \"=\" {right}", f"{right} \"=\" {left}"]
    if not equalities:
        return e
    return f"({' | '.join(equalities)}) ({_lit('and')} {e})?"


def _scope_rules(k: int, scope: Scope, schema: Schema, keys: dict) -> list[str]:
    """The SELECT rules of one scope: the rules that can hold a column are copied, so its columns stay in scope.

    Names, dots and keywords are literals shared by every scope, so the lexer stays small however many scopes
    there are; only the parser keeps one branch per live scope.
    """
    qualified, stars, bare = [], [], set()
    for table_name, alias in zip(scope.tables, scope.aliases):
        table = schema.table(table_name)
        qualifier = _lit(alias) if alias else _name(table.name)
        qualified.append(f"{qualifier} \".\" ({' | '.join(_name(c.name) for c in table.columns)})")
        stars.append(f"{qualifier} \".\" \"*\"")
        bare.update(_name(c.name) for c in table.columns)
    refs = []
    for table_name, alias in zip(scope.tables, scope.aliases):
        ref = _name(schema.table(table_name).name)
        refs.append(f"{ref} {_lit('as')}? {_lit(alias)}" if alias else ref)
    e, atom = f"e_{k}", f"atom_{k}"
    joins = "".join(f" join_kw {ref} ({_lit('on')} {_on_condition(scope, position, keys, e)})?"
                    for position, ref in enumerate(refs[1:], start=1))
    return [
        f"select_{k}: {_lit('select')} {_lit('distinct')}? item_{k} (\",\" item_{k})* {_lit('from')} {refs[0]}{joins}"
        f" ({_lit('where')} {e})? ({_lit('group')} {_lit('by')} {e} (\",\" {e})*)? ({_lit('having')} {e})?"
        f" ({_lit('order')} {_lit('by')} {e} direction? (\",\" {e} direction?)*)? ({_lit('limit')} INT)?",
        f"item_{k}: \"*\" | star_{k} | {e} ({_lit('as')} ALIAS)?",
        f"col_{k}: {' | '.join(qualified + sorted(bare))}",
        f"star_{k}: {' | '.join(stars)}",
        f"{e}: {_lit('not')}* {atom} test_{k}? (binop {_lit('not')}* {atom} test_{k}?)*",
        f"test_{k}: {_lit('is')} {_lit('not')}? {_lit('null')}"
        f" | {_lit('not')}? {_lit('in')} \"(\" (query | literal (\",\" literal)*) \")\""
        f" | {_lit('not')}? {_lit('between')} {atom} {_lit('and')} {atom}"
        f" | {_lit('not')}? ({_lit('like')} | {_lit('ilike')}) {atom}",
        f"{atom}: col_{k} | literal | \"(\" {e} \")\" | \"(\" query \")\" | \"-\" {atom}"
        f" | {_lit('exists')} \"(\" query \")\""
        f" | AGGREGATE \"(\" {_lit('distinct')}? {e} \")\" | {_lit('count')} \"(\" \"*\" \")\""
        f" | SCALAR \"(\" {e} (\",\" {e})* \")\""
        f" | {_lit('cast')} \"(\" {e} {_lit('as')} TYPE \")\""
        f" | {_lit('extract')} \"(\" DATE_PART {_lit('from')} {e} \")\""
        f" | {_lit('date_trunc')} \"(\" STRING \",\" {e} \")\""
        f" | {_lit('case')} ({_lit('when')} {e} {_lit('then')} {e})+ ({_lit('else')} {e})? {_lit('end')}",
    ]


def _alternatives(words) -> str:
    return " | ".join(_lit(w) for w in words)


def _build(schema: Schema) -> str:
    all_scopes = scopes(schema)
    keys = join_keys(schema)
    lines = [
        "start: query \";\"?",
        f"query: select (({_alternatives(['union', 'intersect', 'except'])}) {_lit('all')}? select)*",
        "select: " + " | ".join(f"select_{k}" for k in range(len(all_scopes))),
        f"join_kw: {_lit('join')} | {_lit('inner')} {_lit('join')} | {_lit('left')} {_lit('outer')}? {_lit('join')}",
        f"literal: NUMBER | STRING | {_lit('null')} | {_lit('true')} | {_lit('false')} | {_lit('current_date')}"
        f" | {_lit('current_timestamp')} | {_lit('now')} \"(\" \")\" | {_lit('date')} STRING | {_lit('timestamp')} STRING"
        f" | {_lit('interval')} STRING | {_lit('interval')} NUMBER DATE_PART",
        f"AGGREGATE: {_alternatives(AGGREGATES)}",
        f"SCALAR: {_alternatives(SCALAR_FUNCTIONS)}",
        f"DATE_PART: {_alternatives(DATE_PARTS + tuple(p + 's' for p in DATE_PARTS if p != 'dow'))}",
        f"TYPE: {_alternatives(TYPES)}",
        'binop: "=" | "!=" | "<>" | "<" | ">" | "<=" | ">=" | "+" | "-" | "*" | "/" | "%" | "||"'
        f" | {_lit('and')} | {_lit('or')}",
        f"direction: {_lit('asc')} | {_lit('desc')}",
        "INT: /[0-9]+/",
        r"NUMBER: /[0-9]+(\.[0-9]+)?/",
        r"STRING: /'([^'\n]|'')*'/",
        r"ALIAS: /[A-Za-z_][A-Za-z0-9_]{0,39}/",  # bounded: a weak model can loop inside a name
        r"%ignore /[ \t\r\n]+/",
    ]
    for k, scope in enumerate(all_scopes):
        lines.extend(_scope_rules(k, scope, schema, keys))
    return "\n".join(lines) + "\n"


_grammars: dict[str, str] = {}  # a cache of built grammars, keyed by the schema's DDL text
MAX_CACHED = 64


def sql_grammar(schema: Schema) -> str:
    """The Lark grammar of queries over `schema` (built once per schema text)."""
    key = schema.to_ddl()
    if key not in _grammars:
        if len(_grammars) >= MAX_CACHED:
            _grammars.pop(next(iter(_grammars)))
        _grammars[key] = _build(schema)
    return _grammars[key]
