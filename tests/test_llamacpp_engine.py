"""The llama.cpp engine on the real embedded GGUF with the cpu profile's adapter, converted to a GGUF LoRA.

Skipped, saying why, where llama-cpp-python is not installed; CI installs it (scripts/install.sh) and sets
VOXQL_REQUIRE_LLAMACPP=1, so there a missing or broken build fails instead of skipping.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pipelines.engine import SamplingParams, get_engine
from pipelines.engine.adapters import ensure_adapter
from pipelines.engine.llamacpp_engine import llamacpp_available
from pipelines.errors import ModelNotAvailable
from pipelines.profiles import ASSETS_DIR
from pipelines.sql.demo_data import ensure_demo_databases
from pipelines.sql.pipeline import ask

pytestmark = pytest.mark.skipif(
    not llamacpp_available() and os.environ.get("VOXQL_REQUIRE_LLAMACPP") != "1",
    reason="llama-cpp-python is not installed (bash scripts/install.sh builds it)")

SPIDER_ADAPTER = ASSETS_DIR / "adapters" / "smollm2-135m-spider-lora"
QUESTION = [{"role": "user", "content": "How many singers do we have? Answer with SQL."}]


@pytest.fixture(scope="module")
def engine(cpu_profile):
    return get_engine(cpu_profile.sql_model, cpu_profile.sql_adapter, engine="llamacpp")


def _next_token_logits(engine, messages, adapter) -> np.ndarray:
    def logits():
        llm = engine._model_for(adapter)
        engine._prefill(llm, engine._prompt_ids(messages), adapter)
        return engine._logits(llm).copy()

    return engine._call(logits)


def test_rotary_permute_is_the_gguf_layout_of_q_and_k(embedded_model_dir):
    """The reordering applied to lora_B is the one between the embedded GGUF's q/k and Hugging Face's."""
    import gguf
    from safetensors import safe_open

    from pipelines.engine.gguf_lora import rotary_permute
    from pipelines.engine.llamacpp_engine import gguf_model_path

    tensors = {t.name: t for t in gguf.GGUFReader(gguf_model_path("embedded:smollm2")).tensors}
    [weights_file] = embedded_model_dir.glob("*.safetensors")
    with safe_open(weights_file, "np") as hf:
        for gguf_name, hf_name, heads in (("blk.3.attn_q.weight", "model.layers.3.self_attn.q_proj.weight", 9),
                                          ("blk.3.attn_k.weight", "model.layers.3.self_attn.k_proj.weight", 3)):
            tensor = tensors[gguf_name]
            stored = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(tuple(reversed(tensor.shape)))
            assert not np.allclose(stored, hf.get_tensor(hf_name))
            np.testing.assert_allclose(stored, rotary_permute(hf.get_tensor(hf_name).astype(np.float32), heads))


def test_the_adapter_moves_the_logits_as_peft_does(engine, embedded_model_dir, cpu_profile):
    """Same next-token logits as transformers + PEFT in fp32 (llama.cpp rounds activations in its quantised
    products, so close, not equal) for the base, for the adapter merged into the F16 copy (the default adapter's
    requests) and for the same adapter as a LoRA switched on the base (any other adapter's)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32),
                                      cpu_profile.sql_adapter).eval()
    ids = torch.tensor([engine._prompt_ids(QUESTION)])
    with torch.inference_mode():
        with_adapter = model(ids).logits[0, -1].numpy()
        with model.disable_adapter():
            base = model(ids).logits[0, -1].numpy()
    engine.load_adapter(cpu_profile.sql_adapter, "default-as-lora")
    ours_base = _next_token_logits(engine, QUESTION, None)
    assert engine._merged[0] == "default"
    for adapter in ("default", "default-as-lora"):
        ours = _next_token_logits(engine, QUESTION, adapter)
        assert np.corrcoef(ours - ours_base, with_adapter - base)[0, 1] > 0.95, adapter
        assert np.corrcoef(ours, with_adapter)[0, 1] > 0.995, adapter
        assert int(ours.argmax()) == int(with_adapter.argmax()), adapter
    assert np.corrcoef(ours_base, base)[0, 1] > 0.995


