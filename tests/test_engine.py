"""The transformers engine on a tiny random Llama and a real LoRA trained to answer one question."""

import threading

import pytest
import torch

from pipelines.engine import DEFAULT_ADAPTER, SamplingParams
from pipelines.engine.loading import cpu_has_bf16
from pipelines.engine.transformers_engine import TransformersEngine
from pipelines.errors import BadInput, ModelNotAvailable
from pipelines.sql.databases import DuckDBDatabase
from pipelines.sql.pipeline import question_messages
from pipelines.sql.prompt import build_messages
from tests.conftest import TAUGHT_QUESTION, TAUGHT_SQL

GREEDY = SamplingParams(max_new_tokens=24)


@pytest.fixture(scope="module")
def engine(tiny_llama_dir, taught_adapter_dir):
    # fp32: a random model's near-tied logits make bf16 answers depend on batch padding, which is not under test
    return TransformersEngine(str(tiny_llama_dir), str(taught_adapter_dir), dtype=torch.float32)


@pytest.fixture(scope="module")
def messages(shop_db):
    """The prompt the app's pipeline builds for the taught question (the form the adapter learned)."""
    return question_messages(TAUGHT_QUESTION, DuckDBDatabase(shop_db))


def test_info_names_model_adapter_engine_device(engine, tiny_llama_dir, taught_adapter_dir):
    assert engine.info.model == str(tiny_llama_dir)
    assert engine.info.adapters == {"default": str(taught_adapter_dir)}
    assert engine.info.default_adapter == "default"
    assert engine.info.device == "cpu" and engine.info.dtype == "float32"
    assert "transformers" in engine.info.engine


def test_adapter_switches_per_request_without_reloading(engine, messages):
    model_before = engine.model
    tuned = engine.generate([messages], GREEDY)[0][0]
    base = engine.generate([messages], GREEDY, adapter=None)[0][0]
    again = engine.generate([messages], GREEDY, adapter="default")[0][0]
    assert tuned.text == TAUGHT_SQL and tuned.finish_reason == "stop"
    assert base.text != TAUGHT_SQL
    assert again.text == tuned.text
    assert engine.model is model_before


def test_default_dtype_is_bf16_where_the_cpu_has_bf16_instructions(tiny_llama_dir):
    assert TransformersEngine(str(tiny_llama_dir)).info.dtype == ("bfloat16" if cpu_has_bf16() else "float32")


def test_default_adapter_runs_merged_and_answers_as_the_peft_model(engine, tiny_llama_dir, taught_adapter_dir,
                                                                  messages):
    unmerged = TransformersEngine(str(tiny_llama_dir), str(taught_adapter_dir), dtype=torch.float32,
                                  merge_default=False)
    with engine._using("default") as merged_model:
        assert merged_model is not engine.model and not hasattr(merged_model, "peft_config")
    with engine._using(None) as base_model:
        assert base_model is engine.model  # the base (and any other adapter) still runs on the PEFT model
    assert engine.generate([messages], GREEDY)[0][0].text == unmerged.generate([messages], GREEDY)[0][0].text


def test_batches_of_different_lengths_match_single_prompts(engine, messages):
    other = build_messages("Something else entirely, and longer than the first question", "CREATE TABLE t (id INTEGER);")
    batch = engine.generate([messages, other], GREEDY)
    assert batch[0][0].text == TAUGHT_SQL  # left padding must not disturb the shorter prompt
    assert batch[1][0].text == engine.generate([other], GREEDY)[0][0].text


def test_sampling_gives_n_per_prompt_and_is_seeded(engine, messages):
    params = SamplingParams(max_new_tokens=8, temperature=1.5, n=3, seed=7)
    first = engine.generate([messages, messages], params, adapter=None)
    second = engine.generate([messages, messages], params, adapter=None)
    assert [len(samples) for samples in first] == [3, 3]
    assert [g.text for g in first[0]] == [g.text for g in second[0]]
    assert len({g.text for samples in first for g in samples}) > 1  # actually sampled
    assert all(g.completion_tokens <= 8 for samples in first for g in samples)


