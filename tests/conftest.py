"""Shared fixtures: a private model cache, tiny random Llama models and real LoRA adapters for them.

Everything is built in temporary folders from configs, so the loading, adapter, prompt and decoding code under
test is the production code, and no test needs the network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

# Before anything imports huggingface_hub (gradio does, at collection): it reads this once, at import, and a
# lookup of a missing Hub id would otherwise wait on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO_ROOT = Path(__file__).resolve().parents[1]
SPIDER_DIR = Path(os.environ.get("VOXQL_SPIDER_DIR") or REPO_ROOT.parent / "shared" / "spider")

# The question the tiny adapter is trained to answer, and the answer it learns.
TAUGHT_QUESTION = "How many customers are there?"
TAUGHT_SQL = "SELECT count(*) AS customers FROM customers"


@pytest.fixture(scope="session", autouse=True)
def voxql_cache(tmp_path_factory) -> Path:
    """One model cache for the whole run (the embedded model converts once), never the user's own."""
    path = Path(os.environ.get("VOXQL_TEST_CACHE") or tmp_path_factory.mktemp("voxql-cache"))
    os.environ["VOXQL_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def embedded_model_dir(voxql_cache) -> Path:
    from pipelines.engine.loading import embedded_smollm2_dir

    return embedded_smollm2_dir()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, embedded_model_dir) -> Path:
    """A random 2-layer Llama with SmolLM2's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    # Large random embeddings (tied to the output layer) let a LoRA reach confident logits in a few steps.
    model.model.embed_tokens.weight.data.normal_(0, 1.0)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def cpu_profile():
    from pipelines.profiles import resolve_profile

    return resolve_profile("cpu")


@pytest.fixture(scope="session")
def concert_singer():
    """The bundled concert_singer demo database, as the app opens it."""
    from pipelines.sql.databases import DuckDBDatabase
    from pipelines.sql.demo_data import ensure_demo_databases

    demo = ensure_demo_databases()["concert_singer"]
    return DuckDBDatabase(demo.path, name=demo.name)


@pytest.fixture(scope="session")
def shop_db(tmp_path_factory) -> Path:
    """A small shop database built by the production builder."""
    from pipelines.sql.demo_data import build_shop

    return build_shop(tmp_path_factory.mktemp("db") / "shop.duckdb", customers=50, products=10, orders=500)


@pytest.fixture(scope="session")
def taught_adapter_dir(tmp_path_factory, tiny_llama_dir, shop_db) -> Path:
    """A real LoRA for the tiny Llama, trained until it answers TAUGHT_QUESTION with TAUGHT_SQL.

    The base model stays random, so with the adapter off the same prompt gives noise: that is what the
    adapter-switch tests rely on. The prompts are built by the production prompt code, in each form the tests
    ask in.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipelines.sql.databases import DuckDBDatabase
    from pipelines.sql.demo_data import ensure_demo_databases
    from pipelines.sql.pipeline import question_messages

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    target_ids = tokenizer(TAUGHT_SQL, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    rows = []
    # The pipeline tests ask the test shop in DuckDB, with value hints or (a pasted schema, a broken file) without;
    # the CLI asks it, and the app its demo shop, in the profile's dialect (SQLite).
    forms = ((shop_db, "duckdb", True), (shop_db, "duckdb", False), (shop_db, "sqlite", True),
             (ensure_demo_databases()["shop"].path, "sqlite", True))
    for path, dialect, value_hints in forms:
        messages = question_messages(TAUGHT_QUESTION, DuckDBDatabase(path, name="shop"), dialect=dialect,
                                     value_hints=value_hints)
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        rows.append(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    width = max(len(prompt_ids) for prompt_ids in rows) + len(target_ids)
    pad = tokenizer.pad_token_id
    # Left-padded so every row ends with its answer; padding is masked out of attention and loss.
    input_ids = torch.tensor([[pad] * (width - len(p) - len(target_ids)) + p + target_ids for p in rows])
    attention_mask = torch.tensor([[0] * (width - len(p) - len(target_ids)) + [1] * (len(p) + len(target_ids))
                                   for p in rows])
    targets = torch.tensor([target_ids] * len(rows))
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # each row counts from 0, as at inference

    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                            "up_proj", "down_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(400):
        # Logits for the answer positions only: the whole sequence's would be rows x tokens x 49k floats.
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       logits_to_keep=len(target_ids) + 1).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if loss.item() < 0.02:
            break
    path = tmp_path_factory.mktemp("taught-lora")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def count_jsonl(tmp_path_factory) -> Path:
    """Training data as a JSONL file: 24 `{question, query, schema}` rows that each count one table's rows."""
    rows = [{"question": f"How many rows does table t{i} have?", "query": f"SELECT count(*) FROM t{i}",
             "schema": f"CREATE TABLE t{i} (id INTEGER PRIMARY KEY, name VARCHAR);"} for i in range(24)]
    path = tmp_path_factory.mktemp("jsonl") / "train.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows))
    return path


TAG_SENTENCES = ["keep it down please", "we should leave now", "the report is ready", "call me after lunch"]


@pytest.fixture(scope="session")
def tag_clips(tmp_path_factory):
    """Eight espeak-ng clips, four sentences said plainly and whispered, with references in the seed's format."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng): no clips to train on")
    folder = tmp_path_factory.mktemp("tag-clips")
    rows = []
    for i, sentence in enumerate(TAG_SENTENCES):
        for voice, prefix in (("en-us", ""), ("en-us+whisper", "[whispers] ")):
            name = f"{voice.replace('+', '-')}-{i}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(folder / name), sentence], check=True)
            rows.append({"audio": name, "reference": prefix + sentence})
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return data


@pytest.fixture(scope="session")
def tiny_ultravox(tmp_path_factory, tiny_llama_dir):
    """A random projector whose config names a tiny random Whisper and the tiny Llama by folder."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    from pipelines.speech.ultravox import UltravoxConfig, UltravoxProjector, save_ultravox

    torch.manual_seed(0)
    whisper = tmp_path_factory.mktemp("whisper")
    WhisperModel(WhisperConfig(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                               decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                               vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                               decoder_start_token_id=1)).save_pretrained(whisper)
    WhisperFeatureExtractor().save_pretrained(whisper)
    config = UltravoxConfig(audio_model_id=str(whisper), text_model_id=str(tiny_llama_dir), hidden_size=64)
    return save_ultravox(tmp_path_factory.mktemp("ultravox"), config, UltravoxProjector(config, 16, 32))


# -- browser suites: a module defines `app_url`; these give it a Chromium page and a screenshot folder ---------------
@pytest.fixture(scope="module")
def page(app_url):
    from tests.listen_browser import app_page

    with app_page(app_url) as tab:
        yield tab


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    from tests.listen_browser import screenshot_folder

    return screenshot_folder(tmp_path_factory)
