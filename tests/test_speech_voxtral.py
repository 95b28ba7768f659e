"""Voxtral Realtime + tag LoRA on a tiny random model: whole-file and streaming paths, adapter routing,
users in parallel, the merge into a Transcript, and the CLI. The base's random weights emit junk, so these
tests check mechanics (shapes, routing, equality with transformers' own decoding), never words; the tiny tag
LoRA is really trained (on the production input path) to write one tag, and that tag must come through."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipelines.__main__ import main
from pipelines.errors import BadInput, ModelNotAvailable
from pipelines.profiles import resolve_profile
from pipelines.speech.audio import ADAPTER_MIN_SAMPLES
from pipelines.speech.session import ListenSession
from pipelines.speech.tags import TAGS, parse_tags
from pipelines.speech.testing import TAUGHT_TAGS
from pipelines.speech.transcribe import NO_ADAPTER, TAGS_NEED_VOXTRAL, get_speech_engine, transcribe_file
from pipelines.speech.voxtral import BASE_ROW, TAG_ADAPTER, VoxtralEngine, get_voxtral


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads, and on shared cores extra threads thrash (10x slower here)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_voxtral(tmp_path_factory):
    from pipelines.speech.testing import tiny_voxtral_with_adapter

    return tiny_voxtral_with_adapter(tmp_path_factory.getbasetemp() / "speech-models")


@pytest.fixture(scope="session")
def engine(tiny_voxtral) -> VoxtralEngine:
    model, adapter = tiny_voxtral
    return get_voxtral(str(model), str(adapter))


@pytest.fixture(scope="session")
def plain_model(tiny_voxtral, engine):
    if engine.device != "cpu":  # bf16 on a GPU: batched and single-row numerics may differ in the last bit
        pytest.skip("exact-equality checks run on the CPU (float32)")
    from transformers import VoxtralRealtimeForConditionalGeneration

    return VoxtralRealtimeForConditionalGeneration.from_pretrained(tiny_voxtral[0]).eval()


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * 16_000)) * 0.1).astype(np.float32)


def reference_stream_tokens(model, processor, audio: np.ndarray) -> list[int]:
    """transformers' own streaming decode (generate with a generator of feature chunks), as its docs show."""
    audio = np.concatenate([audio, np.zeros(processor.num_right_pad_tokens * processor.raw_audio_length_per_tok,
                                            dtype=np.float32)])
    first = processor(audio[:processor.num_samples_first_audio_chunk], is_streaming=True, is_first_audio_chunk=True,
                      return_tensors="pt")

    def chunks():
        yield first.input_features
        hop, win = processor.feature_extractor.hop_length, processor.feature_extractor.win_length
        frame = processor.num_mel_frames_first_audio_chunk
        start = frame * hop - win // 2
        while start + processor.num_samples_per_audio_chunk <= len(audio):
            yield processor(audio[start:start + processor.num_samples_per_audio_chunk], is_streaming=True,
                            is_first_audio_chunk=False, return_tensors="pt").input_features
            frame += processor.audio_length_per_tok
            start = frame * hop - win // 2

    out = model.generate(input_ids=first.input_ids, input_features=chunks(),
                         num_delay_tokens=int(first.num_delay_tokens))
    return out[0, first.input_ids.shape[1]:].tolist()


def stream_tokens(engine, audio: np.ndarray, chunk: int = 7_000, tags: bool = True) -> list[list[int]]:
    stream = engine.stream(tags=tags)
    for start in range(0, len(audio), chunk):
        stream.feed(audio[start:start + chunk])
    stream.finish()
    return [s.ids for s in stream.streams]


# -- whole file ---------------------------------------------------------------------------------------------------
def test_offline_inputs_follow_the_adapters_training_rules(engine):
    inputs = engine.offline_inputs(noise(1.0))
    frames = inputs["input_features"].shape[-1]
    assert frames % 8 == 0
    assert frames * 160 >= ADAPTER_MIN_SAMPLES  # padded to the trained length (plus the model's own padding)
    processor = engine.processor
    assert inputs["input_ids"].shape[1] == 1 + processor.mistral_common_audio_config.n_left_pad_tokens \
        + processor.num_delay_tokens
    assert isinstance(inputs["num_delay_tokens"], int)


def test_both_channels_run_in_one_batch_and_the_adapter_only_touches_the_tag_row(engine, plain_model):
    inputs = engine.offline_inputs(noise(1.0))
    both = engine._generate(inputs, [BASE_ROW, TAG_ADAPTER], do_sample=False)
    alone = plain_model.generate(**inputs, do_sample=False)
    assert both.shape[0] == 2
    assert both[0].tolist() == alone[0].tolist()  # ASR row == the base model without any adapter
    assert both[1].tolist() != both[0].tolist()  # the tag row is changed by the LoRA
    frames = inputs["input_features"].shape[-1]
    assert both.shape[1] == frames // 8  # one token per 80 ms of (padded) audio


