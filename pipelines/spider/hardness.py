"""Spider hardness (easy / medium / hard / extra), as the official evaluation computes it.

`eval_hardness(sql)` reimplements `Evaluator.eval_hardness` of taoyds/test-suite-sql-eval (evaluation.py), with its
helpers `count_component1`, `count_component2` and `count_others`, on the official parsed-SQL dict (the `sql`
field of dev.json, produced by Spider's process_sql.py). Its quirks are kept on purpose, because they decide
the official buckets:
- "aggregations" in WHERE and HAVING are counted by `unit[0] != 0` over the condition list, which for a
  condition is its NOT flag (`x NOT IN ...` counts) and for an `and`/`or` connector in HAVING is always true;
  an aggregate inside a HAVING or WHERE condition does not count;
- only top-level nesting counts (subqueries in WHERE/HAVING/ON values, plus one INTERSECT/UNION/EXCEPT);
  a subquery in FROM counts as neither a join nor a nested query;
- joins are the number of FROM table units minus one.

train_spider.json has no `sql` field, so `parse_sql(query)` builds the same dict shape from sqlglot's parse of
the SQLite query. Where process_sql and sqlglot see a query differently (documented deviations):
- in `A UNION B UNION C` process_sql nests right (A with union = `B UNION C`); sqlglot nests left; both give the
  top query A one set operation, which is all the hardness reads;
- ORDER BY / LIMIT after a set operation belong to its last query (as in process_sql), not to the top;
- `x IS NOT NULL` has NOT flag false (the NOT follows IS, as process_sql reads it); any other NOT is true;
- a select item counts as an aggregate when its leftmost operand is max/min/count/sum/avg (process_sql reads
  the aggregate keyword before the value unit); other functions are not aggregates there;
- column ids are the column's SQL text, not tables.json indices (the hardness never reads them);
- comma joins (`FROM a, b`) are table units here; process_sql could not parse them (Spider's gold has none);
- an ON clause keeps its conditions up to the first OR, as dev.json's official dicts show (4 dev queries with
  `ON a = b OR c = d` hold only `a = b`).
`hardness_agreement(examples)` measures how often the two agree on dev.json.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlglot
from sqlglot import exp

HARDNESS_LEVELS = ("easy", "medium", "hard", "extra")

# process_sql.py's tables.
WHERE_OPS = ("not", "between", "=", ">", "<", ">=", "<=", "!=", "in", "like", "is", "exists")
UNIT_OPS = ("none", "-", "+", "*", "/")
AGG_OPS = ("none", "max", "min", "count", "sum", "avg")


# -- the official counting, on the official dict ---------------------------------------------------------------
def get_nested_sql(sql: dict) -> list[dict]:
    nested = []
    for cond_unit in sql["from"]["conds"][::2] + sql["where"][::2] + sql["having"][::2]:
        if type(cond_unit[3]) is dict:
            nested.append(cond_unit[3])
        if type(cond_unit[4]) is dict:
            nested.append(cond_unit[4])
    for key in ("intersect", "except", "union"):
        if sql[key] is not None:
            nested.append(sql[key])
    return nested


def has_agg(unit) -> bool:
    return unit[0] != AGG_OPS.index("none")


def count_agg(units) -> int:
    return len([unit for unit in units if has_agg(unit)])


def count_component1(sql: dict) -> int:
    count = 0
    if len(sql["where"]) > 0:
        count += 1
    if len(sql["groupBy"]) > 0:
        count += 1
    if len(sql["orderBy"]) > 0:
        count += 1
    if sql["limit"] is not None:
        count += 1
    if len(sql["from"]["table_units"]) > 0:  # JOIN
        count += len(sql["from"]["table_units"]) - 1
    ao = sql["where"][1::2] + sql["having"][1::2] + sql["from"]["conds"][1::2]
    count += len([token for token in ao if token == "or"])
    cond_units = sql["where"][::2] + sql["having"][::2] + sql["from"]["conds"][::2]
    count += len([cond_unit for cond_unit in cond_units if cond_unit[1] == WHERE_OPS.index("like")])
    return count


def count_component2(sql: dict) -> int:
    return len(get_nested_sql(sql))


def count_others(sql: dict) -> int:
    count = 0
    agg_count = count_agg(sql["select"][1])
    agg_count += count_agg(sql["where"][::2])
    agg_count += count_agg(sql["groupBy"])
    if len(sql["orderBy"]) > 0:
        agg_count += count_agg([unit[1] for unit in sql["orderBy"][1] if unit[1]]
                               + [unit[2] for unit in sql["orderBy"][1] if unit[2]])
    agg_count += count_agg(sql["having"])
    if agg_count > 1:
        count += 1
    if len(sql["select"][1]) > 1:
        count += 1
    if len(sql["where"]) > 1:
        count += 1
    if len(sql["groupBy"]) > 1:
        count += 1
    return count


def eval_hardness(sql: dict) -> str:
    comp1, comp2, others = count_component1(sql), count_component2(sql), count_others(sql)
    if comp1 <= 1 and others == 0 and comp2 == 0:
        return "easy"
    if (others <= 2 and comp1 <= 1 and comp2 == 0) or (comp1 <= 2 and others < 2 and comp2 == 0):
        return "medium"
    if ((others > 2 and comp1 <= 2 and comp2 == 0) or (2 < comp1 <= 3 and others <= 2 and comp2 == 0)
            or (comp1 <= 1 and others == 0 and comp2 <= 1)):
        return "hard"
    return "extra"


# -- sqlglot -> the official dict shape -------------------------------------------------------------------------------
class UnsupportedSQL(ValueError):
    """The query is not one SELECT-like statement that the hardness rules can read."""


def query_hardness(query: str) -> str:
    """Hardness of a SQLite query, parsed with sqlglot (for questions without an official `sql` dict)."""
    return eval_hardness(parse_sql(query))


def example_hardness(example) -> tuple[str, str]:
    """(hardness, source): the official `sql` dict when the example has one ("official"), else the parse
    ("parsed"). A query neither can read is "extra" with source "unparsed" (counted, never dropped)."""
    if getattr(example, "sql", None):
        try:
            return eval_hardness(example.sql), "official"
        except (KeyError, IndexError, TypeError):
            pass
    try:
        return query_hardness(example.query), "parsed"
    except UnsupportedSQL:
        return "extra", "unparsed"


def parse_sql(query: str) -> dict:
    """The official parsed-SQL dict shape (as in dev.json's `sql`) for one SQLite query, via sqlglot."""
    try:
        statements = [s for s in sqlglot.parse(query, read="sqlite") if s is not None]
    except (sqlglot.errors.ParseError, sqlglot.errors.TokenError) as error:
        raise UnsupportedSQL(f"could not parse: {str(error).splitlines()[0][:200]}") from None
    if len(statements) != 1:
        raise UnsupportedSQL(f"expected one statement, found {len(statements)}")
    return _query_dict(statements[0])


def _empty_sql() -> dict:
    return {"select": [False, []], "from": {"table_units": [], "conds": []}, "where": [], "groupBy": [],
            "having": [], "orderBy": [], "limit": None, "intersect": None, "union": None, "except": None}


_SET_OPS = {exp.Union: "union", exp.Intersect: "intersect", exp.Except: "except"}


def _query_dict(node: exp.Expression) -> dict:
    while isinstance(node, (exp.Subquery, exp.Paren)) and isinstance(node.this, exp.Query):
        node = node.this
    if isinstance(node, exp.With):
        raise UnsupportedSQL("WITH is outside the official SQL grammar")
    if type(node) in _SET_OPS:
        # Flatten A op1 B op2 C (sqlglot nests left) and rebuild process_sql's right nesting: A with op1 = (B op2 C).
        parts: list[exp.Expression] = []
        ops: list[str] = []
        _flatten_set_op(node, parts, ops)
        dicts = [_query_dict(part) for part in parts]
        _apply_modifiers(dicts[-1], node)  # ORDER BY / LIMIT of the set operation: its last query's, as process_sql
        for index in range(len(dicts) - 2, -1, -1):
            dicts[index][ops[index]] = dicts[index + 1]
        return dicts[0]
    if not isinstance(node, exp.Select):
        raise UnsupportedSQL(f"not a SELECT query ({type(node).__name__})")
    return _select_dict(node)


def _flatten_set_op(node: exp.Expression, parts: list, ops: list) -> None:
    left = node.this
    if type(left) in _SET_OPS and not _has_modifiers(left):
        _flatten_set_op(left, parts, ops)
    else:
        parts.append(left)
    ops.append(_SET_OPS[type(node)])
    parts.append(node.expression)


def _has_modifiers(node: exp.Expression) -> bool:
    return type(node) in _SET_OPS and bool(node.args.get("order") or node.args.get("limit"))


def _apply_modifiers(target: dict, node: exp.Expression) -> None:
    order, limit = node.args.get("order"), node.args.get("limit")
    if order is not None:
        target["orderBy"] = _order_by(order)
    if limit is not None:
        target["limit"] = _limit(limit)


def _select_dict(select: exp.Select) -> dict:
    sql = _empty_sql()
    sql["select"] = [bool(select.args.get("distinct")), [_select_item(item) for item in select.expressions]]
    from_ = select.args.get("from_") or select.args.get("from")
    if from_ is not None:
        sql["from"]["table_units"].append(_table_unit(from_.this))
    for join in select.args.get("joins") or []:
        sql["from"]["table_units"].append(_table_unit(join.this))
        on = join.args.get("on")
        if on is not None:
            if sql["from"]["conds"]:
                sql["from"]["conds"].append("and")
            conds = _conditions(on)
            if "or" in conds:  # dev.json's dicts keep an ON clause only up to its first OR (4 dev queries)
                conds = conds[:conds.index("or")]
            sql["from"]["conds"].extend(conds)
    where = select.args.get("where")
    if where is not None:
        sql["where"] = _conditions(where.this)
    group = select.args.get("group")
    if group is not None:
        sql["groupBy"] = [_col_unit(e) for e in group.expressions]
    having = select.args.get("having")
    if having is not None:
        sql["having"] = _conditions(having.this)
    _apply_modifiers(sql, select)
    return sql


def _table_unit(node: exp.Expression) -> list:
    if isinstance(node, exp.Subquery) or isinstance(node, exp.Query):
        return ["sql", _query_dict(node)]
    return ["table_unit", node.sql(dialect="sqlite")]


def _order_by(order: exp.Order) -> list:
    items = order.expressions
    direction = "desc" if items and items[0].args.get("desc") else "asc"
    return [direction, [_val_unit(item.this if isinstance(item, exp.Ordered) else item) for item in items]]


def _limit(limit: exp.Expression):
    value = limit.args.get("expression") or limit.this
    try:
        return int(value.name) if value is not None else 0
    except ValueError:
        return value.sql(dialect="sqlite")


_AGG_CLASSES = {exp.Max: "max", exp.Min: "min", exp.Count: "count", exp.Sum: "sum", exp.Avg: "avg"}
_ARITHMETIC = {exp.Sub: "-", exp.Add: "+", exp.Mul: "*", exp.Div: "/"}


def _strip(node: exp.Expression) -> exp.Expression:
    while isinstance(node, (exp.Alias, exp.Paren)):
        node = node.this
    return node


def _agg_id(node: exp.Expression) -> int:
    node = _strip(node)
    return AGG_OPS.index(_AGG_CLASSES[type(node)]) if type(node) in _AGG_CLASSES else 0


def _leftmost(node: exp.Expression) -> exp.Expression:
    node = _strip(node)
    while type(node) in _ARITHMETIC:
        node = _strip(node.this)
    return node


def _col_unit(node: exp.Expression) -> list:
    node = _strip(node)
    agg = _agg_id(node)
    inner = node.this if agg else node
    distinct = isinstance(inner, exp.Distinct)
    return [agg, _strip(inner).sql(dialect="sqlite"), distinct]


def _val_unit(node: exp.Expression) -> list:
    node = _strip(node)
    if type(node) in _ARITHMETIC:
        return [UNIT_OPS.index(_ARITHMETIC[type(node)]), _col_unit(node.this), _col_unit(node.expression)]
    return [0, _col_unit(node), None]


def _select_item(node: exp.Expression) -> list:
    """(agg_id, val_unit): process_sql reads a leading aggregate keyword as the item's aggregate."""
    node = _strip(node)
    leftmost = _leftmost(node)
    agg = _agg_id(leftmost)
    if agg and leftmost is node:
        return [agg, _val_unit(node.this)]
    return [agg, _val_unit(node)]


_COMPARISONS = {exp.EQ: "=", exp.GT: ">", exp.LT: "<", exp.GTE: ">=", exp.LTE: "<=", exp.NEQ: "!=",
                exp.Like: "like", exp.In: "in", exp.Between: "between", exp.Is: "is", exp.Exists: "exists"}


def _conditions(node: exp.Expression) -> list:
    """process_sql's flat condition list: [cond_unit, 'and' | 'or', cond_unit, ...], left to right."""
    if isinstance(node, exp.Paren):
        return _conditions(node.this)
    if isinstance(node, (exp.And, exp.Or)):
        return [*_conditions(node.this), "and" if isinstance(node, exp.And) else "or", *_conditions(node.expression)]
    return [_cond_unit(node)]


def _value(node: exp.Expression | None):
    if node is None:
        return None
    inner = _strip(node) if not isinstance(node, exp.Subquery) else node
    if isinstance(inner, (exp.Subquery, exp.Query)):
        return _query_dict(inner)
    return inner.sql(dialect="sqlite")


def _cond_unit(node: exp.Expression) -> list:
    not_op = False
    if isinstance(node, exp.Not):
        node = _strip(node.this)
        not_op = not isinstance(node, exp.Is)  # `x IS NOT NULL`: process_sql reads NOT after IS, not as the flag
    op = _COMPARISONS.get(type(node))
    if op is None:  # a bare value or function used as a condition: process_sql has no such unit
        return [not_op, WHERE_OPS.index("="), _val_unit(node), None, None]
    if isinstance(node, exp.Exists):
        return [not_op, WHERE_OPS.index("exists"), [0, [0, "", False], None], _value(node.this), None]
    if isinstance(node, exp.Between):
        return [not_op, WHERE_OPS.index(op), _val_unit(node.this), _value(node.args.get("low")),
                _value(node.args.get("high"))]
    if isinstance(node, exp.In):
        query = node.args.get("query")
        if query is not None:
            value = _value(query)
        else:
            values = node.expressions
            listed = ", ".join(v.sql(dialect="sqlite") for v in values)
            value = _value(values[0]) if len(values) == 1 else f"({listed})"
        return [not_op, WHERE_OPS.index(op), _val_unit(node.this), value, None]
    return [not_op, WHERE_OPS.index(op), _val_unit(node.this), _value(node.expression), None]


# -- agreement with the official dicts ---------------------------------------------------------------------------------
def hardness_agreement(examples: Iterable) -> dict:
    """Compare the parsed hardness with the official one on examples that carry the official `sql` dict."""
    total = agree = unparsed = 0
    confusion: dict[str, dict[str, int]] = {}
    disagreements: list[dict] = []
    for example in examples:
        if not getattr(example, "sql", None):
            continue
        total += 1
        official = eval_hardness(example.sql)
        try:
            parsed = query_hardness(example.query)
        except UnsupportedSQL:
            parsed, unparsed = "unparsed", unparsed + 1
        confusion.setdefault(official, {}).setdefault(parsed, 0)
        confusion[official][parsed] += 1
        if parsed == official:
            agree += 1
        else:
            disagreements.append({"index": example.index, "query": example.query, "official": official,
                                  "parsed": parsed})
    return {"compared": total, "agree": agree, "agreement": agree / total if total else None,
            "unparsed": unparsed, "confusion": confusion, "disagreements": disagreements}
