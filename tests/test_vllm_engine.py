"""The vLLM engine for real: a vLLM server on this CPU (from `bash scripts/install-vllm.sh`'s venv) serving the
embedded SmolLM2 with the cpu profile's adapter by name.

Skipped, saying why, where vLLM is not installed; CI installs it and sets VOXQL_REQUIRE_VLLM=1, so there a
missing or broken vLLM fails instead of skipping. One server for the module: it takes a minute or two to start.
"""

import json
import os
import subprocess
import sys

import pytest

from pipelines.engine import SamplingParams, get_engine
from pipelines.engine.vllm_engine import vllm_venv
from pipelines.profiles import ASSETS_DIR
from pipelines.sql.demo_data import ensure_demo_databases
from pipelines.sql.pipeline import ask

pytestmark = pytest.mark.skipif(
    not (vllm_venv() / ".voxql-installed").exists() and os.environ.get("VOXQL_REQUIRE_VLLM") != "1",
    reason=f"vLLM is not installed in {vllm_venv()} (bash scripts/install-vllm.sh)")

SPIDER_ADAPTER = ASSETS_DIR / "adapters" / "smollm2-135m-spider-lora"


@pytest.fixture(scope="module")
def engine(cpu_profile):
    return get_engine(cpu_profile.sql_model, cpu_profile.sql_adapter, engine="vllm")


def test_server_serves_the_base_and_the_profile_adapter_by_name(engine, cpu_profile):
    assert engine.info.engine.startswith("vLLM ") and engine.server.process.poll() is None
    assert engine.info.default_adapter == "default"
    assert engine.info.adapters["default"] == cpu_profile.sql_adapter
    assert engine.capabilities.grammar and engine.capabilities.runtime_adapter_loading


def test_a_question_is_answered_through_the_adapter_with_the_schema_grammar(engine, cpu_profile, concert_singer):
    answer = ask("How many singers do we have?", concert_singer, engine, dialect=cpu_profile.sql_dialect)
    assert answer.constrained == "on" and answer.attempts[0].grammar == "followed"
    assert answer.executed and answer.ok, answer.to_dict()
    assert answer.rows == [list(row) for row in concert_singer.run("SELECT count(*) FROM singer").rows]


def test_a_grammar_decides_the_output(engine):
    grammar = 'start: "SELECT " DIGIT " AS " ("yes" | "no")\nDIGIT: /[0-9]/'
    messages = [{"role": "user", "content": "Write a haiku about the sea."}]
    [[constrained]] = engine.generate([messages], SamplingParams(max_new_tokens=16, grammar=grammar), adapter=None)
    assert constrained.grammar == "followed"
    head, _, tail = constrained.text.partition(" AS ")
    assert head[:-1] == "SELECT " and head[-1].isdigit() and tail in {"yes", "no"}, constrained.text


def test_streaming_counts_tokens_and_times_the_first(engine):
    stream = engine.stream([{"role": "user", "content": "Count the singers."}], SamplingParams(max_new_tokens=12))
    text = "".join(stream)
    assert text == stream.generation.text and stream.generation.completion_tokens >= 1
    assert stream.ttft_ms is not None and stream.ttft_ms > 0


def test_sampling_gives_n_per_prompt(engine):
    generations = engine.generate([[{"role": "user", "content": "Name a table."}]] * 2,
                                  SamplingParams(max_new_tokens=8, temperature=1.0, n=3, seed=3))
    assert [len(samples) for samples in generations] == [3, 3]
    assert all(g.completion_tokens >= 1 for samples in generations for g in samples)


def test_an_adapter_loads_while_the_server_runs(engine):
    engine.load_adapter(str(SPIDER_ADAPTER), "spider")
    assert engine.info.adapters["spider"] == str(SPIDER_ADAPTER)
    served = engine._get("/models")["data"]
    assert "spider" in {model["id"] for model in served}
    [[reply]] = engine.generate([[{"role": "user", "content": "How many singers?"}]], adapter="spider")
    assert reply.text.strip() and reply.finish_reason in {"stop", "length"}


def test_the_cli_answers_through_the_server_as_a_remote_one(engine, cpu_profile, concert_singer):
    """`--engine-url`: the same server, reached as any OpenAI-compatible endpoint on another port would be."""
    command = [sys.executable, "-m", "pipelines", "sql", "--profile", "cpu", "--engine-url", engine.server.url,
               "--db", str(ensure_demo_databases()["concert_singer"].path), "--question", "How many singers do we have?"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout)
    assert answer["rows"] == [list(row) for row in concert_singer.run("SELECT count(*) FROM singer").rows]
