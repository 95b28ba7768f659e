"""Value hints: frequent values and the values a question names, read through the database's own run()."""

import duckdb
import pytest

from pipelines.sql.databases import DuckDBDatabase, SchemaOnlyDatabase
from pipelines.sql.values import hint_lines, matching_values, question_phrases, sample_values, schema_with_values


@pytest.fixture(scope="module")
def orders(tmp_path_factory):
    path = tmp_path_factory.mktemp("values") / "orders.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE orders (id INTEGER, status VARCHAR, region VARCHAR, note VARCHAR, total DOUBLE)")
        rows = [(i, ["cancelled", "shipped", "shipped", "pending"][i % 4], ["europe", "asia"][i % 2],
                 "x" * 80 if i == 0 else None, i * 1.5) for i in range(40)]
        con.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", rows)
    return DuckDBDatabase(path)


def test_samples_are_the_most_frequent_short_values_of_text_columns(orders):
    samples = {(s.table, s.column): s.values for s in sample_values(orders)}
    assert samples[("orders", "status")][0] == "shipped" and len(samples[("orders", "status")]) == 3
    assert set(samples[("orders", "region")]) == {"europe", "asia"}
    assert ("orders", "note") not in samples  # only an 80-character value: too long to help
    assert all(column != "total" for _, column in samples)


def test_values_the_question_names_are_found_whatever_their_case(orders):
    matches = matching_values(orders, "How many Cancelled orders were there in Europe?")
    assert {(m.column, m.values) for m in matches} == {("status", ("cancelled",)), ("region", ("europe",))}
    assert matching_values(orders, "How many orders?") == []


def test_phrases_skip_common_words():
    phrases = question_phrases("Which singers are in the Netherlands?")
    assert "netherlands" in phrases and "the netherlands" in phrases and "in" not in phrases


def test_the_prompt_shows_matches_first_within_the_budget(orders):
    text = schema_with_values(orders, "total of cancelled orders")
    ddl, *hints = text.split("\n")
    assert ddl.startswith("CREATE TABLE orders")
    assert hints[0] == "-- Values matching the question: orders.status 'cancelled'"
    assert hints[1].startswith("-- Example values: orders.status 'shipped'")
    assert len(hint_lines(sample_values(orders), [], budget=30)) < 60  # the budget caps the samples
    pasted = SchemaOnlyDatabase("CREATE TABLE t (status VARCHAR);")
    assert schema_with_values(pasted, "cancelled") == pasted.schema.to_ddl()  # nothing to read: no hints


def test_quotes_in_values_are_escaped(tmp_path):
    path = tmp_path / "names.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE people (name VARCHAR)")
        con.execute("INSERT INTO people VALUES ('O''Brien')")
    database = DuckDBDatabase(path)
    assert "people.name 'O''Brien'" in schema_with_values(database, "Is o'brien here?")
