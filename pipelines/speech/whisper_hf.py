"""Whisper tiny.en as a transformers model, converted once from the CTranslate2 weights the cpu profile ships.

faster-whisper runs the shipped `model.bin` fast, but CTranslate2 cannot carry a LoRA. The tag channel needs
one, so the same weights (stored there as fp16) are read back into a `WhisperForConditionalGeneration`:
- the file format is CTranslate2's own (`ctranslate2/specs/model_spec.py`, `_serialize`): a header, then per
  variable its name, shape, dtype and raw bytes, then aliases;
- CTranslate2 fuses attention projections: self-attention q|k|v in one matrix, cross-attention k|v in one; they
  are split back. Whisper's key projections have no bias (CTranslate2 stores zeros there), so it is dropped.
The converted folder lives in the cache (like the embedded SQL model) and is checked against faster-whisper by
`tests/test_whisper_hf.py` (same greedy text, close logits).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import struct
from pathlib import Path

import numpy as np

from pipelines.profiles import cache_dir

log = logging.getLogger(__name__)

CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
# Whisper's English-only special tokens (the multilingual ones sit one id higher).
ENGLISH_SPECIAL_IDS = {"eos": 50256, "start": 50257, "translate": 50357, "transcribe": 50358,
                       "prev": 50360, "no_timestamps": 50362}


def read_ct2_variables(path: Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 `model.bin`, by name (aliases resolved), as numpy arrays."""
    data = Path(path).read_bytes()
    position = 0

    def take(fmt: str):
        nonlocal position
        (value,) = struct.unpack_from(fmt, data, position)
        position += struct.calcsize(fmt)
        return value

    def take_string() -> str:
        nonlocal position
        length = take("H")
        text = data[position:position + length - 1].decode("utf-8")  # stored with a trailing NUL
        position += length
        return text

    version = take("I")
    if version < 5:
        raise ValueError(f"CTranslate2 binary version {version} is older than this reader knows")
    take_string()  # spec name, e.g. WhisperSpec
    take("I")  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = take_string()
        shape = [take("I") for _ in range(take("B"))]
        dtype = CT2_DTYPES[take("B")]
        size = take("I")
        raw = data[position:position + size]
        position += size
        if dtype == "bfloat16":  # numpy has no bfloat16: widen through the upper half of a float32
            array = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            array = np.frombuffer(raw, dtype=dtype)
        variables[name] = array.reshape(shape)
    for _ in range(take("I")):
        alias, target = take_string(), take_string()
        variables[alias] = variables[target]
    return variables


def layer_count(ct2: dict[str, np.ndarray], side: str) -> int:
    return len({m.group(1) for k in ct2 if (m := re.match(rf"{side}/layer_(\d+)/", k))})


