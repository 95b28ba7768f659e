"""The shipped CTranslate2 Whisper tiny.en, read back into transformers: same greedy text as CTranslate2 on the
same features, close logits, and a reader that refuses what it does not know."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from pipelines.speech.audio import load_audio
from pipelines.speech.whisper_hf import ENGLISH_SPECIAL_IDS, embedded_whisper_hf_dir, read_ct2_variables

CLIPS = ["assets/audio/question.flac", "assets/audio/whispered.flac", "assets/audio/spoken/cars.flac"]


@pytest.fixture(scope="module")
def both_models():
    import ctranslate2  # noqa: F401  (faster-whisper's runtime)
    from faster_whisper import WhisperModel
    from transformers import WhisperForConditionalGeneration

    from pipelines.speech.whisper_asr import embedded_whisper_dir

    converted = WhisperForConditionalGeneration.from_pretrained(embedded_whisper_hf_dir()).eval()
    original = WhisperModel(str(embedded_whisper_dir()), device="cpu", compute_type="float32")
    return converted, original


def features_of(original, path: str) -> np.ndarray:
    samples = load_audio(path).samples
    padded = np.pad(samples, (0, max(0, 16000 * 30 - len(samples))))
    return original.feature_extractor(padded)[:, :3000].astype(np.float32)[None]


@pytest.mark.parametrize("clip", CLIPS)
def test_converted_whisper_decodes_like_ctranslate2(both_models, clip):
    import ctranslate2
    import torch

    converted, original = both_models
    features = features_of(original, clip)
    prompt = [ENGLISH_SPECIAL_IDS["start"], ENGLISH_SPECIAL_IDS["no_timestamps"]]
    reference = original.model.generate(ctranslate2.StorageView.from_array(features), [prompt], beam_size=1,
                                        max_length=120, return_logits_vocab=True)[0]
    with torch.no_grad():
        generated = converted.generate(torch.from_numpy(features), max_new_tokens=120)[0].tolist()
    text_ids = [t for t in generated if t < ENGLISH_SPECIAL_IDS["eos"]]
    assert text_ids == reference.sequences_ids[0] and len(text_ids) > 5

    # First-step logits over the tokens CTranslate2 did not suppress (it writes -inf/-max there).
    with torch.no_grad():
        logits = converted(input_features=torch.from_numpy(features),
                           decoder_input_ids=torch.tensor([prompt])).logits[0, -1].numpy()
    expected = np.asarray(reference.logits[0][0])
    allowed = np.abs(expected) < 1e30
    assert allowed.sum() > 50_000
    assert np.abs(logits[allowed] - expected[allowed]).max() < 0.05 * np.abs(expected[allowed]).max()


def test_reader_refuses_an_old_format(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(struct.pack("I", 3) + b"\x00" * 16)
    with pytest.raises(ValueError, match="binary version 3"):
        read_ct2_variables(path)


def test_conversion_is_cached(voxql_cache):
    first = embedded_whisper_hf_dir()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert embedded_whisper_hf_dir() == first and (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert str(first).startswith(str(voxql_cache))
