"""The chat prompt for text-to-SQL, in the seed adapter's training format.

Training (`train-sql`), evaluation (`eval-spider`) and the app all build messages here, so all three show the
model exactly the same text.
"""

from __future__ import annotations

from pipelines.engine import Message

# sqlglot dialect name -> the name the model reads.
DIALECT_NAMES = {"duckdb": "DuckDB", "sqlite": "SQLite", "postgres": "PostgreSQL", "mysql": "MySQL"}


def system_prompt(ddl: str, dialect: str = "duckdb") -> str:
    return f"You translate natural language to {DIALECT_NAMES.get(dialect, dialect)} SQL.\n\nSchema:\n{ddl}"


def build_messages(question: str, ddl: str, dialect: str = "duckdb") -> list[Message]:
    return [
        {"role": "system", "content": system_prompt(ddl, dialect)},
        {"role": "user", "content": question.strip()},
    ]


def retry_messages(messages: list[Message], reply: str, error: str, dialect: str = "duckdb") -> list[Message]:
    """The conversation so far plus the error, asking for a corrected query (self-correction)."""
    return [
        *messages,
        {"role": "assistant", "content": reply},
        {
            "role": "user",
            "content": f"That query failed: {error}\n"
            f"Reply with one corrected {DIALECT_NAMES.get(dialect, dialect)} SQL query and nothing else.",
        },
    ]
