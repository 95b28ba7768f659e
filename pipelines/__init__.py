"""VoxQL pipelines: everything the app and the CLI share, with no Gradio import.

The Python face, for scripts (the CLI commands call the same functions):

    import pipelines as vq
    engine = vq.get_engine("embedded:smollm2", adapter, engine="transformers")   # or "vllm", "openai"
    database = vq.open_database("shop.duckdb", workdir)                         # DuckDB, SQLite, CSV, Parquet
    answer = vq.ask("How many orders per status?", database, engine)            # Answer: sql, columns, rows, ...
    transcript = vq.transcribe_file("question.wav", vq.resolve_profile("cpu"))
    result = vq.train_sql(vq.config_from_preset("cpu-quick", data, output_dir))
    reports = vq.evaluate_adapter(result.adapter_dir, spider_dir, limit=50)

Names are imported on first use, so `import pipelines` stays fast and needs no torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ask": "pipelines.sql.pipeline",
    "ask_stream": "pipelines.sql.pipeline",
    "open_database": "pipelines.sql.databases",
    "get_engine": "pipelines.engine",
    "register_engine": "pipelines.engine",
    "SamplingParams": "pipelines.engine",
    "resolve_profile": "pipelines.profiles",
    "transcribe_file": "pipelines.speech.transcribe",
    "train_sql": "pipelines.training.sql_sft",
    "config_from_preset": "pipelines.training.sql_sft",
    "evaluate_adapter": "pipelines.training.sql_sft",
    "train_tags": "pipelines.training.tags_train",
    "tag_config": "pipelines.training.tags_train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
