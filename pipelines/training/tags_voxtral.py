"""RAFT of a Voxtral Realtime tag adapter (the gpu profile's: `YongkangZOU/evoxtral-realtime-sft` on
`mistralai/Voxtral-Mini-4B-Realtime-2602`), the same recipe `tags_train` runs on Whisper.

    python -m pipelines train-tags --method raft --base-model mistralai/Voxtral-Mini-4B-Realtime-2602 \\
        --from YongkangZOU/evoxtral-realtime-sft --data data/tags/train.jsonl --output adapters/evoxtral-raft

Voxtral Realtime writes a time-aligned stream: one token per 80 ms of audio, each word where it is heard,
[STREAMING_PAD] between. The synthetic corpus's references carry no timing, so SFT on Voxtral is not offered.
RAFT needs none: the candidates are the model's own sampled streams, drawn by the Listen tab's engine
(`VoxtralEngine.sample`), and the kept ones are trained on token for token, pads and all.
"""

from __future__ import annotations

from pipelines.training.tags_train import Candidate, TagTrainConfig, read_clip


def voxtral_sampler(config: TagTrainConfig):
    """`sample(clips, seed)` -> per clip, `config.samples` candidates from the adapter being continued."""
    from pipelines.speech.voxtral import VoxtralEngine

    engine = VoxtralEngine(config.base_model, config.init_adapter)  # freed with the sampler, before training

    def sample(clips, seed: int) -> list[list[Candidate]]:
        return [[Candidate(s.text, s.token_ids) for s in
                 engine.sample(clip, config.samples, temperature=config.temperature, top_p=config.top_p,
                               seed=seed + number)]
                for number, clip in enumerate(clips)]

    return sample


class VoxtralTagCollator:
    """One kept clip -> the offline inputs it was sampled from (`VoxtralEngine.offline_inputs`), and its sampled
    stream as labels (nothing to learn on the prompt). One clip per batch: clips differ in length, so steps
    accumulate `batch_size` of them."""

    def __init__(self, engine):
        self.engine = engine

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        (row,) = batch
        inputs = self.engine.offline_inputs(read_clip(row["audio"]))
        prompt = inputs["input_ids"][0].tolist()
        positions = inputs["input_features"].shape[-1] // self.engine.processor.audio_length_per_tok
        target = row["token_ids"][:positions - len(prompt)]
        return {
            "input_ids": torch.tensor([prompt + target]),
            "labels": torch.tensor([[-100] * len(prompt) + target]),
            "input_features": inputs["input_features"].to(self.engine.dtype),
            "num_delay_tokens": inputs["num_delay_tokens"],
        }


def voxtral_model_and_collator(config: TagTrainConfig):
    """The base with `config.init_adapter`'s LoRA made trainable, and the collator for its kept samples."""
    from peft import PeftModel

    from pipelines.speech.voxtral import VoxtralEngine

    engine = VoxtralEngine(config.base_model)
    model = PeftModel.from_pretrained(engine.model, config.init_adapter, is_trainable=True)
    return model, VoxtralTagCollator(engine)
