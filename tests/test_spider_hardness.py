"""Spider hardness: the official counting rules, and the sqlglot parser that feeds them for train questions."""

from __future__ import annotations

import pytest

from pipelines.spider.hardness import (
    HARDNESS_LEVELS, count_component1, count_component2, count_others, eval_hardness, example_hardness,
    hardness_agreement, parse_sql, query_hardness, UnsupportedSQL,
)
from tests.conftest import SPIDER_DIR

# Spider dev queries with the hardness the official code gives their official `sql` dicts.
OFFICIAL = [
    ("SELECT count(DISTINCT LOCATION) FROM shop", "easy"),
    ('SELECT Package_Option FROM TV_Channel WHERE series_name = "Sky Radio";', "easy"),
    ("SELECT other_student_details FROM Students ORDER BY other_student_details DESC", "easy"),
    ("SELECT max(Accelerate) ,  Cylinders FROM CARS_DATA GROUP BY Cylinders;", "medium"),
    ("SELECT first_name ,  birth_date FROM players WHERE country_code  =  'USA'", "medium"),
    ("SELECT Name ,  Population ,  LifeExpectancy FROM country WHERE Continent  =  \"Asia\" "
     "ORDER BY SurfaceArea DESC LIMIT 1", "hard"),
    ("SELECT avg(age) FROM Dogs WHERE dog_id IN ( SELECT dog_id FROM Treatments )", "hard"),
    ("SELECT name FROM Highschooler EXCEPT SELECT T2.name FROM Friend AS T1 JOIN Highschooler AS T2 "
     "ON T1.student_id  =  T2.id", "hard"),
    ("SELECT DISTINCT T1.Maker FROM CAR_MAKERS AS T1 JOIN MODEL_LIST AS T2 ON T1.Id  =  T2.Maker JOIN CAR_NAMES "
     "AS T3 ON T2.model  =  T3.model JOIN CARS_DATA AS T4 ON T3.MakeId  =  T4.id WHERE T4.year  =  '1970';", "extra"),
    ("SELECT DISTINCT T1.first_name ,  T1.last_name FROM Professionals AS T1 JOIN Treatments AS T2 "
     "WHERE cost_of_treatment  <  ( SELECT avg(cost_of_treatment) FROM Treatments )", "extra"),
    ("SELECT T2.name ,  T2.location FROM concert AS T1 JOIN stadium AS T2 ON T1.stadium_id  =  T2.stadium_id "
     "WHERE T1.Year  =  2014 INTERSECT SELECT T2.name ,  T2.location FROM concert AS T1 JOIN stadium AS T2 "
     "ON T1.stadium_id  =  T2.stadium_id WHERE T1.Year  =  2015", "extra"),
]


@pytest.mark.parametrize("query,level", OFFICIAL)
def test_parsed_hardness_matches_the_official(query, level):
    assert query_hardness(query) == level


def test_official_dict_counts():
    # "How many singers do we have?" exactly as dev.json stores it.
    sql = {"from": {"table_units": [["table_unit", 1]], "conds": []},
           "select": [False, [[3, [0, [0, 0, False], None]]]], "where": [], "groupBy": [], "having": [],
           "orderBy": [], "limit": None, "intersect": None, "union": None, "except": None}
    assert (count_component1(sql), count_component2(sql), count_others(sql)) == (0, 0, 0)
    assert eval_hardness(sql) == "easy"


def test_components():
    sql = parse_sql("SELECT a FROM t AS T1 JOIN u AS T2 ON T1.x = T2.x WHERE b LIKE '%z%' OR c = 1 "
                    "GROUP BY a ORDER BY a LIMIT 3")
    # where, group, order, limit, one join, one OR, one LIKE
    assert count_component1(sql) == 7
    assert count_component2(parse_sql("SELECT a FROM t WHERE b IN (SELECT b FROM u) UNION SELECT a FROM v")) == 2
    # A subquery in FROM is neither a join nor a nested query.
    assert count_component2(parse_sql("SELECT x FROM (SELECT a AS x FROM t)")) == 0
    # Only the top query's components count: the right side of a set operation is one nested query.
    assert count_component1(parse_sql("SELECT a FROM t UNION SELECT a FROM u WHERE b = 1 ORDER BY a LIMIT 1")) == 0


def test_official_quirks_are_kept():
    # count_others counts aggregates, select columns > 1, where conditions > 1, group by > 1.
    assert count_others(parse_sql("SELECT count(*), max(a) FROM t")) == 2
    # A NOT condition counts as an "aggregate" in WHERE (unit[0] is the NOT flag) ...
    assert count_others(parse_sql("SELECT count(*) FROM t WHERE a NOT IN (SELECT a FROM u)")) == 1
    assert count_others(parse_sql("SELECT count(*) FROM t WHERE a IN (SELECT a FROM u)")) == 0
    # ... and so does every AND/OR connector in HAVING, while the aggregate inside HAVING does not.
    assert count_others(parse_sql("SELECT a FROM t GROUP BY a HAVING count(*) > 1 AND sum(b) > 2")) == 0
    assert count_others(parse_sql("SELECT count(*) FROM t GROUP BY a HAVING count(*) > 1 AND sum(b) > 2")) == 1
    assert count_others(parse_sql("SELECT count(*) FROM t GROUP BY a HAVING count(*) > 1")) == 0
    # ORDER BY aggregates count.
    assert count_others(parse_sql("SELECT count(*) FROM t GROUP BY a ORDER BY count(*)")) == 1
    # x IS NOT NULL is not a NOT condition for process_sql.
    assert count_others(parse_sql("SELECT count(*) FROM t WHERE a IS NOT NULL")) == 0


def test_unparseable_queries():
    with pytest.raises(UnsupportedSQL):
        parse_sql("SELECT 1; SELECT 2")
    with pytest.raises(UnsupportedSQL):
        parse_sql("DELETE FROM t")

    class Example:
        sql = None
        query = "DELETE FROM t"

    assert example_hardness(Example()) == ("extra", "unparsed")


@pytest.mark.skipif(not (SPIDER_DIR / "dev.json").is_file(), reason="the Spider copy is not here")
def test_agreement_with_every_official_dev_dict():
    from pipelines.spider.data import load_split

    dev = load_split(SPIDER_DIR, "dev")
    result = hardness_agreement(dev)
    assert result["compared"] == 1034
    assert result["agreement"] == 1.0, result["disagreements"][:5]
    # The published dev distribution.
    assert {level: sum(row.values()) for level, row in result["confusion"].items()} == {
        "easy": 248, "medium": 446, "hard": 174, "extra": 166}
    assert set(result["confusion"]) == set(HARDNESS_LEVELS)
