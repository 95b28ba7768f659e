"""Ultravox in process: the transformers engine whose prompts may carry audio.

A user message with an `"audio"` entry (16 kHz float samples) and `<|audio|>` in its text is embedded with the
Ultravox audio half (`pipelines/speech/ultravox.py`); everything else (adapters per request, the merged default
adapter, grammar, batching, streaming) is the transformers engine's own, since only the prompt's embeddings
differ.
"""

from __future__ import annotations

import dataclasses

import torch

from pipelines.engine.base import Message
from pipelines.engine.transformers_engine import TransformersEngine
from pipelines.speech.ultravox import AUDIO_MARKER, UltravoxAudio, splice_audio


class UltravoxEngine(TransformersEngine):
    capabilities = dataclasses.replace(TransformersEngine.capabilities, audio_input=True)

    def __init__(self, ultravox_spec: str, adapter_spec: str | None = None, *, model_paths: dict[str, str] | None = None,
                 device: str | None = None, dtype=None):
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.audio = UltravoxAudio(ultravox_spec, model_paths=model_paths, device=device)
        super().__init__(self.audio.language_model, adapter_spec, device=device, dtype=dtype)
        self.audio.projector.to(self.model.dtype)
        self.audio.dtype = self.model.dtype
        self.info = dataclasses.replace(self.info, model=f"Ultravox {self.audio.folder.name} "
                                                         f"({self.info.model} + {self.audio.config.audio_model_id})")

    def _encode(self, conversations: list[list[Message]]):
        clips = [_audio_of(messages) for messages in conversations]
        if all(clip is None for clip in clips):
            return super()._encode(conversations)
        if any(clip is None for clip in clips):
            raise ValueError("a batch is all spoken or all typed")
        prompts = [self.tokenizer.apply_chat_template([{k: v for k, v in m.items() if k != "audio"} for m in messages],
                                                      tokenize=False, add_generation_prompt=True)
                   for messages in conversations]
        with torch.inference_mode():
            rows = [self.audio.embed(clip) for clip in clips]
            input_ids, mask, embeds = splice_audio(self.tokenizer, self.model.get_input_embeddings(), prompts, rows)
        return {"input_ids": input_ids, "attention_mask": mask, "inputs_embeds": embeds}


def _audio_of(messages: list[Message]):
    spoken = [m for m in messages if m.get("audio") is not None]
    if not spoken:
        return None
    if len(spoken) > 1 or AUDIO_MARKER not in spoken[0]["content"]:
        raise ValueError(f"one message may carry audio, and its text must hold {AUDIO_MARKER}")
    return spoken[0]["audio"]
