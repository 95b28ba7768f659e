"""The Whisper tags LoRA end to end on espeak-ng clips: SFT learns to write `[whispers]` for whispered speech and
nothing for plain speech, RAFT samples/scores/curates and continues it, cancel keeps a checkpoint that resume
finishes, the Listen pipeline serves the adapter, and eval-tags prints the seed's table."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from pipelines.speech.metrics import raft_reward

@pytest.fixture(scope="module")
def sft_adapter(tag_clips, tmp_path_factory):
    from pipelines.training.tags_train import tag_config, train_tags

    out = tmp_path_factory.mktemp("tags") / "sft"
    result = train_tags(tag_config("sft", str(tag_clips), str(out), max_steps=40, batch_size=4, learning_rate=2e-3))
    assert result.completed and result.steps == 40 and result.final_loss < result.loss_history[0]["loss"]
    return out


def test_reward_is_the_seeds_formula_and_the_variant_penalises_over_emitting():
    assert raft_reward("[whispers] keep it down", "[whispers] keep it down") == pytest.approx(1.0)
    # right words, no tag: 0.4 + 0 (F1) + 0.2 (nothing hallucinated)
    assert raft_reward("[whispers] keep it down", "keep it down") == pytest.approx(0.6)
    over = "[whispers] [sighs] [laughs] keep it down"
    assert raft_reward("[whispers] keep it down", over, "over-emit") == pytest.approx(
        raft_reward("[whispers] keep it down", over) - 0.2)
    with pytest.raises(ValueError):
        raft_reward("a", "a", "nope")


def test_sft_learns_whispered_from_plain(sft_adapter, tag_clips):
    from pipelines.speech.whisper_tags import WhisperTagChannel
    from pipelines.speech.tag_data import load_tag_examples
    from pipelines.training.tags_train import read_clip

    channel = WhisperTagChannel(sft_adapter)
    examples = load_tag_examples(tag_clips)
    texts = [group[0].text for group in channel.sample([read_clip(e.audio) for e in examples])]
    for example, text in zip(examples, texts):
        assert text.startswith("[whispers]") == example.reference.startswith("[whispers]"), (example, text)
    card = json.loads((sft_adapter / "training.json").read_text())
    assert card["config"]["method"] == "sft" and card["status"] == "completed"


def test_raft_samples_scores_curates_and_continues_the_adapter(sft_adapter, tag_clips, tmp_path):
    from pipelines.training.tags_train import tag_config, train_tags

    out = tmp_path / "raft"
    result = train_tags(tag_config("raft", str(tag_clips), str(out), init_adapter=str(sft_adapter), samples=2,
                                   batch_size=4, drop_fraction=0.25))
    assert result.completed and (out / "adapter_model.safetensors").is_file()
    raft = json.loads((out / "raft.json").read_text())
    assert raft["clips"] == 8 and raft["reward_all"]["n"] == 16 and raft["kept"] == 6 and raft["dropped"] == 2
    assert 0 <= raft["reward_kept"]["p10"] <= raft["reward_kept"]["mean"] <= 1
    assert raft["reward_kept"]["mean"] >= raft["reward_best"]["mean"] >= raft["reward_all"]["mean"]
    assert result.data["trained_on"] == 6 and result.config["learning_rate"] == 1e-4  # the RAFT default


def test_raft_needs_an_sft_adapter(tag_clips, tmp_path):
    from pipelines.errors import BadInput
    from pipelines.training.tags_train import tag_config

    with pytest.raises(BadInput, match="--from"):
        tag_config("raft", str(tag_clips), str(tmp_path / "x"))


def test_raft_on_voxtral_samples_its_streams_and_continues_its_adapter(tag_clips, tmp_path_factory, capsys):
    """The gpu profile's recipe (Voxtral Realtime + an evoxtral-style tag LoRA), run by the CLI on the tiny random
    Voxtral and its tiny tag LoRA: the kept candidates are the sampled token streams, the LoRA moves, the result
    loads into the Listen tab's engine."""
    from safetensors.torch import load_file

    from pipelines.__main__ import main
    from pipelines.speech.testing import tiny_voxtral_with_adapter
    from pipelines.speech.voxtral import VoxtralEngine

    model, init = tiny_voxtral_with_adapter(tmp_path_factory.getbasetemp() / "speech-models")
    out = tmp_path_factory.mktemp("voxtral-raft") / "raft"
    assert main(["train-tags", "--method", "raft", "--base-model", str(model), "--from", str(init),
                 "--data", str(tag_clips), "--output", str(out), "--samples", "2", "--batch-size", "4",
                 "--max-clips", "4", "--epochs", "2"]) == 0  # 2 steps: the first is the warm-up's, at rate 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "completed" and summary["steps"] == 2  # 4 kept clips, 4 per step
    raft = json.loads((out / "raft.json").read_text())
    assert raft["clips"] == 4 and raft["reward_all"]["n"] == 8 and raft["kept"] == 4
    info = json.loads((out / "training.json").read_text())
    assert info["config"]["base_model"] == str(model) and info["data"]["trained_on"] == 4
    before, after = load_file(init / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    card = (out / "README.md").read_text()
    assert f"base_model: {model}" in card and "tags: [voxtral" in card and "RAFT: 2 samples per clip" in card
    engine = VoxtralEngine(str(model), str(out), device="cpu")
    assert len(engine.sample(np.zeros(16_000, dtype=np.float32), 2, seed=0)) == 2


def test_voxtral_raft_trains_on_the_sampled_stream_token_for_token(tag_clips, tmp_path_factory):
    from pipelines.speech.tag_data import load_tag_examples
    from pipelines.speech.testing import tiny_voxtral_with_adapter
    from pipelines.training.tags_train import raft_curate, tag_config
    from pipelines.training.tags_voxtral import voxtral_model_and_collator

    model, init = tiny_voxtral_with_adapter(tmp_path_factory.getbasetemp() / "speech-models")
    config = tag_config("raft", str(tag_clips), str(tmp_path_factory.mktemp("unused")), base_model=str(model),
                        init_adapter=str(init), samples=2, drop_fraction=0.5)
    rows, summary = raft_curate(config, load_tag_examples(tag_clips, 2), lambda event: None, None, 0.0)
    assert summary["kept"] == 1 and len(rows) == 1 and rows[0]["token_ids"]
    peft_model, collate = voxtral_model_and_collator(config)
    batch = collate(rows)
    labels = batch["labels"][0].tolist()
    prompt = labels.count(-100)
    assert labels[prompt:] == rows[0]["token_ids"] and batch["input_ids"][0, prompt:].tolist() == labels[prompt:]
    assert torch.isfinite(peft_model(**batch).loss)


def test_sft_on_voxtral_is_refused_with_the_reason(tag_clips, tmp_path):
    from pipelines.errors import BadInput
    from pipelines.training.tags_train import tag_config

    with pytest.raises(BadInput, match="time-aligned"):
        tag_config("sft", str(tag_clips), str(tmp_path / "x"), base_model="mistralai/Voxtral-Mini-4B-Realtime-2602")


def test_cancel_keeps_a_checkpoint_and_resume_finishes(tag_clips, tmp_path):
    from pipelines.training.tags_train import TagTrainConfig, tag_config, train_tags

    out = tmp_path / "cancelled"
    cancel = threading.Event()

    def progress(event):
        if event.step >= 2:
            cancel.set()

    first = train_tags(tag_config("sft", str(tag_clips), str(out), max_steps=6, batch_size=4, save_steps=50),
                       progress, cancel)
    assert first.status == "cancelled" and first.checkpoint and 2 <= first.steps < 6
    resumed = train_tags(TagTrainConfig(method="sft", data="", output_dir=str(out), resume=True))
    assert resumed.completed and resumed.steps == 6 and (out / "adapter_config.json").is_file()


def test_the_listen_pipeline_serves_the_adapter(sft_adapter, tag_clips):
    from pipelines.profiles import resolve_profile
    from pipelines.speech.transcribe import transcribe_file

    profile = resolve_profile("cpu", tag_adapter=str(sft_adapter))
    whispered = transcribe_file(tag_clips.parent / "en-us-whisper-0.wav", profile).to_dict()
    plain = transcribe_file(tag_clips.parent / "en-us-0.wav", profile).to_dict()
    assert whispered["tag_channel"] == "on" and whispered["tags_filtered"] == ["whispers"]
    assert whispered["merged"].startswith("[whispers] ") and "whispers" not in whispered["text"]
    assert whispered["tag_events"][0]["time"] is not None  # timed by the ASR words
    assert plain["tags"] == [] and plain["merged"] == plain["text"]


def test_eval_tags_prints_the_seed_table(sft_adapter, tag_clips, tmp_path, capsys):
    from pipelines.__main__ import main

    report_path = tmp_path / "report.json"
    assert main(["eval-tags", "--data", str(tag_clips), "--sft", str(sft_adapter), "--out", str(report_path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    table = summary["table"]
    assert list(table) == ["Base", "SFT"] and summary["n"] == 8
    assert table["Base"]["recall"] == pytest.approx(0.5)  # only the plain clips, which need no tag
    assert table["SFT"]["f1"] > table["Base"]["f1"]
    report = json.loads(report_path.read_text())
    assert report["command"].startswith("python -m pipelines eval-tags") and len(report["clips"]) == 8


def test_a_live_session_gets_the_tags_at_stop(sft_adapter, tag_clips):
    import numpy as np
    import soundfile as sf
    import soxr

    from pipelines.profiles import resolve_profile
    from pipelines.speech.session import ListenSession
    from pipelines.speech.transcribe import get_speech_engine

    audio, rate = sf.read(tag_clips.parent / "en-us-whisper-1.wav", dtype="float32")
    mic = (soxr.resample(audio, rate, 48_000) * 32767).astype(np.int16)
    session = ListenSession(get_speech_engine(resolve_profile("cpu", tag_adapter=str(sft_adapter))), tags=True)
    for i in range(0, len(mic), 12_000):  # 0.25 s chunks, as the page sends them
        session.receive(48_000, mic[i:i + 12_000])
    final = session.finish(timeout=120)
    assert not final.partial and final.tag_channel == "on"
    assert final.tags_filtered == ["whispers"] and final.merged.startswith("[whispers] ")
