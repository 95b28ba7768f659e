"""Engines are chosen by name through one registry; a test engine registers itself the way the built-in ones do."""

import pytest

import pipelines.engine as engines
from pipelines.engine import (Capabilities, Engine, EngineInfo, Generation, SamplingParams, TextStream, engine_choice,
                              engine_names, get_engine, load_error, loaded_engine, register_engine)
from pipelines.errors import BadInput, ModelNotAvailable
from pipelines.sql.databases import DuckDBDatabase
from pipelines.sql.pipeline import ask, question_messages


class EchoEngine(Engine):
    """Answers every conversation with SQL that counts the words of its last message (a real computation)."""

    capabilities = Capabilities(grammar=False, batching=False, runtime_adapter_loading=False)

    def __init__(self, model: str, adapter: str | None):
        self.info = EngineInfo(model=model, adapters={"default": adapter} if adapter else {},
                               default_adapter="default" if adapter else None, engine="echo", device="none",
                               dtype="none")

    def _answer(self, messages) -> str:
        return f"SELECT {len(messages[-1]['content'].split())} AS words"

    def generate(self, conversations, params=SamplingParams(), *, adapter=engines.DEFAULT_ADAPTER):
        self.resolve_adapter(adapter)
        return [[Generation(text=self._answer(m), completion_tokens=4, finish_reason="stop")] for m in conversations]

    def stream(self, messages, params=SamplingParams(), *, adapter=engines.DEFAULT_ADAPTER):
        import threading
        import time

        text = self.generate([messages], params, adapter=adapter)[0][0]
        stream = TextStream(pieces=iter([text.text]), cancel_event=threading.Event())
        stream.first_token_at = stream.finished_at = time.perf_counter()
        stream.generation = text
        return stream

    def load_adapter(self, spec, name):
        raise ModelNotAvailable("the echo engine loads no adapters")


@pytest.fixture
def echo_registered(monkeypatch):
    monkeypatch.setitem(engines._registry, "echo", engines._registry.get("echo", (None, "")))  # restored after
    register_engine("echo", lambda model, adapter, url: EchoEngine(model, adapter), "test engine")
    monkeypatch.delenv(engines.ENGINE_ENV, raising=False)
    monkeypatch.delenv(engines.ENGINE_URL_ENV, raising=False)


def test_builtin_engines_are_registered_with_descriptions():
    assert {"transformers", "llamacpp", "vllm", "openai"} <= set(engine_names())
    assert all(engine_names().values())


def test_engine_by_name_is_built_once_and_shared(echo_registered):
    first = get_engine("some-model", "some-adapter", engine="echo")
    assert isinstance(first, EchoEngine) and get_engine("some-model", "some-adapter", engine="echo") is first
    assert loaded_engine("some-model", "some-adapter", engine="echo") is first
    assert loaded_engine("other-model", None, engine="echo") is None


def test_environment_chooses_the_engine(echo_registered, monkeypatch):
    monkeypatch.setenv(engines.ENGINE_ENV, "echo")
    assert isinstance(get_engine("env-model"), EchoEngine)
    assert engine_choice() == ("echo", None)


def test_choice_defaults_and_errors(monkeypatch):
    monkeypatch.delenv(engines.ENGINE_ENV, raising=False)
    monkeypatch.delenv(engines.ENGINE_URL_ENV, raising=False)
    assert engine_choice() == ("transformers", None)
    assert engine_choice(url="http://elsewhere:8000/v1") == ("openai", "http://elsewhere:8000/v1")
    with pytest.raises(BadInput, match="unknown engine 'nope'.*transformers"):
        engine_choice("nope")
    with pytest.raises(BadInput, match="needs the server's URL"):
        get_engine("m", engine="openai")
    with pytest.raises(BadInput, match="runs in this process"):
        get_engine("m", engine="transformers", url="http://elsewhere:8000")


def test_an_engine_that_cannot_load_says_why_and_where(tmp_path, monkeypatch):
    with pytest.raises(ModelNotAvailable, match="no OpenAI-compatible server answers at http://127.0.0.1:9/v1"):
        get_engine("m", engine="openai", url="http://127.0.0.1:9")
    assert "127.0.0.1:9" in load_error("m", engine="openai", url="http://127.0.0.1:9")
    monkeypatch.setenv("VOXQL_VLLM_VENV", str(tmp_path / "no-venv"))
    with pytest.raises(ModelNotAvailable, match="scripts/install-vllm.sh"):
        get_engine("m", engine="vllm")


def test_pipeline_reads_capabilities_not_names(echo_registered, shop_db):
    engine = get_engine("echo-model", engine="echo")
    database = DuckDBDatabase(shop_db)
    answer = ask("How many customers are there?", database, engine)
    assert answer.constrained == "unavailable: the echo engine does not support grammars"
    prompt = question_messages("How many customers are there?", database)
    assert answer.executed and answer.rows == [[len(prompt[-1]["content"].split())]]
