import datetime as dt
import decimal

import duckdb
import pytest

from pipelines.errors import BadInput
from pipelines.profiles import builtin_profiles, resolve_profile
from pipelines.sql.chart import ChartSpec, choose_chart
from pipelines.sql.demo_data import build_shop


def test_chart_choice():
    day = dt.date(2026, 1, 1)
    assert choose_chart(["month", "revenue"], [[day, decimal.Decimal("1.5")], [day, 2]]) == ChartSpec("line", "month", "revenue")
    assert choose_chart(["country", "n"], [["CA", 3], ["US", 5]]) == ChartSpec("bar", "country", "n")
    assert choose_chart(["id", "country", "total"], [[1, "CA", 3.0], [2, "US", None]]) == ChartSpec("bar", "country", "total")
    assert choose_chart(["n"], [[1], [2]]) is None  # nothing to plot against
    assert choose_chart(["country", "n"], [["CA", 3]]) is None  # a single row
    assert choose_chart(["a", "b"], [["x", "y"], ["z", "w"]]) is None  # no numbers
    assert choose_chart(["c", "n"], [[str(i), i] for i in range(500)]) is None  # too many bars


def test_shop_is_reproducible_and_anchored(tmp_path):
    anchor = dt.date(2026, 3, 31)
    first = build_shop(tmp_path / "a.duckdb", anchor=anchor, customers=40, products=8, orders=300)
    second = build_shop(tmp_path / "b.duckdb", anchor=anchor, customers=40, products=8, orders=300)
    query = "SELECT * FROM orders ORDER BY id"
    with duckdb.connect(str(first), read_only=True) as a, duckdb.connect(str(second), read_only=True) as b:
        assert a.execute(query).fetchall() == b.execute(query).fetchall()
        newest, = a.execute("SELECT max(created_at)::DATE FROM orders").fetchone()
        assert anchor - dt.timedelta(days=3) <= newest <= anchor
        # totals are the sums of their items
        mismatched, = a.execute("""
            SELECT count(*) FROM orders o JOIN (SELECT order_id, sum(quantity * unit_price) s FROM order_items
            GROUP BY order_id) i ON i.order_id = o.id WHERE abs(o.total - i.s) > 0.01""").fetchone()
        assert mismatched == 0


def test_profiles_and_overrides(monkeypatch):
    assert builtin_profiles()["gpu"].sql_model == "meta-llama/Llama-3.1-8B-Instruct"
    assert builtin_profiles()["gpu"].sql_adapter == "pyloxsystems/sql-spider-llama-3.1-8b-lora"
    assert builtin_profiles()["cpu"].sql_model == "embedded:smollm2"
    monkeypatch.setenv("VOXQL_SQL_MODEL", "/models/mine")
    monkeypatch.setenv("VOXQL_SQL_ADAPTER", "none")
    profile = resolve_profile("gpu")
    assert (profile.sql_model, profile.sql_adapter) == ("/models/mine", None)
    assert resolve_profile("gpu", sql_model="flag-wins").sql_model == "flag-wins"
    monkeypatch.setenv("VOXQL_PROFILE", "gpu")
    assert resolve_profile().name == "gpu"
    with pytest.raises(BadInput, match="unknown profile"):
        resolve_profile("tpu")
