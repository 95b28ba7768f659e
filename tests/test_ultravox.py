"""Ultravox (speech-in LLM) on tiny random models saved in the real v0.4 checkpoint layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipelines.errors import BadInput
from pipelines.speech.ultravox import (AUDIO_MARKER, PROJECTOR_PREFIX, UltravoxAudio, UltravoxConfig,
                                       UltravoxProjector, audio_token_count, encode_frames, save_ultravox,
                                       splice_audio)

# The real checkpoint names its bases by Hub id; the tests map those ids to tiny local folders.
REAL_AUDIO_ID, REAL_TEXT_ID = "openai/whisper-medium", "meta-llama/Meta-Llama-3.1-8B-Instruct"


@pytest.fixture(scope="module")
def tiny_whisper_dir(tmp_path_factory):
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    torch.manual_seed(0)
    config = WhisperConfig(d_model=16, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=100,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    path = tmp_path_factory.mktemp("tiny-whisper")
    WhisperModel(config).save_pretrained(path)
    WhisperFeatureExtractor().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def ultravox_dir(tmp_path_factory, tiny_whisper_dir, tiny_llama_dir):
    """A random projector in the v0.4 layout, its config naming the real Hub ids."""
    config = UltravoxConfig(audio_model_id=REAL_AUDIO_ID, text_model_id=REAL_TEXT_ID, hidden_size=64)
    torch.manual_seed(1)
    projector = UltravoxProjector(config, audio_width=16, text_width=32)
    for parameter in projector.parameters():  # not the init values, so a round trip is a real check
        parameter.data.normal_()
    return save_ultravox(tmp_path_factory.mktemp("ultravox"), config, projector), projector


@pytest.fixture(scope="module")
def paths(tiny_whisper_dir, tiny_llama_dir):
    return {REAL_AUDIO_ID: str(tiny_whisper_dir), REAL_TEXT_ID: str(tiny_llama_dir)}


def tone(seconds: float, hz: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_projector_stacks_eight_frames_and_maps_to_the_text_width():
    config = UltravoxConfig("a", "t", hidden_size=64)
    projector = UltravoxProjector(config, audio_width=16, text_width=32)
    frames = torch.randn(1, 50, 16)  # one second of encoder frames
    assert projector.stack(frames).shape == (1, 7, 128)  # ceil(50 / 8) groups of 8 x 16
    assert torch.equal(projector.stack(frames)[0, 0], frames[0, :8].reshape(-1))
    assert projector(frames).shape == (1, 7, 32)
    assert audio_token_count(16000) == 7  # one LLM token per 160 ms


def test_checkpoint_holds_only_the_projector_in_the_v04_layout(ultravox_dir):
    from safetensors.torch import load_file

    folder, projector = ultravox_dir
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "ultravox"
    assert (config["audio_model_id"], config["text_model_id"]) == (REAL_AUDIO_ID, REAL_TEXT_ID)
    keys = set(load_file(str(folder / "model.safetensors")))
    assert keys == {PROJECTOR_PREFIX + name for name in
                    ("ln_pre.weight", "linear_1.weight", "linear_2.weight", "ln_post.weight")}


def test_audio_half_loads_the_projector_and_embeds_a_clip(ultravox_dir, paths):
    folder, projector = ultravox_dir
    audio = UltravoxAudio(folder, model_paths=paths)
    for name, value in projector.state_dict().items():
        assert torch.equal(audio.projector.state_dict()[name], value)
    rows = audio.embed(tone(2.0))
    assert rows.shape == (audio_token_count(32000), 32)
    assert audio.language_model == paths[REAL_TEXT_ID]
    with pytest.raises(BadInput, match="at most 30 s"):
        audio.embed(tone(31.0))


def test_short_input_encoder_matches_whisper_on_a_full_window(tiny_whisper_dir):
    from transformers import WhisperModel

    encoder = WhisperModel.from_pretrained(tiny_whisper_dir).get_encoder().eval()
    features = torch.randn(1, 80, 3000)
    with torch.no_grad():
        expected = encoder(features).last_hidden_state
        assert torch.allclose(encode_frames(encoder, features), expected, atol=1e-5)


def test_splice_puts_audio_rows_where_the_marker_was(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    embed = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).get_input_embeddings()
    audio = [torch.randn(3, 32), torch.randn(5, 32)]
    ids, mask, embeds = splice_audio(tokenizer, embed, [f"Q: {AUDIO_MARKER} A:", f"Q: {AUDIO_MARKER} A:"], audio)
    before = len(tokenizer("Q: ", add_special_tokens=False).input_ids)
    after = len(tokenizer(" A:", add_special_tokens=False).input_ids)
    assert ids.shape[1] == before + 5 + after and mask[0].sum() == before + 3 + after  # left-padded
    start = ids.shape[1] - after - 3
    assert torch.equal(embeds[0, start:start + 3], audio[0])
    assert torch.equal(embeds[1, before:before + 5], audio[1])


def test_engine_answers_a_spoken_prompt_with_the_adapter_chosen_per_request(ultravox_dir, paths, taught_adapter_dir):
    from pipelines.engine.base import SamplingParams
    from pipelines.engine.ultravox_engine import UltravoxEngine

    folder, _ = ultravox_dir
    engine = UltravoxEngine(str(folder), str(taught_adapter_dir), model_paths=paths, dtype=torch.float32)
    assert engine.capabilities.audio_input
    messages = [{"role": "user", "content": f"Answer: {AUDIO_MARKER}", "audio": tone(1.5)}]
    params = SamplingParams(max_new_tokens=4)
    with_adapter = engine.generate([messages], params)[0][0]
    base = engine.generate([messages], params, adapter=None)[0][0]
    assert with_adapter.completion_tokens > 0 and base.completion_tokens > 0

    # The first generated token is the argmax of the language model run on the spliced embeddings.
    inputs = engine._encode([messages])
    with torch.no_grad(), engine._using(None) as model:
        logits = model(inputs_embeds=inputs["inputs_embeds"], attention_mask=inputs["attention_mask"]).logits
    first = engine.tokenizer.decode([int(logits[0, -1].argmax())], skip_special_tokens=True)
    assert base.text.startswith(first)
    streamed = "".join(engine.stream(messages, params, adapter=None))
    assert streamed == base.text


def test_registry_picks_the_ultravox_engine_for_an_ultravox_folder(tmp_path, tiny_whisper_dir, tiny_llama_dir):
    from pipelines.engine import get_engine

    config = UltravoxConfig(audio_model_id=str(tiny_whisper_dir), text_model_id=str(tiny_llama_dir), hidden_size=64)
    folder = save_ultravox(tmp_path / "uv", config, UltravoxProjector(config, audio_width=16, text_width=32))
    engine = get_engine(str(folder), None, engine="transformers")
    assert type(engine).__name__ == "UltravoxEngine" and engine.capabilities.audio_input
