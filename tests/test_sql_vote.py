"""Choosing among candidates that ran (pipelines/sql/vote.py), on the real shop database through the app's sandbox."""

import duckdb
import pytest

from pipelines.sql.databases import DuckDBDatabase
from pipelines.sql.pipeline import ask, vote_on_candidates
from pipelines.sql.vote import QuestionCues, grounding, question_cues
from tests.test_sql_pipeline import _voting_engine


@pytest.fixture(scope="module")
def shop(shop_db):
    return DuckDBDatabase(shop_db)


def test_a_query_that_uses_the_value_the_question_names_beats_a_majority_that_ignores_it(shop):
    everyone = "SELECT count(*) FROM customers"
    france = "SELECT count(*) FROM customers WHERE country = 'France'"
    answer = vote_on_candidates("How many customers are in France?", shop, [everyone, everyone, france, everyone])
    assert answer.ok and answer.rows == [[5]] and answer.vote["chosen"] == "sample 2"
    assert answer.vote["votes"] == 1 and answer.vote["grounding"] == 2  # the value, and its column


def test_the_app_path_chooses_the_same_way(shop):
    """Through ask(): the greedy reply and the samples come from the engine, the choice from vote.choose."""
    everyone = "SELECT count(*) FROM customers"
    engine = _voting_engine(everyone, [everyone, "SELECT count(*) FROM customers WHERE country = 'France'"])
    answer = ask("How many customers are in France?", shop, engine, candidates=3, max_retries=0, constrain=False)
    assert answer.rows == [[5]] and answer.vote["chosen"] == "sample 2"


def test_a_string_the_column_never_holds_is_a_defect(shop):
    capitalised = "SELECT count(*) FROM orders WHERE status = 'Cancelled'"  # the data says 'cancelled'
    answer = vote_on_candidates("How many orders were cancelled?", shop,
                                [capitalised, "SELECT count(*) FROM orders WHERE status = 'cancelled'"])
    assert answer.rows == [[22]] and answer.vote["chosen"] == "sample 1" and answer.vote["clean_votes"] == 1


def test_a_join_off_the_foreign_keys_is_a_defect(shop):
    question = "How many orders does each customer have?"
    off_key = ("SELECT c.name, count(*) FROM customers AS c JOIN orders AS o ON o.id = c.id "
               "GROUP BY c.name ORDER BY c.name")
    keyed = ("SELECT c.name, count(*) FROM customers AS c JOIN orders AS o ON o.customer_id = c.id "
             "GROUP BY c.name ORDER BY c.name")
    answer = vote_on_candidates(question, shop, [off_key, keyed])
    assert answer.vote["chosen"] == "sample 1" and answer.vote["votes"] == 1
    assert vote_on_candidates(question, shop, [off_key, off_key]).vote["clean_votes"] == 0


def test_the_vote_joins_along_the_same_keys_as_the_grammar(tmp_path):
    """A key-like column of the same name is a key the schema forgot to declare, for the vote as for the grammar:
    joining those two tables on anything else (here, equal names) is a defect."""
    path = tmp_path / "league.duckdb"
    with duckdb.connect(str(path)) as connection:
        connection.execute("""
            CREATE TABLE teams (team_code VARCHAR PRIMARY KEY, name VARCHAR);
            CREATE TABLE players (id INTEGER PRIMARY KEY, team_code VARCHAR, name VARCHAR);
            CREATE TABLE goals (id INTEGER PRIMARY KEY, player_id INTEGER REFERENCES players(id));
            INSERT INTO teams VALUES ('RED', 'Reds'), ('BLU', 'Blues');
            INSERT INTO players VALUES (1, 'RED', 'Reds'), (2, 'BLU', 'Ann');
            INSERT INTO goals VALUES (1, 1), (2, 2);""")
    league = DuckDBDatabase(path)
    question = "Which team does each player play for?"
    on_names = "SELECT p.id, t.name FROM players AS p JOIN teams AS t ON p.name = t.name"
    on_key = "SELECT p.id, t.name FROM players AS p JOIN teams AS t ON p.team_code = t.team_code"
    answer = vote_on_candidates(question, league, [on_names, on_key])
    assert answer.vote["chosen"] == "sample 1" and answer.vote["clean_votes"] == 1


def test_any_value_without_a_group_by_is_a_defect(shop):
    """The adapter writes `SELECT ANY_VALUE(x), count(*)` (one arbitrary row's x beside a count of all rows)."""
    arbitrary = "SELECT ANY_VALUE(country), count(*) FROM customers"
    grouped = "SELECT ANY_VALUE(country), count(*) FROM customers GROUP BY country ORDER BY 2 DESC LIMIT 1"
    answer = vote_on_candidates("Which country has the most customers?", shop, [arbitrary, grouped])
    assert answer.vote["chosen"] == "sample 1" and answer.vote["clean_votes"] == 1
    assert vote_on_candidates("Anything?", shop, [arbitrary]).vote["clean_votes"] == 0


def test_a_negated_question_prefers_a_negated_query(shop):
    answer = vote_on_candidates("How many orders are not completed?", shop, [
        "SELECT count(*) FROM orders WHERE status = 'completed'",
        "SELECT count(*) FROM orders WHERE status <> 'completed'"])
    assert answer.rows == [[130]] and answer.vote["chosen"] == "sample 1"


def test_a_question_that_asks_for_a_total_prefers_a_sum(shop):
    question = "Total revenue from customers in France?"
    assert question_cues(question, shop).aggregates == {"sum"}
    assert question_cues("What is the total number of orders?", shop).aggregates == frozenset()  # a count
    assert question_cues("Average order value?", shop).aggregates == {"avg"}
    orders = "FROM customers AS c JOIN orders AS o ON c.id = o.customer_id WHERE c.country = 'France'"
    answer = vote_on_candidates(question, shop, [f"SELECT count(*) {orders}", f"SELECT count(*) {orders}",
                                                 f"SELECT sum(o.total) {orders}"])
    assert answer.vote["chosen"] == "sample 2" and answer.vote["grounding"] == 3  # France, its column, the sum


def test_votes_decide_between_equally_grounded_results_and_the_greedy_reply_breaks_ties(shop):
    one, other = "SELECT 1 FROM customers LIMIT 1", "SELECT 2 FROM customers LIMIT 1"
    assert vote_on_candidates("Anything?", shop, [one, other, other]).vote["chosen"] == "sample 1"
    assert vote_on_candidates("Anything?", shop, [one, other]).vote["chosen"] == "greedy"


def test_when_nothing_runs_the_greedy_error_is_the_answer(shop):
    answer = vote_on_candidates("Anything?", shop, ["SELECT nothing FROM nowhere", None])
    assert not answer.ok and answer.vote == {**answer.vote, "executed": 0, "votes": 0, "chosen": "greedy"}
    assert "nowhere" in answer.error


def test_grounding_counts_values_numbers_and_negation(shop):
    cues = question_cues("Which customers from France have an id over 40 and no orders?", shop)
    assert cues.negated and cues.numbers == {"40"}
    assert [(v.table, v.column, v.values) for v in cues.values] == [("customers", "country", ("France",))]
    assert grounding("SELECT name FROM customers WHERE country = 'france' AND id > 40 AND NOT id IN "
                     "(SELECT customer_id FROM orders)", cues) == 4
    assert grounding("SELECT name FROM customers", cues) == 0
    assert grounding(None, QuestionCues((), frozenset(), False)) == 0
