"""Spider 1.0: the data loader, a read-only SQLite back end, the official execution match and hardness, and
the `eval-spider` evaluation that the CLI and the Train tab share.

Spider's gold SQL is SQLite, so everything here works in the `sqlite` dialect.
"""

SPIDER_DIALECT = "sqlite"