def test_a_question_is_answered_through_the_adapter_with_the_schema_grammar(engine, cpu_profile, concert_singer):
    assert engine.info.engine.startswith("llama.cpp") and engine.info.dtype == "Q4_1 GGUF"
    answer = ask("How many singers do we have?", concert_singer, engine, dialect=cpu_profile.sql_dialect)
    assert answer.constrained == "on" and answer.attempts[0].grammar == "followed"
    assert answer.executed and answer.ok, answer.to_dict()
    assert answer.rows == [list(row) for row in concert_singer.run("SELECT count(*) FROM singer").rows]


def test_a_grammar_decides_the_output(engine):
    grammar = 'start: "SELECT " DIGIT " AS " ("yes" | "no")\nDIGIT: /[0-9]/'
    messages = [{"role": "user", "content": "Write a haiku about the sea."}]
    [[constrained]] = engine.generate([messages], SamplingParams(max_new_tokens=16, grammar=grammar), adapter=None)
    assert constrained.grammar == "followed" and constrained.finish_reason == "stop"
    head, _, tail = constrained.text.partition(" AS ")
    assert head[:-1] == "SELECT " and head[-1].isdigit() and tail in {"yes", "no"}, constrained.text


def test_streaming_matches_generate_and_times_the_first_token(engine):
    params = SamplingParams(max_new_tokens=24)
    [[whole]] = engine.generate([QUESTION], params)
    stream = engine.stream(QUESTION, params)
    pieces = list(stream)
    assert len(pieces) > 1 and "".join(pieces) == whole.text == stream.generation.text
    assert stream.generation.completion_tokens == whole.completion_tokens
    assert stream.ttft_ms > 0 and stream.tokens_per_s > 0


def test_a_shared_prefix_is_not_evaluated_again(engine):
    """A second question after the same system prompt and schema evaluates only what differs."""
    schema = [{"role": "system", "content": "Tables: singer(singer_id, name, country, age)." * 20}]
    engine.generate([schema + [{"role": "user", "content": "How many singers?"}]], SamplingParams(max_new_tokens=2))
    merged = engine._merged[1]
    second = engine._prompt_ids(schema + [{"role": "user", "content": "Oldest singer?"}])
    held = list(merged.input_ids[:merged.n_tokens])
    shared = next(i for i, (a, b) in enumerate(zip(held, second)) if a != b)
    assert shared > 200
    evaluated = []
    original = merged.eval
    merged.eval = lambda tokens: (evaluated.append(len(tokens)), original(tokens))[1]
    try:
        engine.generate([schema + [{"role": "user", "content": "Oldest singer?"}]], SamplingParams(max_new_tokens=1))
    finally:
        merged.eval = original
    assert evaluated[0] == len(second) - shared


def test_a_prompt_from_a_few_questions_ago_is_restored(engine):
    """Questions on two databases in turn: each finds its schema's KV cache saved, not only the last prompt's."""
    def on(schema, question):
        return [{"role": "system", "content": f"Tables: {schema}." * 20}, {"role": "user", "content": question}]

    singers, stadiums = "singer(singer_id, name, country, age)", "stadium(stadium_id, name, capacity)"
    params = SamplingParams(max_new_tokens=4)
    [[before]] = engine.generate([on(singers, "Oldest singer?")], params, adapter=None)
    engine.generate([on(singers, "How many singers?")], params, adapter=None)
    engine.generate([on(stadiums, "Largest stadium?")], params, adapter=None)
    hits, evaluated = engine.prompt_cache.hits, []
    original = engine.llm.eval
    engine.llm.eval = lambda tokens: (evaluated.append(len(tokens)), original(tokens))[1]
    try:
        [[after]] = engine.generate([on(singers, "Oldest singer?")], params, adapter=None)
    finally:
        engine.llm.eval = original
    assert engine.prompt_cache.hits == hits + 1
    assert evaluated[0] == 1  # the whole prompt was saved: only its last token runs again, for the logits
    assert after.text == before.text


