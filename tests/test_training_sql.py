"""train-sql on a tiny random Llama: a few real TRL steps -> an adapter the SQL pipeline loads and uses.

The model is random, so the SQL it writes is junk: these tests check mechanics (completion-only labels,
checkpoints, cancel and resume, the card, loading the adapter into the app's pipeline), not quality.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from pipelines.errors import BadInput
from pipelines.spider.tiny import build_tiny_spider
from pipelines.training import model_card
from pipelines.training.sql_sft import (
    CHECKPOINTS,
    PRESETS,
    Hardware,
    TrainConfig,
    build_trainer,
    choose_hardware,
    config_from_preset,
    quantization_config,
    train_sql,
)

STEPS = 4


@pytest.fixture(scope="module")
def tiny_spider(tmp_path_factory):
    return build_tiny_spider(tmp_path_factory.mktemp("tiny-spider"))



def tiny_config(data, output_dir, model_dir, **overrides) -> TrainConfig:
    values = dict(model=str(model_dir), max_steps=STEPS, grad_accum=2, max_length=256, save_steps=2,
                  learning_rate=1e-3, lora_r=4, lora_alpha=8)
    return config_from_preset("cpu-quick", str(data), str(output_dir), **{**values, **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_spider, tiny_llama_dir):
    """One finished run on the tiny Spider, with every progress report."""
    events = []
    out = tmp_path_factory.mktemp("runs") / "adapter"
    result = train_sql(tiny_config(tiny_spider, out, tiny_llama_dir, save_dtype="fp16"), events.append,
                       command="pytest")
    return result, events


def test_presets_are_plain_values_and_the_seed_recipe_matches_the_card():
    seed = PRESETS["seed"]
    assert (seed["lora_r"], seed["lora_alpha"], seed["lora_dropout"]) == (32, 64, 0.1)
    assert set(seed["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert seed["max_length"] == 2048 and seed["epochs"] == 3 and seed["learning_rate"] == 2e-4
    assert seed["neftune_alpha"] == 5.0 and seed["grad_accum"] == 16 and seed["packing"]
    config = config_from_preset("CPU quick", "data", "out", learning_rate=1e-3, epochs=None)
    assert config.preset == "cpu-quick" and config.learning_rate == 1e-3
    assert config.epochs == PRESETS["cpu-quick"]["epochs"]
    with pytest.raises(BadInput, match="unknown preset"):
        config_from_preset("turbo", "data", "out")


def test_plain_lora_on_cpu_and_qlora_only_with_cuda_and_bitsandbytes(monkeypatch):
    import torch

    from pipelines.training import sql_sft

    config = TrainConfig(data="d", output_dir="o")
    monkeypatch.setattr(sql_sft, "cuda_available", lambda: False)
    monkeypatch.setattr(sql_sft, "bitsandbytes_available", lambda: True)
    assert choose_hardware(config) == Hardware("cpu", "none", "fp32", "adamw_torch")
    assert quantization_config(choose_hardware(config)) is None
    with pytest.raises(BadInput, match="CUDA GPU and the bitsandbytes"):
        choose_hardware(TrainConfig(data="d", output_dir="o", quantization="nf4"))

    monkeypatch.setattr(sql_sft, "cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(sql_sft, "bitsandbytes_available", lambda: False)
    assert choose_hardware(config) == Hardware("cuda", "none", "bf16", "adamw_torch")
    monkeypatch.setattr(sql_sft, "bitsandbytes_available", lambda: True)
    hardware = choose_hardware(config)
    assert hardware == Hardware("cuda", "nf4", "bf16", "paged_adamw_8bit")
    bnb = quantization_config(hardware)
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_use_double_quant
    assert bnb.bnb_4bit_compute_dtype == torch.bfloat16


def test_loss_covers_only_the_sql_and_packing_keeps_examples_apart(tiny_spider, tiny_llama_dir, tmp_path):
    from transformers import AutoTokenizer

    from pipelines.training.sql_data import build_dataset, load_training_data

    config = tiny_config(tiny_spider, tmp_path / "out", tiny_llama_dir, max_length=2048)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    data = load_training_data(tiny_spider)
    dataset, _ = build_dataset(data, tokenizer, config.max_length)
    trainer = build_trainer(config, choose_hardware(config), dataset, tokenizer, str(tiny_llama_dir))
    assert len(trainer.train_dataset) == 1  # three short examples, packed into one block
    row = trainer.train_dataset[0]
    assert sorted(row["seq_lengths"]) == sorted(
        len(tokenizer.apply_chat_template(e.conversation(), tokenize=True, return_dict=True)["input_ids"])
        for e in data.examples)
    trained_text = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])
    for example in data.examples:  # each SQL and its end-of-turn token, nothing of the prompts
        assert f"{example.query}<|im_end|>" in trained_text
    assert "CREATE TABLE" not in trained_text and "assistant" not in trained_text
    batch = trainer.data_collator([row])
    assert "attention_mask" not in batch and batch["position_ids"][0].tolist().count(0) == 3
    # Packed (padding-free) blocks: attention stays inside each example, as SFTTrainer runs it (no cache).
    import torch

    model = trainer.model.eval()
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        first = row["seq_lengths"][0]
        alone = model(input_ids=torch.tensor([row["input_ids"][:first]]), use_cache=False).logits
    assert torch.allclose(packed[0, :first], alone[0], atol=1e-4)
    second = row["seq_lengths"][1]
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([row["input_ids"][first:first + second]]), use_cache=False).logits
    assert torch.allclose(packed[0, first:first + second], alone[0], atol=1e-4)


def test_training_saves_an_adapter_with_a_card(trained, tiny_llama_dir):
    result, events = trained
    out = result.adapter_dir
    assert result.completed and result.steps == STEPS and result.max_steps == STEPS
    assert [h["step"] for h in result.loss_history] == list(range(1, STEPS + 1))
    assert all(h["loss"] > 0 for h in result.loss_history)
    files = {p.name for p in Path(out).iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "training.json"} <= files
    assert CHECKPOINTS not in files  # removed once finished
    card = (Path(out) / "README.md").read_text()
    assert "r=4, alpha=8" in card and "completion only" in card and "packed" in card
    assert "1 database file missing" in card and "3 of 4 read" in card  # the ghost question, skipped
    assert "wall time" in card and "`pytest`" in card and "Not evaluated yet" in card and "saved as fp16" in card
    from safetensors import safe_open

    with safe_open(str(Path(out) / "adapter_model.safetensors"), "pt") as weights:
        names = list(weights.keys())
        assert names and all("lora_" in n for n in names)
        assert {str(weights.get_tensor(n).dtype) for n in names} == {"torch.float16"}
    info = model_card.read_training_info(out)
    assert info["config"]["model"] == str(tiny_llama_dir) and info["data"]["examples"] == 3
    # Progress: data, model, training steps with loss and ETA, checkpoints, done.
    stages = [e.stage for e in events]
    assert stages[0] == "data" and "model" in stages and stages[-1] == "done"
    losses = [e for e in events if e.loss is not None and e.stage == "train"]
    assert [e.step for e in losses] == list(range(1, STEPS + 1))
    assert losses[-1].eta_s == pytest.approx(0, abs=1e-6) and losses[0].eta_s > 0
    assert any(e.stage == "save" and "checkpoint" in e.message for e in events)


def test_the_sql_pipeline_loads_and_uses_the_trained_adapter(trained, tiny_llama_dir, shop_db):
    import torch

    from pipelines.engine.transformers_engine import TransformersEngine
    from pipelines.sql.databases import DuckDBDatabase
    from pipelines.sql.pipeline import ask

    result, _ = trained
    engine = TransformersEngine(str(tiny_llama_dir), result.adapter_dir)  # fp16 weights into an fp32 model
    lora = [p for n, p in engine.model.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in lora)
    assert any(p.abs().sum() > 0 for n, p in engine.model.named_parameters() if "lora_B" in n)  # trained, loaded
    assert engine.info.adapters == {"default": result.adapter_dir} and engine.info.default_adapter == "default"
    answer = ask("How many customers are there?", DuckDBDatabase(shop_db), engine, max_retries=1)
    assert answer.adapter == result.adapter_dir
    assert 1 <= len(answer.attempts) <= 2  # junk SQL from a random model, but the whole loop ran


def test_base_model_check(trained, tiny_llama_dir, tmp_path):
    result, _ = trained
    model_card.check_base_model(result.adapter_dir, str(tiny_llama_dir))
    with pytest.raises(BadInput, match="trained on"):
        model_card.check_base_model(result.adapter_dir, "embedded:smollm2")
    with pytest.raises(BadInput, match="holds no adapter"):
        model_card.check_base_model(tmp_path, str(tiny_llama_dir))
    config = json.loads((Path(result.adapter_dir) / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_llama_dir)


def test_output_folder_is_never_silently_replaced(trained, tiny_spider, tiny_llama_dir):
    result, _ = trained
    with pytest.raises(BadInput, match="already holds an adapter"):
        train_sql(tiny_config(tiny_spider, result.adapter_dir, tiny_llama_dir))
    with pytest.raises(BadInput, match="nothing to resume"):
        train_sql(TrainConfig(data="", output_dir=result.adapter_dir, resume=True))
    elsewhere = Path(result.adapter_dir).parent / "a-project"
    elsewhere.mkdir()
    (elsewhere / "README.md").write_text("someone's own readme")
    with pytest.raises(BadInput, match="not empty and holds no adapter"):
        train_sql(tiny_config(tiny_spider, elsewhere, tiny_llama_dir, overwrite=True))
    assert (elsewhere / "README.md").read_text() == "someone's own readme"


def test_cancel_keeps_a_checkpoint_and_resume_finishes_the_run(count_jsonl, tiny_llama_dir, tmp_path):
    out = tmp_path / "adapter"
    cancel = threading.Event()
    events = []

    def progress(event):
        events.append(event)
        if event.stage == "train" and event.step == 2 and "micro-batch 1/" in event.message:
            cancel.set()  # mid-way through step 3: the finished steps must survive

    result = train_sql(tiny_config(count_jsonl, out, tiny_llama_dir), progress, cancel)
    assert result.status == "cancelled" and result.adapter_dir is None and result.steps == 2
    assert result.checkpoint and result.checkpoint.endswith("checkpoint-2")
    assert not (out / "adapter_config.json").exists()
    assert events[-1].stage == "cancelled"
    with pytest.raises(BadInput, match="unfinished run"):
        train_sql(tiny_config(count_jsonl, out, tiny_llama_dir))

    events.clear()
    resumed = train_sql(TrainConfig(data="", output_dir=str(out), resume=True), events.append)
    assert resumed.completed and resumed.steps == STEPS
    assert any("resuming at step 2" in e.message for e in events)
    assert [e.step for e in events if e.loss is not None and e.stage == "train"] == [3, 4]
    assert [h["step"] for h in resumed.loss_history] == [1, 2, 3, 4]  # the history survives the resume
    assert resumed.config["data"] == str(count_jsonl) and resumed.wall_time_s >= result.wall_time_s
    assert (out / "adapter_config.json").exists() and not (out / CHECKPOINTS).exists()


def test_cancel_before_training_starts(count_jsonl, tiny_llama_dir, tmp_path):
    cancel = threading.Event()
    cancel.set()
    result = train_sql(tiny_config(count_jsonl, tmp_path / "adapter", tiny_llama_dir), None, cancel)
    assert result.status == "cancelled" and result.steps == 0 and result.adapter_dir is None


def test_before_after_evaluation_goes_into_the_card(trained, tiny_spider, tmp_path):
    from pipelines.training.sql_sft import evaluate_adapter

    result, _ = trained
    calls = []
    reports = evaluate_adapter(result.adapter_dir, tiny_spider, limit=3, seed=0,
                               progress=lambda kind, done, total: calls.append((kind, done, total)),
                               predictions_dir=tmp_path, command="python -m pipelines eval-adapter ...")
    assert set(reports) == {"base", "adapter"}
    assert reports["adapter"].adapter == result.adapter_dir and reports["base"].adapter is None
    assert reports["base"].questions == reports["adapter"].questions == 3
    assert calls[-1] == ("adapter", 3, 3) and ("base", 3, 3) in calls
    saved = model_card.read_evaluations(result.adapter_dir)
    assert saved["adapter"]["limit"] == 3 and saved["base"]["metadata"]["command"].endswith("eval-adapter ...")
    for kind in ("base", "adapter"):
        lines = (tmp_path / f"predictions-{kind}.jsonl").read_text().splitlines()
        assert len(lines) == 3 and {"predicted_sql", "gold_sql", "correct"} <= set(json.loads(lines[0]))
    card = (Path(result.adapter_dir) / "README.md").read_text()
    assert "| base model |" in card and "| with this adapter |" in card and "seeded sample of 3" in card


def test_continued_training_starts_from_an_adapter_and_records_its_dialect(trained, tiny_spider, tiny_llama_dir,
                                                                           tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from pipelines.profiles import adapter_dialect, resolve_profile

    monkeypatch.setenv("VOXQL_CACHE", str(tmp_path / "cache"))
    first, _ = trained
    out = tmp_path / "continued"
    result = train_sql(tiny_config(tiny_spider, out, tiny_llama_dir, init_adapter=first.adapter_dir, max_steps=2,
                                   value_hints=True, target_dialect="duckdb", lora_r=8))
    assert result.completed
    config = json.loads((Path(first.adapter_dir) / "adapter_config.json").read_text())
    assert json.loads((out / "adapter_config.json").read_text())["r"] == config["r"] == 4  # the adapter's shape
    before = load_file(str(Path(first.adapter_dir) / "adapter_model.safetensors"))
    after = load_file(str(out / "adapter_model.safetensors"))
    assert before.keys() == after.keys()
    assert any(not (before[k].float() == after[k].float()).all() for k in before)  # trained further
    # The adapter says what it writes, and the profile follows it (a Spider adapter writes SQLite)
    assert adapter_dialect(str(out)) == "duckdb" and adapter_dialect(first.adapter_dir) == "sqlite"
    assert adapter_dialect("pyloxsystems/sql-spider-llama-3.1-8b-lora") == "sqlite"
    assert resolve_profile("cpu", sql_adapter=str(out)).sql_dialect == "duckdb"
    monkeypatch.setenv("VOXQL_SQL_DIALECT", "sqlite")
    assert resolve_profile("cpu", sql_adapter=str(out)).sql_dialect == "sqlite"


def test_continued_training_needs_an_adapter_folder(tiny_spider, tiny_llama_dir, tmp_path):
    with pytest.raises(BadInput, match="adapter_config.json"):
        train_sql(tiny_config(tiny_spider, tmp_path / "x", tiny_llama_dir, init_adapter=str(tmp_path)))
