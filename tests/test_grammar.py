"""The schema-scoped SQL grammar and the engine's grammar-constrained decoding."""

import pytest
import torch

pytest.importorskip("llguidance")

from pipelines.engine import SamplingParams  # noqa: E402
from pipelines.engine.grammar import GrammarLogitsProcessor  # noqa: E402
from pipelines.engine.transformers_engine import TransformersEngine  # noqa: E402
from pipelines.sql.grammar import scopes, sql_grammar  # noqa: E402
from pipelines.sql.schema import Column, ForeignKey, Schema, Table  # noqa: E402

CONCERTS = Schema([
    Table("singer", [Column("Singer_ID", "INT", True), Column("Name", "TEXT"), Column("Country", "TEXT"),
                     Column("Age", "INT")]),
    Table("concert", [Column("concert_ID", "INT", True), Column("concert_Name", "TEXT"), Column("Year", "TEXT"),
                      Column("Stadium_ID", "INT")], [ForeignKey(["Stadium_ID"], "stadium", ["Stadium_ID"])]),
    Table("stadium", [Column("Stadium_ID", "INT", True), Column("Name", "TEXT"), Column("Capacity", "INT")]),
    Table("singer_in_concert", [Column("concert_ID", "INT"), Column("Singer_ID", "INT")],
          [ForeignKey(["Singer_ID"], "singer", ["Singer_ID"]), ForeignKey(["concert_ID"], "concert", ["concert_ID"])]),
    Table("order items", [Column("id", "INT"), Column("created at", "TIMESTAMP"), Column("total", "DECIMAL")]),
])


@pytest.fixture(scope="module")
def tokenizer(embedded_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_dir)


def accepts(tokenizer, sql: str, schema: Schema = CONCERTS) -> bool:
    """Does the grammar let a model write exactly `sql` and then end its turn?"""
    processor = GrammarLogitsProcessor(tokenizer, len(tokenizer), sql_grammar(schema), 1)
    matcher = processor.matchers[0]
    tokens = tokenizer.encode(sql, add_special_tokens=False) + [tokenizer.eos_token_id]
    return matcher.validate_tokens(tokens) == len(tokens)


@pytest.mark.parametrize("sql", [
    "SELECT count(*) FROM singer",
    "SELECT DISTINCT Country FROM singer WHERE Age > 20 ORDER BY Country",
    "select name, country from SINGER where country = 'France' and age between 20 and 30",
    "SELECT T2.Name , count(*) FROM concert AS T1 JOIN stadium AS T2 ON T1.Stadium_ID = T2.Stadium_ID "
    "GROUP BY T1.Stadium_ID HAVING count(*) > 1 ORDER BY count(*) DESC LIMIT 3",
    "SELECT T1.Name FROM singer AS T1 JOIN singer_in_concert AS T2 ON T1.Singer_ID = T2.Singer_ID "
    "JOIN concert AS T3 ON T2.concert_ID = T3.concert_ID WHERE T3.Year = '2014'",
    "SELECT Name FROM singer WHERE Singer_ID NOT IN (SELECT Singer_ID FROM singer_in_concert)",
    "SELECT Name FROM stadium EXCEPT SELECT T2.Name FROM concert AS T1 JOIN stadium AS T2 "
    "ON T1.Stadium_ID = T2.Stadium_ID",
    "SELECT s.Name FROM singer s JOIN singer_in_concert sic ON s.Singer_ID = sic.Singer_ID",
    "SELECT avg(Age), max(Age), min(Age) FROM singer WHERE Country LIKE '%land%';",
    "SELECT date_trunc('month', \"created at\") AS month, sum(total) FROM \"order items\" "
    "WHERE \"created at\" >= current_date - INTERVAL 30 DAY GROUP BY 1 ORDER BY 1",
    "SELECT year(\"created at\"), CAST(total AS INTEGER) FROM \"order items\" WHERE \"created at\" > DATE '2024-01-01'",
    "SELECT CASE WHEN Age > 30 THEN 'old' ELSE 'young' END FROM singer",
])
def test_accepts_the_queries_analysts_and_spider_write(tokenizer, sql):
    assert accepts(tokenizer, sql)