def test_whole_file_transcribe_returns_both_channels_and_can_switch_tags_off(engine):
    asr, tag = engine.transcribe(noise(1.0))
    assert tag is not None and asr.elapsed_ms > 0
    assert all(m.time is not None for m in tag.mentions)
    asr_only, none = engine.transcribe(noise(1.0), tags=False)
    assert none is None
    assert asr_only.text == asr.text  # the ASR channel does not depend on the tag channel running


def test_memory_one_base_with_adapter(engine):
    info = engine.info
    assert info.adapter_mb > 0
    assert info.base_mb + info.adapter_mb < info.two_copies_mb


def test_sampling_many_candidates_drops_the_tensor_pitfall(engine):
    samples = engine.sample(noise(0.5), 3, temperature=0.7, top_p=0.9, seed=1)
    assert len(samples) == 3 and all(isinstance(s.text, str) and s.token_ids for s in samples)
    assert engine.sample(noise(0.5), 3, temperature=0.7, top_p=0.9, seed=1) == samples  # seeded: repeatable


# -- streaming ----------------------------------------------------------------------------------------------------
def test_streaming_matches_transformers_streaming_generate(engine, plain_model):
    audio = noise(2.0, seed=1)
    asr_ids, tag_ids = stream_tokens(engine, audio)
    assert asr_ids == reference_stream_tokens(plain_model, engine.processor, audio)
    assert tag_ids != asr_ids


def test_chunk_sizes_do_not_change_the_stream(engine):
    audio = noise(1.5, seed=2)
    assert stream_tokens(engine, audio, chunk=800) == stream_tokens(engine, audio, chunk=24_000)


