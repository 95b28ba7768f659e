"""A tiny Spider in the official layout, built from code: for tests and smoke runs without the real dataset.

    build_tiny_spider(folder) -> folder with dev.json, train_spider.json, tables.json and
    database/{shop,school}/<db_id>.sqlite; the third database, `ghost`, is in tables.json only (its questions
    are the ones an evaluation must count as skipped, like wta_1 in the real dev set).

Questions cover every hardness level, ORDER BY, DISTINCT, NULLs and floats. Only the first dev question carries
an official-style `sql` dict (hand-written in process_sql.py's format), so both hardness sources are exercised.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

TABLES = [
    {
        "db_id": "shop",
        "table_names_original": ["customers", "orders"],
        "table_names": ["customers", "orders"],
        "column_names_original": [[-1, "*"], [0, "id"], [0, "name"], [0, "city"], [0, "age"],
                                  [1, "id"], [1, "customer_id"], [1, "amount"], [1, "status"]],
        "column_names": [[-1, "*"], [0, "id"], [0, "name"], [0, "city"], [0, "age"],
                         [1, "id"], [1, "customer id"], [1, "amount"], [1, "status"]],
        "column_types": ["text", "number", "text", "text", "number", "number", "number", "number", "text"],
        "primary_keys": [1, 5],
        "foreign_keys": [[6, 1]],
    },
    {
        "db_id": "school",
        "table_names_original": ["students", "grades"],
        "table_names": ["students", "grades"],
        "column_names_original": [[-1, "*"], [0, "student_id"], [0, "name"], [0, "year"],
                                  [1, "student_id"], [1, "course"], [1, "score"]],
        "column_names": [[-1, "*"], [0, "student id"], [0, "name"], [0, "year"],
                         [1, "student id"], [1, "course"], [1, "score"]],
        "column_types": ["text", "number", "text", "number", "number", "text", "number"],
        "primary_keys": [1, [4, 5]],
        "foreign_keys": [[4, 1]],
    },
    {
        "db_id": "ghost",
        "table_names_original": ["things"],
        "table_names": ["things"],
        "column_names_original": [[-1, "*"], [0, "thing_id"], [0, "label"], [0, "made"]],
        "column_names": [[-1, "*"], [0, "thing id"], [0, "label"], [0, "made"]],
        "column_types": ["text", "number", "text", "time"],
        "primary_keys": [1],
        "foreign_keys": [],
    },
]

DDL = {
    "shop": [
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name VARCHAR(40), city VARCHAR(20), age INT)",
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id), "
        "amount DECIMAL(10,2), status TEXT)",
    ],
    "school": [
        "CREATE TABLE students (student_id INTEGER PRIMARY KEY, name TEXT, year)",  # `year`: no declared type
        "CREATE TABLE grades (student_id INTEGER REFERENCES students(student_id), course TEXT, score REAL, "
        "PRIMARY KEY (student_id, course))",
    ],
}

ROWS = {
    "customers": [(1, "Ann", "Oslo", 34), (2, "Bob", "Rome", 41), (3, "Cid", "Oslo", None), (4, "Dee", "Lima", 29)],
    "orders": [(1, 1, 10.5, "paid"), (2, 1, 20.0, "paid"), (3, 2, 7.25, "open"), (4, 3, 20.0, "paid"),
               (5, 4, None, "open")],
    "students": [(1, "Eve", 1), (2, "Fay", 2), (3, "Gus", 2)],
    "grades": [(1, "math", 0.1 + 0.2), (1, "art", 3.0), (2, "math", 4.0), (3, "art", None)],
}

# The official dict of the first dev question, in process_sql.py's format (column ids index tables.json).
_COUNT_CUSTOMERS_SQL = {
    "select": [False, [[3, [0, [0, 0, False], None]]]], "from": {"table_units": [["table_unit", 0]], "conds": []},
    "where": [], "groupBy": [], "having": [], "orderBy": [], "limit": None,
    "intersect": None, "union": None, "except": None,
}

DEV = [
    ("shop", "How many customers are there?", "SELECT count(*) FROM customers"),  # easy
    ("shop", "Which cities do customers live in?", "SELECT DISTINCT city FROM customers"),  # easy
    ("shop", "List customer names from oldest to youngest.", "SELECT name FROM customers ORDER BY age DESC"),  # easy
    ("shop", "Name and total order amount of each customer.",
     "SELECT T1.name ,  sum(T2.amount) FROM customers AS T1 JOIN orders AS T2 ON T1.id  =  T2.customer_id "
     "GROUP BY T1.id"),  # medium
    ("shop", "Names of customers with no open order.",
     "SELECT name FROM customers WHERE id NOT IN (SELECT customer_id FROM orders WHERE status  =  'open')"),  # hard
    ("shop", "Cities with a paid order and a customer older than 30.",
     "SELECT T1.city FROM customers AS T1 JOIN orders AS T2 ON T1.id = T2.customer_id WHERE T2.status = 'paid' "
     "INTERSECT SELECT city FROM customers WHERE age > 30"),  # extra
    ("school", "What are the scores in math?", "SELECT score FROM grades WHERE course  =  'math'"),  # easy
    ("school", "Which student has the highest average score?",
     "SELECT T1.name FROM students AS T1 JOIN grades AS T2 ON T1.student_id  =  T2.student_id "
     "GROUP BY T1.student_id ORDER BY avg(T2.score) DESC LIMIT 1"),  # extra
    ("ghost", "How many things are there?", "SELECT count(*) FROM things"),  # skipped: no database file
    ("ghost", "List all labels.", "SELECT label FROM things"),  # skipped
]

TRAIN = [
    ("shop", "How many orders are paid?", "SELECT count(*) FROM orders WHERE status  =  'paid'"),
    ("shop", "What is the largest order amount?", "SELECT max(amount) FROM orders"),
    ("school", "List all student names.", "SELECT name FROM students"),
    ("ghost", "Count the things.", "SELECT count(*) FROM things"),
]


def build_tiny_spider(folder: str | Path) -> Path:
    """Write the tiny Spider into `folder` (created if needed) and return it."""
    folder = Path(folder)
    for db_id, statements in DDL.items():
        path = folder / "database" / db_id / f"{db_id}.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        con = sqlite3.connect(path)
        try:
            for statement in statements:
                con.execute(statement)
                table = statement.split()[2]
                for row in ROWS[table]:
                    con.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(row))})", row)
            con.commit()
        finally:
            con.close()
        (path.parent / "schema.sql").write_text(";\n".join(statements) + ";\n", encoding="utf-8")
    (folder / "tables.json").write_text(json.dumps(TABLES, indent=1), encoding="utf-8")
    dev = [{"db_id": db, "question": q, "query": sql} for db, q, sql in DEV]
    dev[0]["sql"] = _COUNT_CUSTOMERS_SQL
    (folder / "dev.json").write_text(json.dumps(dev, indent=1), encoding="utf-8")
    train = [{"db_id": db, "question": q, "query": sql} for db, q, sql in TRAIN]
    (folder / "train_spider.json").write_text(json.dumps(train, indent=1), encoding="utf-8")
    return folder