def test_stream_yields_pieces_and_timings(engine, messages):
    stream = engine.stream(messages, GREEDY)
    pieces = list(stream)
    assert "".join(pieces) == TAUGHT_SQL == stream.generation.text
    assert len(pieces) > 1
    assert stream.generation.finish_reason == "stop"
    assert stream.ttft_ms > 0 and stream.tokens_per_s > 0
    assert stream.prompt_tokens > 20


def test_stream_stops_when_cancelled(engine, messages):
    stream = engine.stream(messages, SamplingParams(max_new_tokens=200), adapter=None)
    for count, _ in enumerate(stream, start=1):
        if count == 3:
            stream.cancel()
    assert stream.generation.finish_reason == "cancelled"
    assert stream.generation.completion_tokens < 200


def test_concurrent_requests_each_get_their_own_answer(engine, messages):
    """Several browser sessions at once: base and adapter requests interleave without mixing up."""
    results: dict[int, str] = {}

    def worker(i: int) -> None:
        adapter = None if i % 2 else DEFAULT_ADAPTER
        if i % 3 == 0:
            results[i] = "".join(engine.stream(messages, GREEDY, adapter=adapter))
        else:
            results[i] = engine.generate([messages], GREEDY, adapter=adapter)[0][0].text

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    base = engine.generate([messages], GREEDY, adapter=None)[0][0].text
    assert all(results[i] == (base if i % 2 else TAUGHT_SQL) for i in range(8))


def test_load_another_adapter_by_name(tiny_llama_dir, taught_adapter_dir, messages):
    engine = TransformersEngine(str(tiny_llama_dir))
    assert engine.info.default_adapter is None
    with pytest.raises(BadInput, match="no adapter named"):
        engine.generate([messages], GREEDY, adapter="sql")
    engine.load_adapter(str(taught_adapter_dir), "sql")
    assert engine.generate([messages], GREEDY, adapter="sql")[0][0].text == TAUGHT_SQL
    engine.set_default_adapter("sql")
    assert engine.generate([messages], GREEDY)[0][0].text == TAUGHT_SQL


def test_missing_model_and_adapter_are_clear_errors(tmp_path, tiny_llama_dir):
    with pytest.raises(ModelNotAvailable, match="could not be loaded from that path"):
        TransformersEngine(str(tmp_path / "nowhere"))
    with pytest.raises(ModelNotAvailable, match="huggingface-cli download some-org/missing-model"):
        TransformersEngine("some-org/missing-model")
    with pytest.raises(ModelNotAvailable, match="adapter"):
        TransformersEngine(str(tiny_llama_dir), str(tmp_path / "no-adapter"))


def test_a_prompt_sharing_a_prefix_starts_from_its_cache_and_answers_the_same(tiny_llama_dir, taught_adapter_dir,
                                                                               shop_db):
    """Questions about one database share the schema's tokens: the second starts from the first one's KV cache
    (and a repeated prompt from nearly all of it), with the same greedy answers as an engine without the cache."""
    cached = TransformersEngine(str(tiny_llama_dir), str(taught_adapter_dir), dtype=torch.float32)
    uncached = TransformersEngine(str(tiny_llama_dir), str(taught_adapter_dir), dtype=torch.float32)
    uncached.prompt_cache.size = 0
    database = DuckDBDatabase(shop_db)
    prompts = [question_messages(q, database) for q in (TAUGHT_QUESTION, "How many products are there?",
                                                       TAUGHT_QUESTION)]
    answers = [cached.generate([prompt], GREEDY)[0][0].text for prompt in prompts[:2]]
    answers.append("".join(cached.stream(prompts[2], GREEDY)))
    assert answers == [uncached.generate([prompt], GREEDY)[0][0].text for prompt in prompts]
    assert answers[0] == answers[2] == TAUGHT_SQL
    assert (cached.prompt_cache.misses, cached.prompt_cache.hits) == (1, 2)
    assert cached.prompt_cache.reused_tokens > 100  # the schema, twice
    [base] = cached.generate([prompts[0]], GREEDY, adapter=None)[0]  # the base model keeps caches of its own
    assert base.text == uncached.generate([prompts[0]], GREEDY, adapter=None)[0][0].text
    assert cached.prompt_cache.misses == 2
