"""The execution-match comparator: the official test-suite rules, case by case."""

from __future__ import annotations

import sqlite3

import pytest

from pipelines.spider.exec_match import exec_match, order_matters, postprocess, remove_distinct, result_eq
from pipelines.spider.tiny import build_tiny_spider


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return build_tiny_spider(tmp_path_factory.mktemp("tiny-spider")) / "database" / "shop" / "shop.sqlite"


# -- result_eq -----------------------------------------------------------------------------------------------------
def test_row_order_counts_only_when_asked():
    assert result_eq([(1,), (2,)], [(2,), (1,)], order_matters=False)
    assert not result_eq([(1,), (2,)], [(2,), (1,)], order_matters=True)
    assert result_eq([(1,), (2,)], [(1,), (2,)], order_matters=True)


def test_duplicates_are_a_multiset():
    assert not result_eq([(1,), (1,), (2,)], [(1,), (2,), (2,)], order_matters=False)
    assert not result_eq([(1,), (1,)], [(1,)], order_matters=False)
    assert result_eq([(1,), (2,), (1,)], [(1,), (1,), (2,)], order_matters=False)


def test_columns_may_be_permuted_but_rows_stay_whole():
    assert result_eq([(1, "a"), (2, "b")], [("a", 1), ("b", 2)], order_matters=False)
    assert result_eq([(1, "a"), (2, "b")], [("a", 1), ("b", 2)], order_matters=True)
    # Same column value sets, but the pairing differs: no permutation fixes that.
    assert not result_eq([(1, "a"), (2, "b")], [("b", 1), ("a", 2)], order_matters=False)
    # More than 3 columns takes the pruned search.
    gold = [(1, 2, 3, 4, 5), (6, 7, 8, 9, 10)]
    assert result_eq(gold, [(5, 4, 3, 2, 1), (10, 9, 8, 7, 6)], order_matters=True)
    assert not result_eq(gold, [(5, 4, 3, 2, 1), (10, 9, 8, 6, 7)], order_matters=True)
    assert result_eq([(1, 1, 2, 2)], [(2, 1, 2, 1)], order_matters=False)


def test_shapes_and_empty_results():
    assert result_eq([], [], order_matters=False)
    assert not result_eq([(1,)], [], order_matters=False)
    assert not result_eq([(1,)], [(1, 1)], order_matters=False)
    assert not result_eq([(1,)], [(1,), (1,)], order_matters=False)


def test_nulls_and_floats_compare_as_python_values():
    assert result_eq([(None, 1)], [(1, None)], order_matters=False)
    assert not result_eq([(None,)], [(0,)], order_matters=False)
    assert result_eq([(1,)], [(1.0,)], order_matters=False)  # 1 == 1.0, as in the official code
    assert not result_eq([(0.30000000000000004,)], [(0.3,)], order_matters=False)  # no rounding
    assert not result_eq([("1",)], [(1,)], order_matters=False)  # text is not a number


# -- query processing ----------------------------------------------------------------------------------------------
def test_distinct_is_removed_everywhere_but_inside_quotes():
    assert remove_distinct("SELECT DISTINCT a FROM t").split() == ["SELECT", "a", "FROM", "t"]
    assert "distinct" not in remove_distinct("select count(distinct a) from t").lower()
    kept = "SELECT distinct_count, \"distinct\", 'distinct' FROM t WHERE x = 'a distinct b'"
    assert remove_distinct(kept) == kept


def test_postprocess_and_order_rule():
    assert postprocess("a > = 1 AND b < = 2 AND c ! = 3") == "a >= 1 AND b <= 2 AND c != 3"
    assert order_matters("SELECT a FROM t ORDER BY a")
    assert order_matters("select a from t order by a")
    assert not order_matters("SELECT max(a) FROM t")


# -- whole questions on a database -----------------------------------------------------------------------------------
def test_same_answer_different_sql_is_right(shop):
    assert exec_match(shop, "SELECT COUNT(id) FROM customers", "SELECT count(*) FROM customers").correct
    assert exec_match(shop, "SELECT city, name FROM customers", "SELECT name, city FROM customers").correct


def test_distinct_removed_from_both_by_default(shop):
    gold = "SELECT DISTINCT city FROM customers"
    assert exec_match(shop, "SELECT city FROM customers", gold).correct  # the official default
    assert not exec_match(shop, "SELECT city FROM customers", gold, keep_distinct=True).correct


def test_order_by_in_gold_makes_order_count(shop):
    gold = "SELECT name FROM customers ORDER BY id DESC"
    assert not exec_match(shop, "SELECT name FROM customers ORDER BY id", gold).correct
    assert exec_match(shop, "SELECT name FROM customers ORDER BY id", "SELECT name FROM customers").correct


def test_errors_are_wrong(shop):
    gold = "SELECT count(*) FROM customers"
    for predicted in (None, "", "SELEC count(*) FROM customers", "SELECT count(*) FROM nowhere",
                      "SELECT 1; SELECT 2"):
        result = exec_match(shop, predicted, gold)
        assert not result.correct and result.error and result.gold_error is None


def test_timeout_is_wrong(shop):
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    result = exec_match(shop, endless, "SELECT count(*) FROM customers", timeout_s=0.3)
    assert not result.correct and result.error.startswith("QueryTimeout")


def test_a_runaway_prediction_is_cut_at_gold_length_plus_one(shop):
    cross = "SELECT a.id FROM orders a, orders b, orders c, orders d, orders e, orders f, orders g"
    assert not exec_match(shop, cross, "SELECT id FROM orders").correct


def test_predictions_cannot_write(shop):
    for predicted in ("DELETE FROM customers", "DROP TABLE orders", "ATTACH 'x.db' AS x",
                      "PRAGMA writable_schema = 1"):
        assert not exec_match(shop, predicted, "SELECT count(*) FROM customers").correct
    with sqlite3.connect(shop) as con:
        assert con.execute("SELECT count(*) FROM customers").fetchone() == (4,)
        assert con.execute("SELECT count(*) FROM orders").fetchone() == (5,)


def test_a_failing_gold_is_reported_not_raised(shop):
    result = exec_match(shop, "SELECT 1", "SELECT * FROM nowhere")
    assert not result.correct and result.gold_error
