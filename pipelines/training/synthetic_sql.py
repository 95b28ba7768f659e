"""Synthetic analytics examples for the SQL adapter: invented schemas and data, questions, and DuckDB SQL.

Spider has few of the questions people ask of a sales or events table: date windows, per-month totals, top-N,
joins through a foreign key, HAVING, DISTINCT. This seeded generator makes such questions over schemas it
invents (never the demo databases): a "who" table (customers, drivers, artists...) and an events table (orders,
trips, donations...) with a date, an amount and text columns, joined by a foreign key, sometimes beside an
unrelated table. Text values come in one casing per database (`cancelled` or `Cancelled`) while questions use
any casing, so the value hints are what tells the model the right one.

Each example's SQL is checked by the guard and run in the sandbox on the generated data, and kept only when it
runs; its prompt is the app's own (`question_messages`, value hints included). Dates are drawn relative to the
day the data is made, so "the last 30 days" has rows.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import BadInput

WHO = [("customer", "customers"), ("store", "stores"), ("vendor", "vendors"), ("patient", "patients"),
       ("driver", "drivers"), ("artist", "artists"), ("member", "members"), ("supplier", "suppliers"),
       ("agent", "agents"), ("client", "clients"), ("school", "schools"), ("team", "teams")]
EVENTS = [("order", "orders", "amount"), ("sale", "sales", "revenue"), ("trip", "trips", "fare"),
          ("booking", "bookings", "price"), ("shipment", "shipments", "cost"), ("invoice", "invoices", "total"),
          ("donation", "donations", "amount"), ("visit", "visits", "charge"), ("payment", "payments", "amount"),
          ("ticket", "tickets", "price"), ("rental", "rentals", "fee")]
PLACES = {"country": ["Canada", "France", "Japan", "Brazil", "Kenya", "Germany", "Mexico", "India", "Spain"],
          "city": ["Toronto", "Lyon", "Osaka", "Recife", "Nairobi", "Hamburg", "Puebla", "Pune", "Seville"],
          "region": ["North", "South", "East", "West", "Central"]}
GRADES = {"segment": ["Retail", "Wholesale", "Online"], "tier": ["Gold", "Silver", "Bronze"],
          "plan": ["Basic", "Pro", "Enterprise"]}
STATES = {"status": ["Completed", "Cancelled", "Pending", "Refunded"], "channel": ["Web", "Phone", "In store"],
          "kind": ["Standard", "Express", "Priority"]}
NAMES = ["Ada", "Bo", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lia", "Milo", "Nia", "Oto",
         "Pia", "Quin", "Rui", "Sol", "Tao", "Uma", "Vik", "Wen", "Xia", "Yul", "Zoe"]
OTHER_TABLES = [("employees", [("id", "INTEGER"), ("full_name", "VARCHAR"), ("hired_on", "DATE")]),
                ("warehouses", [("id", "INTEGER"), ("label", "VARCHAR"), ("capacity", "INTEGER")]),
                ("campaigns", [("id", "INTEGER"), ("title", "VARCHAR"), ("budget", "DECIMAL(10,2)")])]


@dataclass(frozen=True)
class SyntheticSchema:
    """The names one invented database uses, and the values it holds."""

    who: str  # table names
    events: str
    who_word: tuple[str, str]  # (singular, plural) as the questions say it
    event_word: tuple[str, str]
    who_name: str  # column names
    fk: str
    date: str
    amount: str
    place: str
    grade: str
    state: str
    places: tuple[str, ...]  # values, in the database's casing
    grades: tuple[str, ...]
    states: tuple[str, ...]


@dataclass(frozen=True)
class SyntheticExample:
    question: str
    query: str
    database: Path  # the generated DuckDB file


def _casing(rng: random.Random):
    return rng.choice([str.lower, lambda s: s, str.upper])


def invent_schema(rng: random.Random) -> SyntheticSchema:
    who_word, event = rng.choice(WHO), rng.choice(EVENTS)
    singular = rng.random() < 0.3  # `customer` or `customers` (events stay plural: `order` is a keyword)
    place, grade, state = rng.choice(list(PLACES)), rng.choice(list(GRADES)), rng.choice(list(STATES))
    case = _casing(rng)
    return SyntheticSchema(
        who=who_word[0] if singular else who_word[1], events=event[1],
        who_word=who_word, event_word=event[:2],
        who_name=rng.choice(["name", f"{who_word[0]}_name"]), fk=f"{who_word[0]}_id",
        date=rng.choice([f"{event[0]}_date", "created_at", "event_date"]), amount=event[2],
        place=place, grade=grade, state=state,
        places=tuple(case(v) for v in rng.sample(PLACES[place], 5)), grades=tuple(case(v) for v in GRADES[grade]),
        states=tuple(case(v) for v in STATES[state]))


def write_database(schema: SyntheticSchema, path: Path, rng: random.Random, today: dt.date) -> Path:
    """The invented tables with random rows, as a DuckDB file (our own data: written directly, not sandboxed)."""
    import duckdb

    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    s = schema
    connection = duckdb.connect(str(path))
    try:
        connection.execute(f"CREATE TABLE {s.who} (id INTEGER PRIMARY KEY, {s.who_name} VARCHAR, {s.place} VARCHAR, "
                           f"{s.grade} VARCHAR)")
        connection.execute(f"CREATE TABLE {s.events} (id INTEGER PRIMARY KEY, {s.fk} INTEGER REFERENCES {s.who}(id), "
                           f"{s.date} DATE, {s.amount} DECIMAL(10,2), {s.state} VARCHAR, quantity INTEGER)")
        people = rng.randint(12, 40)
        connection.executemany(f"INSERT INTO {s.who} VALUES (?, ?, ?, ?)", [
            (i, f"{rng.choice(NAMES)} {rng.choice(NAMES)}son", rng.choice(s.places), rng.choice(s.grades))
            for i in range(1, people + 1)])
        connection.executemany(f"INSERT INTO {s.events} VALUES (?, ?, ?, ?, ?, ?)", [
            (i, rng.randint(1, people), today - dt.timedelta(days=rng.randint(0, 540)),
             round(rng.uniform(5, 500), 2), rng.choice(s.states), rng.randint(1, 9))
            for i in range(1, rng.randint(150, 500) + 1)])
        if rng.random() < 0.5:
            name, columns = rng.choice(OTHER_TABLES)
            connection.execute(f"CREATE TABLE {name} ({', '.join(f'{c} {t}' for c, t in columns)})")
    finally:
        connection.close()
    return path


def questions(s: SyntheticSchema, rng: random.Random, today: dt.date) -> list[tuple[str, str]]:
    """(question, DuckDB SQL) pairs over one invented schema: one per kind, in random wording."""
    who, whos = s.who_word
    event, events = s.event_word
    join = f"FROM {s.who} AS T1 JOIN {s.events} AS T2 ON T1.id = T2.{s.fk}"
    days = rng.choice([7, 14, 30, 60, 90])
    year = rng.choice([today.year, today.year - 1])
    top = rng.choice([3, 5, 10])
    more = rng.choice([3, 5, 8, 10])
    place, state, grade = rng.choice(s.places), rng.choice(s.states), rng.choice(s.grades)
    said = _casing(rng)  # how the question writes a value: not always as stored
    return [
        (rng.choice([f"Total {s.amount} from {events} in the last {days} days?",
                     f"What is the sum of {s.amount} over the past {days} days?"]),
         f"SELECT SUM({s.amount}) AS total_{s.amount} FROM {s.events} "
         f"WHERE {s.date} >= current_date - INTERVAL {days} DAY"),
        (rng.choice([f"Total {s.amount} from {whos} in {said(place)} in the last {days} days?",
                     f"How much {s.amount} came from {said(place)} {whos} over the last {days} days?"]),
         f"SELECT SUM(T2.{s.amount}) AS total_{s.amount} {join} WHERE T1.{s.place} = '{place}' "
         f"AND T2.{s.date} >= current_date - INTERVAL {days} DAY"),
        (rng.choice([f"{s.amount.capitalize()} per month in {year}", f"Monthly total {s.amount} for {year}?"]),
         f"SELECT date_trunc('month', {s.date}) AS month, SUM({s.amount}) AS total_{s.amount} FROM {s.events} "
         f"WHERE year({s.date}) = {year} GROUP BY month ORDER BY month"),
        (rng.choice([f"Number of {events} per month", f"How many {events} were there each month?"]),
         f"SELECT date_trunc('month', {s.date}) AS month, COUNT(*) AS {events} FROM {s.events} "
         "GROUP BY month ORDER BY month"),
        (rng.choice([f"Top {top} {whos} by total {s.amount}", f"Which {top} {whos} have the highest total {s.amount}?"]),
         f"SELECT T1.{s.who_name}, SUM(T2.{s.amount}) AS total_{s.amount} {join} GROUP BY T1.id, T1.{s.who_name} "
         f"ORDER BY total_{s.amount} DESC LIMIT {top}"),
        (rng.choice([f"Which {whos} have more than {more} {events}?", f"{whos.capitalize()} with over {more} {events}"]),
         f"SELECT T1.{s.who_name} {join} GROUP BY T1.id, T1.{s.who_name} HAVING COUNT(*) > {more}"),
        (rng.choice([f"List the distinct {s.place} values of {whos}.", f"Which different {s.place}s are {whos} in?"]),
         f"SELECT DISTINCT {s.place} FROM {s.who}"),
        (rng.choice([f"How many {events} are {said(state)}?", f"Count the {said(state)} {events}."]),
         f"SELECT COUNT(*) FROM {s.events} WHERE {s.state} = '{state}'"),
        (rng.choice([f"Average {s.amount} per {s.state}", f"What is the average {s.amount} for each {s.state}?"]),
         f"SELECT {s.state}, AVG({s.amount}) AS average_{s.amount} FROM {s.events} GROUP BY {s.state}"),
        (rng.choice([f"How many {events} this year?", f"Number of {events} so far this year"]),
         f"SELECT COUNT(*) FROM {s.events} WHERE year({s.date}) = year(current_date)"),
        (rng.choice([f"Total {s.amount} last month?", f"What was the total {s.amount} in the previous month?"]),
         f"SELECT SUM({s.amount}) AS total_{s.amount} FROM {s.events} WHERE date_trunc('month', {s.date}) = "
         "date_trunc('month', current_date - INTERVAL 1 MONTH)"),
        (rng.choice([f"How many different {whos} had {events} in {year}?",
                     f"Number of distinct {whos} with a {event} in {year}"]),
         f"SELECT COUNT(DISTINCT {s.fk}) FROM {s.events} WHERE year({s.date}) = {year}"),
        (rng.choice([f"Total {s.amount} of {said(grade)} {whos}", f"Sum of {s.amount} for {whos} in the "
                     f"{said(grade)} {s.grade}"]),
         f"SELECT SUM(T2.{s.amount}) AS total_{s.amount} {join} WHERE T1.{s.grade} = '{grade}'"),
    ]


def synthetic_examples(count: int, seed: int, folder: Path, today: dt.date | None = None,
                       per_database: int = 6) -> list[SyntheticExample]:
    """`count` examples, `per_database` kinds drawn per invented database; every SQL ran on its data."""
    from pipelines.sql.databases import DuckDBDatabase

    rng = random.Random(seed)
    today = today or dt.date.today()
    examples: list[SyntheticExample] = []
    index = 0
    while len(examples) < count:
        schema = invent_schema(rng)
        path = write_database(schema, folder / f"synthetic-{seed}-{index}.duckdb", rng, today)
        index += 1
        database = DuckDBDatabase(path)
        for question, sql in rng.sample(questions(schema, rng, today), per_database):
            verdict = database.check(sql)
            if verdict.allowed and database.run(verdict.normalized).ok:
                examples.append(SyntheticExample(question, sql, path))
    return examples[:count]


# -- held-out evaluation ------------------------------------------------------------------------------------------
HELD_OUT_SEED = 1_000_003  # training draws seeds 0, 1, ...: this one makes databases no training run has seen


def evaluate_analytics(engine, count: int, *, seed: int = HELD_OUT_SEED, folder: Path, dialect: str = "duckdb",
                       ask_options: dict | None = None, progress=None, recorded: list[dict] | None = None) -> dict:
    """Execution accuracy of `engine` on `count` generated analytics questions over invented databases.

    Each question goes through the app's own pipeline (`ask`: prompt with value hints, grammar, guard, voting,
    sandbox); its rows are compared with the generated SQL's rows (order counts when that SQL has ORDER BY).
    With `recorded` (the records of an earlier report of the same seed), no model is asked: each question's recorded
    candidates are checked, run and chosen among again (`vote_on_candidates`), to measure a change to the guard or
    the choice.
    """
    from pipelines.spider.exec_match import order_matters, result_eq
    from pipelines.sql.databases import DuckDBDatabase
    from pipelines.sql.pipeline import ask, vote_on_candidates

    records, databases = [], {}
    examples = synthetic_examples(count, seed, folder)
    if recorded is not None and [r["question"] for r in recorded[:len(examples)]] != [e.question for e in examples]:
        raise BadInput("the recorded report asked other questions: revote with the seed and limit it was run with")
    for done, example in enumerate(examples, 1):
        database = databases.setdefault(example.database, DuckDBDatabase(example.database))
        if recorded is not None:  # the recorded SQL went through the guard: it is DuckDB's
            earlier = recorded[done - 1]
            candidates = (earlier.get("vote") or {}).get("sql") or [earlier["predicted_sql"]]
            answer = vote_on_candidates(example.question, database, candidates, dialect="duckdb")
        else:
            answer = ask(example.question, database, engine, max_retries=0, dialect=dialect, **(ask_options or {}))
        gold = database.run(example.query)
        correct = bool(answer.executed and not answer.truncated and gold.ok
                       and result_eq([tuple(r) for r in gold.rows], [tuple(r) for r in answer.rows],
                                     order_matters(example.query)))
        records.append({"question": example.question, "gold_sql": example.query, "predicted_sql": answer.sql,
                        "error": answer.error, "correct": correct, "total_ms": round(answer.timings.total_ms),
                        "vote": answer.vote})
        if progress:
            progress(done, len(examples))
    correct = sum(r["correct"] for r in records)
    return {"questions": len(records), "correct": correct,
            "execution_accuracy": round(correct / len(records), 4) if records else None, "seed": seed,
            "records": records}