def test_sampling_is_seeded_and_gives_n_per_prompt(engine):
    params = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.9, n=3, seed=7)
    first = engine.generate([QUESTION] * 2, params, adapter=None)
    again = engine.generate([QUESTION] * 2, params, adapter=None)
    assert [len(samples) for samples in first] == [3, 3]
    assert [g.text for samples in first for g in samples] == [g.text for samples in again for g in samples]
    assert len({g.text for g in first[0]}) > 1


def test_a_batch_decodes_its_rows_together_and_each_gets_its_own_answer(engine, concert_singer):
    """Three questions in one generate call: one llama.cpp decode per token for all three rows, and each row's
    SQL is the one it gets alone, on the merged default adapter and on a LoRA switched on the base. (The base
    alone writes no SQL: its near-tied choices make an exact comparison meaningless.)"""
    from pipelines.engine.llamacpp_engine import BatchContext
    from pipelines.sql.grammar import sql_grammar
    from pipelines.sql.pipeline import question_messages

    questions = ["How many singers do we have?", "List the names of the stadiums.", "What is the oldest age?"]
    conversations = [question_messages(question, concert_singer) for question in questions]
    params = SamplingParams(max_new_tokens=24, grammar=sql_grammar(concert_singer.schema))
    rows_per_call = []
    original = BatchContext.decode

    def counting(context, tokens):
        rows_per_call.append(len({row for _, _, row, _ in tokens}))
        return original(context, tokens)

    for adapter in ("default", ensure_adapter(engine, SPIDER_ADAPTER)):
        alone = [engine.generate([messages], params, adapter=adapter)[0][0] for messages in conversations]
        rows_per_call.clear()
        BatchContext.decode = counting
        try:
            together = [samples[0] for samples in engine.generate(conversations, params, adapter=adapter)]
        finally:
            BatchContext.decode = original
        assert [g.text for g in together] == [g.text for g in alone], adapter
        assert all(g.grammar == "followed" for g in together)
        assert rows_per_call and rows_per_call[0] == 3 and max(rows_per_call[1:]) == 3


def test_cancel_stops_a_stream(engine):
    stream = engine.stream(QUESTION, SamplingParams(max_new_tokens=200, temperature=1.0, seed=1), adapter=None)
    iterator = iter(stream)
    next(iterator)
    stream.cancel()
    list(iterator)
    assert stream.generation.finish_reason in {"cancelled", "stop"}
    assert stream.generation.completion_tokens < 200


def test_an_adapter_loads_at_run_time_and_base_adapter_differ(engine):
    name = ensure_adapter(engine, SPIDER_ADAPTER)
    assert engine.info.adapters[name] == str(SPIDER_ADAPTER)
    spider = _next_token_logits(engine, QUESTION, name)
    default = _next_token_logits(engine, QUESTION, "default")
    base = _next_token_logits(engine, QUESTION, None)
    assert not np.allclose(spider, default) and not np.allclose(spider, base)


def test_what_it_cannot_load_is_said(engine, tmp_path):
    with pytest.raises(ModelNotAvailable, match="reads GGUF files"):
        get_engine("HuggingFaceTB/SmolLM2-135M-Instruct", engine="llamacpp")
    with pytest.raises(ModelNotAvailable, match="not a PEFT LoRA adapter"):
        engine.load_adapter(str(tmp_path), "empty")


def test_the_cli_answers_through_llamacpp(concert_singer):
    command = [sys.executable, "-m", "pipelines", "sql", "--profile", "cpu", "--engine", "llamacpp",
               "--db", str(ensure_demo_databases()["concert_singer"].path), "--question", "How many singers do we have?"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout)
    assert answer["rows"] == [list(row) for row in concert_singer.run("SELECT count(*) FROM singer").rows]