def test_streams_of_several_users_are_isolated(engine):
    a, b = noise(1.5, seed=3), noise(2.0, seed=4)
    alone_a, alone_b = stream_tokens(engine, a), stream_tokens(engine, b)
    # interleaved chunk by chunk in one thread
    sa, sb = engine.stream(), engine.stream()
    for start in range(0, len(b), 4_000):
        sa.feed(a[start:start + 4_000])
        sb.feed(b[start:start + 4_000])
    sa.finish(), sb.finish()
    assert [s.ids for s in sa.streams] == alone_a
    assert [s.ids for s in sb.streams] == alone_b
    # and from threads at the same time
    results: dict[int, list] = {}

    def run(key, audio):
        results[key] = stream_tokens(engine, audio, chunk=3_000)

    threads = [threading.Thread(target=run, args=(i, audio)) for i, audio in enumerate([a, b, a])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {0: alone_a, 1: alone_b, 2: alone_a}


def test_a_short_stream_is_padded_and_still_decodes(engine):
    stream = engine.stream()
    stream.feed(noise(0.2))
    assert stream.streams[0].ids == []  # not enough audio for the first chunk yet
    outputs = stream.finish()
    assert len(outputs) == 2 and len(stream.streams[0].ids) > 0
    with pytest.raises(RuntimeError):
        stream.feed(noise(0.1))


# -- the Transcript, the session, the CLI ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def profile(tiny_voxtral):
    model, adapter = tiny_voxtral
    return resolve_profile("gpu", asr_model=str(model), tag_adapter=str(adapter))


@pytest.fixture(scope="session")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clips") / "noise-44k-stereo.wav"
    audio = noise(1.2, seed=5)
    sf.write(path, np.stack([audio, audio], axis=1), 16_000)
    return path


def test_transcript_has_the_promised_shape(profile, clip):
    result = transcribe_file(clip, profile, top_k=2).to_dict()
    for key in ("text", "tags", "tags_filtered", "merged", "timings"):
        assert key in result
    assert result["tag_channel"] == "on" and result["tag_adapter"] == Path(profile.tag_adapter).name  # no server path
    assert len(result["tags_filtered"]) <= 2 and set(result["tags_filtered"]) <= TAGS
    assert result["dropped_tags"] == sum(1 for t in result["tags"] if t not in TAGS)
    assert set(result["timings"]) == {"audio_s", "asr_ms", "tags_ms", "total_ms"}
    assert result["timings"]["audio_s"] == pytest.approx(1.2, abs=0.01)
    off = transcribe_file(clip, profile, tags=False)
    assert off.tag_channel == "off" and off.tags == [] and off.text == result["text"]


def test_the_taught_tag_comes_through_the_whole_file_path(profile, clip):
    taught = [m.name for m in parse_tags(TAUGHT_TAGS)]
    result = transcribe_file(clip, profile, top_k=2)
    assert result.tags_filtered == taught
    assert result.merged.startswith(TAUGHT_TAGS)
    event = result.tag_events[0]
    assert event["time"] == pytest.approx(0.08)  # written at the first 80 ms step
    assert -2.0 < event["score"] < 0.0  # a real mean log-probability of the tag's tokens
    assert result.tag_scores[taught[0]] == event["score"]


def test_the_taught_tag_comes_through_the_streaming_path(profile):
    session = ListenSession(get_speech_engine(profile), tags=True, top_k=2)
    audio = (noise(1.5, seed=8) * 32767).astype(np.int16)
    for start in range(0, len(audio), 8_000):
        session.receive(16_000, audio[start:start + 8_000])
    final = session.finish(timeout=60)
    assert final.tags_filtered == [m.name for m in parse_tags(TAUGHT_TAGS)]
    assert final.merged.startswith(TAUGHT_TAGS)
    off = ListenSession(get_speech_engine(profile), tags=False)
    off.receive(16_000, audio)
    assert off.finish(timeout=60).tags == []


def test_voxtral_without_adapter_says_there_is_no_tag_channel(tiny_voxtral, clip):
    profile = resolve_profile("gpu", asr_model=str(tiny_voxtral[0]), tag_adapter="none")
    result = transcribe_file(clip, profile)
    assert result.tag_channel == NO_ADAPTER and result.tags == []


def test_listen_session_with_microphone_chunks(profile):
    engine = get_speech_engine(profile)
    session = ListenSession(engine, tags=True, top_k=2)
    audio = np.repeat(noise(1.0, seed=6)[:, None], 2, axis=1)  # stereo
    mic = np.interp(np.arange(48_000) / 3, np.arange(16_000), audio[:, 0])  # 48 kHz
    chunk = (np.stack([mic, mic], axis=1) * 32767).astype(np.int16)
    for i in range(0, len(chunk), 24_000):
        session.receive(48_000, chunk[i:i + 24_000])
    final = session.finish(timeout=60)
    assert not final.partial and final.timings["audio_s"] == pytest.approx(1.0, abs=0.05)
    assert final.timings["received_s"] == pytest.approx(1.0)
    assert session.finish(timeout=60) is final
    # the decoder stepped over every complete 80 ms chunk: one ASR token per step, the padding flushed at the end
    assert len(session._stream.streams[0].ids) == len(session._stream.streams[1].ids) > 1.0 / 0.08
    silent = ListenSession(engine)
    silent.receive(48_000, np.zeros(24_000, dtype=np.int16))
    with pytest.raises(BadInput, match="silent"):
        silent.finish(timeout=60)
    with pytest.raises(BadInput, match="nothing was recorded"):
        ListenSession(engine).finish(timeout=60)


def test_transcribe_command_with_the_tiny_model(tiny_voxtral, clip, capsys):
    model, adapter = tiny_voxtral
    assert main(["transcribe", "--audio", str(clip), "--asr-model", str(model), "--tag-adapter", str(adapter),
                 "--top-k", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["tags_filtered"]) <= 1 and result["tag_channel"] == "on"
    assert main(["transcribe", "--audio", str(clip), "--asr-model", str(model), "--no-tags"]) == 0
    assert json.loads(capsys.readouterr().out)["tag_channel"] == "off"


def test_eval_tags_command(tiny_voxtral, clip, tmp_path, capsys):
    model, adapter = tiny_voxtral
    data = tmp_path / "set.jsonl"
    data.write_text(json.dumps({"audio": str(clip), "tagged_text": "[whispers] hello"}) + "\n"
                    + json.dumps({"audio": "missing.wav", "tagged_text": "[pause] hi"}) + "\n")
    out = tmp_path / "rows.jsonl"
    assert main(["eval-tags", "--data", str(data), "--out", str(out), "--asr-model", str(model),
                 "--tag-adapter", str(adapter)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 1 and summary["failed"] == 1
    assert {"precision", "recall", "f1", "hallucination_rate", "wer"} <= set(summary)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert "hypothesis" in rows[0] and "error" in rows[1]


def test_a_missing_voxtral_names_what_to_download(tmp_path, monkeypatch):
    import huggingface_hub.constants

    # Read once at import (gradio may import it before conftest sets HF_HUB_OFFLINE): without this the Hub
    # lookup of a missing id waits for network timeouts (minutes) instead of failing at once.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotAvailable, match="huggingface-cli download"):
        VoxtralEngine("no-such-org/no-such-voxtral")
    profile = resolve_profile("gpu", asr_model=str(tmp_path / "nothing-here"))
    with pytest.raises(ModelNotAvailable, match="could not be loaded from that path"):
        get_speech_engine(profile)
    fallback = get_speech_engine(profile, fallback=True)  # the app keeps working on Whisper, and says why
    assert fallback.kind == "whisper" and TAGS_NEED_VOXTRAL in fallback.tag_note
