"""The bundled demo databases: a synthetic shop built from a seed, and three Spider databases.

They are built into the cache on first use (a couple of seconds), not shipped as binaries. The shop's dates
end at its anchor date (default: today), so questions such as "in the last 30 days" have answers; the same
seed and anchor always give the same rows.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from pipelines.profiles import ASSETS_DIR, cache_dir

DEMO_DIR = ASSETS_DIR / "databases"
SPIDER_DEMOS = ("concert_singer", "world_1", "car_1")
SHOP_SEED = 20261122
SHOP_MAX_AGE_DAYS = 7  # rebuild the shop when its newest orders are older than this

COUNTRIES = {  # country -> (share of customers, cities)
    "United States": (0.34, ["New York", "Chicago", "Austin", "Seattle", "Denver"]),
    "Canada": (0.12, ["Toronto", "Montreal", "Vancouver", "Calgary"]),
    "United Kingdom": (0.11, ["London", "Manchester", "Leeds"]),
    "Germany": (0.10, ["Berlin", "Munich", "Hamburg"]),
    "France": (0.09, ["Paris", "Lyon", "Marseille"]),
    "Spain": (0.06, ["Madrid", "Barcelona"]),
    "Italy": (0.06, ["Rome", "Milan"]),
    "Japan": (0.05, ["Tokyo", "Osaka"]),
    "Brazil": (0.04, ["Sao Paulo", "Rio de Janeiro"]),
    "Australia": (0.03, ["Sydney", "Melbourne"]),
}
CATEGORIES = {  # category -> price range
    "Books": (8, 40), "Electronics": (25, 900), "Home": (10, 250), "Garden": (5, 180),
    "Toys": (6, 90), "Sports": (12, 400), "Beauty": (4, 80), "Grocery": (2, 30),
}
STATUSES = (["completed", "shipped", "processing", "cancelled", "refunded"], [0.72, 0.12, 0.06, 0.06, 0.04])
FIRST = ["Ava", "Liam", "Noah", "Emma", "Olivia", "Lucas", "Mia", "Leo", "Sofia", "Ethan", "Chloe", "Hugo",
         "Yuki", "Marta", "Luca", "Anna", "Omar", "Zoe", "Ines", "Max"]
LAST = ["Smith", "Martin", "Tremblay", "Muller", "Rossi", "Garcia", "Brown", "Dubois", "Sato", "Silva",
        "Wilson", "Roy", "Schmidt", "Lopez", "Taylor", "Kim", "Nguyen", "Costa", "Evans", "Moreau"]


@dataclass(frozen=True)
class DemoDatabase:
    name: str
    path: Path
    examples: list[str]
    description: str


def build_shop(path: str | Path, *, anchor: dt.date | None = None, seed: int = SHOP_SEED,
               customers: int = 5_000, products: int = 150, orders: int = 120_000) -> Path:
    """Write the shop database to `path` (replacing it). Orders span the two years before `anchor`."""
    anchor = anchor or dt.date.today()
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    country_names = list(COUNTRIES)
    shares = np.array([COUNTRIES[c][0] for c in country_names])
    customer_country = rng.choice(len(country_names), size=customers, p=shares / shares.sum())
    customer_df = pd.DataFrame({
        "id": np.arange(1, customers + 1),
        "name": [f"{rng.choice(FIRST)} {rng.choice(LAST)}" for _ in range(customers)],
        "country": [country_names[i] for i in customer_country],
        "city": [rng.choice(COUNTRIES[country_names[i]][1]) for i in customer_country],
        "signup_date": [anchor - dt.timedelta(days=int(d)) for d in rng.integers(30, 1500, customers)],
    })
    customer_df["email"] = [f"customer{i}@example.com" for i in customer_df["id"]]

    category_names = list(CATEGORIES)
    product_category = rng.choice(len(category_names), size=products)
    product_df = pd.DataFrame({
        "id": np.arange(1, products + 1),
        "name": [f"{category_names[c]} item {i + 1}" for i, c in enumerate(product_category)],
        "category": [category_names[c] for c in product_category],
        "price": [round(float(rng.uniform(*CATEGORIES[category_names[c]])), 2) for c in product_category],
    })

    # Orders: more recent days a little busier (a growing shop), sorted so ids follow time.
    end = dt.datetime.combine(anchor, dt.time(23, 59, 59))
    age_s = rng.power(0.8, size=orders) * 730 * 86_400  # power(a < 1) piles up near 0: recent days
    order_df = pd.DataFrame({
        "id": np.arange(1, orders + 1),
        "customer_id": rng.integers(1, customers + 1, orders),
        "created_at": pd.to_datetime(end) - pd.to_timedelta(np.round(age_s), unit="s"),
        "status": rng.choice(STATUSES[0], size=orders, p=STATUSES[1]),
    }).sort_values("created_at", kind="stable")
    order_df["id"] = np.arange(1, orders + 1)

    lines_per_order = rng.integers(1, 5, orders)
    item_order = np.repeat(order_df["id"].to_numpy(), lines_per_order)
    item_product = rng.integers(1, products + 1, len(item_order))
    item_df = pd.DataFrame({
        "id": np.arange(1, len(item_order) + 1),
        "order_id": item_order,
        "product_id": item_product,
        "quantity": rng.integers(1, 4, len(item_order)),
        "unit_price": product_df["price"].to_numpy()[item_product - 1],
    })
    totals = (item_df["quantity"] * item_df["unit_price"]).groupby(item_df["order_id"]).sum().round(2)
    order_df["total"] = order_df["id"].map(totals)

    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    with duckdb.connect(str(partial)) as con:
        con.execute("""
            CREATE TABLE customers (id INTEGER PRIMARY KEY, name VARCHAR, email VARCHAR, country VARCHAR,
                                    city VARCHAR, signup_date DATE);
            CREATE TABLE products (id INTEGER PRIMARY KEY, name VARCHAR, category VARCHAR, price DECIMAL(10,2));
            CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id),
                                 created_at TIMESTAMP, status VARCHAR, total DECIMAL(10,2));
            CREATE TABLE order_items (id INTEGER PRIMARY KEY, order_id INTEGER REFERENCES orders(id),
                                      product_id INTEGER REFERENCES products(id), quantity INTEGER,
                                      unit_price DECIMAL(10,2));
        """)
        for table, frame in [("customers", customer_df), ("products", product_df), ("orders", order_df),
                             ("order_items", item_df)]:
            con.register("frame", frame)
            columns = ", ".join(c[0] for c in con.execute(f"DESCRIBE {table}").fetchall())
            con.execute(f"INSERT INTO {table} SELECT {columns} FROM frame")
            con.unregister("frame")
    partial.replace(path)
    path.with_suffix(".json").write_text(json.dumps({"seed": seed, "anchor": anchor.isoformat()}))
    return path


def _shop_is_fresh(path: Path) -> bool:
    meta = path.with_suffix(".json")
    if not (path.exists() and meta.exists()):
        return False
    anchor = dt.date.fromisoformat(json.loads(meta.read_text())["anchor"])
    return (dt.date.today() - anchor).days <= SHOP_MAX_AGE_DAYS


def ensure_demo_databases(directory: Path | None = None) -> dict[str, DemoDatabase]:
    """Build what is missing or stale and return the demo databases by name."""
    from pipelines.sql.examples import load_examples
    from pipelines.sql.uploads import sqlite_to_duckdb

    directory = directory or cache_dir() / "databases"
    directory.mkdir(parents=True, exist_ok=True)
    examples = {name: [example.question for example in items] for name, items in load_examples().items()}
    shop = directory / "shop.duckdb"
    if not _shop_is_fresh(shop):
        build_shop(shop)
    demos = {"shop": DemoDatabase("shop", shop, examples["shop"],
                                  "Synthetic online shop: customers, products, 120k orders, order items")}
    for name in SPIDER_DEMOS:
        target = directory / f"{name}.duckdb"
        if not target.exists():
            partial = directory / f"{name}.duckdb.partial"
            partial.unlink(missing_ok=True)
            sqlite_to_duckdb(DEMO_DIR / "spider" / f"{name}.sqlite", partial)
            shutil.move(partial, target)
        demos[name] = DemoDatabase(name, target, examples[name], f"Spider benchmark database ({name}, CC BY-SA 4.0)")
    return demos