@pytest.mark.parametrize("sql", [
    # age is a column of singer, but T2 is concert here: the error the adapter makes most often
    "SELECT T2.Age FROM singer AS T1 JOIN concert AS T2 ON T1.Singer_ID = T2.concert_ID",
    "SELECT Name FROM concert",  # a column of another table
    "SELECT Nickname FROM singer",  # a column of no table
    "SELECT Name FROM singer WHERE Country = \"France\"",  # DuckDB reads a double-quoted word as a column
    "SELECT Name FROM performer",  # no such table
    "SELECT total FROM order items",  # a name that needs quotes
    "DROP TABLE singer",
    "SELECT Name FROM singer; DROP TABLE singer",
    # a join off the keys: concert and stadium join along Stadium_ID, not along their own keys
    "SELECT T2.Name FROM concert AS T1 JOIN stadium AS T2 ON T1.concert_ID = T2.Stadium_ID",
])
def test_refuses_what_would_fail_or_is_out_of_scope(tokenizer, sql):
    assert not accepts(tokenizer, sql)


def test_scopes_follow_foreign_keys_or_allow_any_pair_when_none_are_declared():
    pairs = {s.tables for s in scopes(CONCERTS) if len(s.tables) == 2}
    assert ("concert", "stadium") in pairs and ("stadium", "concert") in pairs
    assert ("singer", "stadium") not in pairs  # no key between them
    bare = Schema([Table("a", [Column("x", "INT")]), Table("b", [Column("y", "INT")])])
    assert {s.tables for s in scopes(bare) if len(s.tables) == 2} == {("a", "b"), ("b", "a")}


def test_joins_go_along_the_keys_where_keys_link_the_tables(tokenizer):
    shop = Schema([
        Table("customers", [Column("id", "INT", True), Column("name", "TEXT"), Column("country", "TEXT")]),
        Table("orders", [Column("id", "INT", True), Column("customer_id", "INT"), Column("total", "DECIMAL")],
              [ForeignKey(["customer_id"], "customers", ["id"])]),
        Table("notes", [Column("id", "INT", True), Column("text", "TEXT")]),
    ])
    for sql in ("SELECT c.name, sum(o.total) FROM customers AS c JOIN orders AS o ON c.id = o.customer_id "
                "GROUP BY c.name",
                "SELECT T1.name FROM customers AS T1 JOIN orders AS T2 ON T2.customer_id = T1.id AND T2.total > 5",
                # no key links notes to customers: a small schema still lets them join, on anything
                "SELECT T1.name FROM customers AS T1 JOIN notes AS T2 ON T1.name = T2.text"):
        assert accepts(tokenizer, sql, shop), sql
    # two tables' own keys are no join, however alike their names
    assert not accepts(tokenizer, "SELECT T1.name FROM customers AS T1 JOIN orders AS T2 ON T1.id = T2.id", shop)


def test_engine_output_follows_the_grammar(tiny_llama_dir):
    """A random model would write noise; with a grammar it can only write what the grammar allows."""
    engine = TransformersEngine(str(tiny_llama_dir))
    grammar = 'start: "SELECT " NUMBER " AS answer"\nNUMBER: /[1-9][0-9]?/\n'
    params = SamplingParams(max_new_tokens=24, grammar=grammar)
    messages = [{"role": "user", "content": "Give me a number"}]
    [[greedy]] = engine.generate([messages], params)
    streamed = engine.stream(messages, params)
    text = "".join(streamed)
    for generation in (greedy, streamed.generation):
        assert generation.grammar == "followed" and generation.finish_reason == "stop"
        assert generation.text.startswith("SELECT ") and generation.text.endswith(" AS answer")
    assert text == greedy.text
    samples = engine.generate([messages], SamplingParams(max_new_tokens=24, grammar=grammar, temperature=1.0, n=3,
                                                         seed=0))[0]
    assert len(samples) == 3 and all(s.text.endswith(" AS answer") for s in samples)


def test_a_dead_end_falls_back_to_free_decoding(tokenizer):
    processor = GrammarLogitsProcessor(tokenizer, len(tokenizer), 'start: "SELECT 1"\n', 1)
    scores = torch.zeros((1, len(tokenizer)))
    prompt = torch.tensor([[1, 2, 3]])
    masked = processor(prompt, scores.clone())
    assert torch.isinf(masked).sum() > 0 and processor.status == ["followed"]
    # A token the grammar never allowed (as if another processor had forced it): the matcher errors out.
    off_grammar = tokenizer.encode(" DROP", add_special_tokens=False)[0]
    free = processor(torch.tensor([[1, 2, 3, off_grammar]]), scores.clone())
    assert processor.status == ["fell back"] and not torch.isinf(free).any()