def _whisper_state_dict(ct2: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """transformers' parameter names for the CTranslate2 variables."""
    state: dict[str, np.ndarray] = {}

    def linear(hf: str, ct: str):
        state[f"{hf}.weight"] = ct2[f"{ct}/weight"]
        if f"{ct}/bias" in ct2:
            state[f"{hf}.bias"] = ct2[f"{ct}/bias"]

    def norm(hf: str, ct: str):
        state[f"{hf}.weight"], state[f"{hf}.bias"] = ct2[f"{ct}/gamma"], ct2[f"{ct}/beta"]

    def split(hf: str, ct: str, names: tuple[str, ...]):
        weights = np.split(ct2[f"{ct}/weight"], len(names))
        biases = np.split(ct2[f"{ct}/bias"], len(names))
        for name, weight, bias in zip(names, weights, biases):
            state[f"{hf}.{name}.weight"] = weight
            if name != "k_proj":  # Whisper's keys have no bias
                state[f"{hf}.{name}.bias"] = bias

    for side in ("encoder", "decoder"):
        for i in range(layer_count(ct2, side)):
            hf, ct = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            split(f"{hf}.self_attn", f"{ct}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
            linear(f"{hf}.self_attn.out_proj", f"{ct}/self_attention/linear_1")
            norm(f"{hf}.self_attn_layer_norm", f"{ct}/self_attention/layer_norm")
            if side == "decoder":
                linear(f"{hf}.encoder_attn.q_proj", f"{ct}/attention/linear_0")
                split(f"{hf}.encoder_attn", f"{ct}/attention/linear_1", ("k_proj", "v_proj"))
                linear(f"{hf}.encoder_attn.out_proj", f"{ct}/attention/linear_2")
                norm(f"{hf}.encoder_attn_layer_norm", f"{ct}/attention/layer_norm")
            linear(f"{hf}.fc1", f"{ct}/ffn/linear_0")
            linear(f"{hf}.fc2", f"{ct}/ffn/linear_1")
            norm(f"{hf}.final_layer_norm", f"{ct}/ffn/layer_norm")
        norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
        state[f"model.{side}.embed_positions.weight"] = ct2[f"{side}/position_encodings/encodings"]
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    state["model.decoder.embed_tokens.weight"] = ct2["decoder/embeddings/weight"]
    return state


def convert_ct2_whisper(source: Path, target: Path) -> Path:
    """Write a transformers Whisper folder (weights, config, generation config, tokenizer, feature extractor)
    from a CTranslate2 Whisper folder. English-only models only: that is what the cpu profile ships."""
    import torch
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperTokenizerFast)

    source = Path(source)
    ct2 = read_ct2_variables(source / "model.bin")
    ct2_config = json.loads((source / "config.json").read_text())
    vocab_size, d_model = ct2["decoder/embeddings/weight"].shape
    if vocab_size != 51864:
        raise ValueError(f"only English-only Whisper models are converted (vocabulary {vocab_size}, not 51864)")
    config = WhisperConfig(
        vocab_size=vocab_size, d_model=int(d_model), num_mel_bins=int(ct2["encoder/conv1/weight"].shape[1]),
        encoder_layers=layer_count(ct2, "encoder"), decoder_layers=layer_count(ct2, "decoder"),
        encoder_attention_heads=int(ct2["encoder/num_heads"]), decoder_attention_heads=int(ct2["decoder/num_heads"]),
        encoder_ffn_dim=int(ct2["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(ct2["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(ct2["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(ct2["decoder/position_encodings/encodings"].shape[0]),
        bos_token_id=ENGLISH_SPECIAL_IDS["eos"], eos_token_id=ENGLISH_SPECIAL_IDS["eos"],
        pad_token_id=ENGLISH_SPECIAL_IDS["eos"], decoder_start_token_id=ENGLISH_SPECIAL_IDS["start"],
        suppress_tokens=ct2_config["suppress_ids"], begin_suppress_tokens=ct2_config["suppress_ids_begin"],
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    state = {name: torch.from_numpy(array.astype(np.float32)) for name, array in _whisper_state_dict(ct2).items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [name for name in missing if name != "proj_out.weight"]  # tied to the token embeddings
    if missing or unexpected:
        raise ValueError(f"conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()

    generation = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id,
        suppress_tokens=config.suppress_tokens, begin_suppress_tokens=config.begin_suppress_tokens,
        no_timestamps_token_id=ENGLISH_SPECIAL_IDS["no_timestamps"], is_multilingual=False,
        max_initial_timestamp_index=50, return_timestamps=False, max_length=config.max_target_positions,
        alignment_heads=ct2_config.get("alignment_heads"),
        prev_sot_token_id=ENGLISH_SPECIAL_IDS["prev"],
    )
    model.generation_config = generation
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(source / "tokenizer.json"), predict_timestamps=False)
    tokenizer.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)], special_tokens=True)  # timestamp ids

    target = Path(target)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)  # atomic: a crash mid-way never leaves a half-written model behind
    return target


def embedded_whisper_hf_dir() -> Path:
    """The transformers copy of the embedded Whisper tiny.en, converted into the cache on first use."""
    from pipelines.speech.whisper_asr import embedded_whisper_dir

    target = cache_dir() / "models" / "whisper-tiny.en-hf"
    if not (target / "config.json").exists():
        log.info("converting the embedded Whisper tiny.en to transformers in %s (once)", target)
        convert_ct2_whisper(embedded_whisper_dir(), target)
    return target
