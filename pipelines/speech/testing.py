"""Tiny random Voxtral Realtime models and tag LoRAs for tests (and for trying the pipeline without weights).

The processor needs a Mistral tekken tokenizer with audio tokens. We build one from the `tekken_240911.json`
that mistral-common ships: its first 1,000 byte-pair tokens, the standard control tokens with the audio ones
at the ids the real model uses ([AUDIO]=24, [BEGIN_AUDIO]=25, [TRANSCRIBE]=34, [STREAMING_PAD]=37), and an
`audio` section in the realtime (streaming) format: 16 kHz, 12.5 tokens/s, 128 mels, 480 ms delay. Only the
left padding is shorter than the real model's 32 tokens, so tests decode fewer steps.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SPECIAL_TOKENS = 1000
TEXT_TOKENS = 1000
AUDIO_TOKEN_IDS = {24: "[AUDIO]", 25: "[BEGIN_AUDIO]", 32: "[ARGS]", 33: "[CALL_ID]", 34: "[TRANSCRIBE]",
                   37: "[STREAMING_PAD]", 38: "[STREAMING_WORD]"}


def write_tiny_tekken(path: Path, left_pad_tokens: int = 2) -> Path:
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    package = Path(list(importlib.util.find_spec("mistral_common").submodule_search_locations)[0])
    source = json.loads((package / "data" / "tekken_240911.json").read_text())
    named = {t["rank"]: str(getattr(t["token_str"], "value", t["token_str"]))
             for t in Tekkenizer.DEPRECATED_SPECIAL_TOKENS}
    named.update(AUDIO_TOKEN_IDS)
    tekken = {
        "config": {**source["config"], "version": "v7", "default_vocab_size": SPECIAL_TOKENS + TEXT_TOKENS,
                   "default_num_special_tokens": SPECIAL_TOKENS, "num_vocab_tokens": TEXT_TOKENS},
        "vocab": source["vocab"][:TEXT_TOKENS],
        "special_tokens": [{"rank": i, "token_str": named.get(i, f"<SPECIAL_{i}>"), "is_control": True}
                           for i in range(SPECIAL_TOKENS)],
        "audio": {
            "sampling_rate": 16000, "frame_rate": 12.5,
            "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
            "transcription_delay_ms": 480, "streaming_look_ahead_ms": 2.5, "streaming_look_back_ms": 52.5,
            "streaming_n_left_pad_tokens": left_pad_tokens, "transcription_format": "streaming",
        },
    }
    path.write_text(json.dumps(tekken))
    return path


def build_tiny_voxtral(folder: Path, seed: int = 0) -> Path:
    """A 2-layer random VoxtralRealtime (text hidden 32, audio hidden 16) with its processor, in `folder`."""
    import torch
    from transformers import (VoxtralRealtimeConfig, VoxtralRealtimeFeatureExtractor,
                              VoxtralRealtimeForConditionalGeneration, VoxtralRealtimeProcessor)
    from transformers.tokenization_mistral_common import MistralCommonBackend

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL_TOKENS + TEXT_TOKENS
    config = VoxtralRealtimeConfig(
        audio_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                          head_dim=4, num_mel_bins=128, vocab_size=vocab),
        text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, bos_token_id=1, eos_token_id=2,
                         sliding_window=1024, max_position_embeddings=8192),
    )
    torch.manual_seed(seed)
    model = VoxtralRealtimeForConditionalGeneration(config).eval()
    # Large random embeddings (tied to the output layer) give confident logits, so a LoRA can be taught a
    # few tokens in a few steps.
    model.get_input_embeddings().weight.data.normal_(0, 1.0)
    # The model's config.json must sit beside tekken.json: it is how the tokenizer resolves to mistral-common.
    model.save_pretrained(folder)
    write_tiny_tekken(folder / "tekken.json")
    tokenizer = MistralCommonBackend.from_pretrained(str(folder))
    processor = VoxtralRealtimeProcessor(VoxtralRealtimeFeatureExtractor(), tokenizer)
    processor.save_pretrained(folder)
    return folder


TAUGHT_TAGS = "[whispers]"  # what the tiny tag adapter learns to write at the start of any clip


def build_tiny_tag_adapter(model_folder: Path, folder: Path, taught: str = TAUGHT_TAGS, seed: int = 0,
                           rank: int = 8, max_steps: int = 300) -> Path:
    """A real LoRA on the tiny model's decoder, trained until the tag channel writes `taught` at the start of
    a clip and streaming-pads after it (the base stays random). Inputs come from the production whole-file
    path (`VoxtralEngine.offline_inputs`), so training sees what inference sees."""
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model

    from pipelines.speech.voxtral import VoxtralEngine

    engine = VoxtralEngine(str(model_folder), device="cpu")  # a private copy: training changes its model
    tekken = engine.tekken
    audio = (np.random.default_rng(seed).standard_normal(16_000) * 0.1).astype(np.float32)
    inputs = engine.offline_inputs(audio)
    prompt = inputs["input_ids"][0].tolist()
    total = inputs["input_features"].shape[-1] // engine.processor.audio_length_per_tok
    pad = tekken.get_special_token("[STREAMING_PAD]")
    taught_ids = tekken.encode(taught, bos=False, eos=False)
    target = (taught_ids + [pad] * total)[:total - len(prompt)]
    input_ids = torch.tensor([prompt + target])[:, :total]
    labels = torch.tensor([[-100] * len(prompt) + target])[:, :total]

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=2 * rank,
                        target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")
    model = get_peft_model(engine.model, config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    features = inputs["input_features"]
    for _ in range(max_steps):
        out = model(input_ids=input_ids, input_features=features, labels=labels,
                    num_delay_tokens=inputs["num_delay_tokens"])
        # Taught when greedy decoding of every target position gives the target (logits q predict token q+1).
        predicted = out.logits[0, len(prompt) - 1:-1].argmax(-1)
        if predicted.tolist() == target[:len(predicted)]:
            break
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    folder = Path(folder)
    model.save_pretrained(folder)
    return folder


def tiny_voxtral_with_adapter(root: Path) -> tuple[Path, Path]:
    """(model folder, adapter folder) under `root`, built once and reused by later calls."""
    import torch

    root = Path(root)
    model, adapter = root / "tiny-voxtral", root / "tiny-tag-lora"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from threads, and on shared cores they thrash
    try:
        if not (model / "processor_config.json").exists():
            build_tiny_voxtral(model)
        if not (adapter / "adapter_config.json").exists():
            build_tiny_tag_adapter(model, adapter)
    finally:
        torch.set_num_threads(threads)
    return model, adapter
