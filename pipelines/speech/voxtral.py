"""Voxtral Realtime with the tag LoRA: one base in memory, two channels in one batch.

Row 0 of every forward pass is the ASR channel (adapter off, PEFT's `__base__`), row 1 the tag channel
(adapter on). PEFT's mixed-adapter batches make the two channels literally concurrent and keep a single copy
of the 4B base; the tag channel can be switched off (then the batch is one row).

Two ways in:
- whole file: the processor's offline request (left pad, right pad), audio zero-padded first to the length the
  adapter was trained on; `generate` emits one token per 80 ms of audio;
- streaming: `VoxtralStream` takes microphone audio as it arrives, one decoder step per 80 ms chunk, with its
  own caches. It is fed by the live worker (`pipelines.speech.live`) from the session's buffer, never by the
  UI's handler; the worker serves users in turn, and a turn decodes every complete 80 ms chunk that user has
  waiting. Steps run under the engine's lock (PEFT's adapter routing is a module hook, so one forward at a
  time per model).

The `generate(input_features=<generator>)` streaming API of transformers keeps its end-of-stream flag on the
model object, so two users streaming at once would stop each other; the step loop here has no such state.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.errors import ModelNotAvailable
from pipelines.speech.audio import SAMPLE_RATE, pad_for_adapter
from pipelines.speech.channels import ChannelOutput, TokenStream, channel_from_stream

log = logging.getLogger(__name__)

TAG_ADAPTER = "tags"  # the adapter's name inside the PeftModel
BASE_ROW = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass(frozen=True)
class VoxtralSample:
    text: str  # what the tokens say, special tokens left out
    token_ids: list[int]  # the stream as generated, one token per 80 ms of audio ([STREAMING_PAD] between words)


@dataclass(frozen=True)
class VoxtralInfo:
    model: str
    adapter: str | None
    device: str
    dtype: str
    base_mb: float  # parameters of the base model
    adapter_mb: float  # parameters of the LoRA (0 without one)

    @property
    def two_copies_mb(self) -> float:
        """What a second, adapter-merged copy of the base for the tag channel would cost instead."""
        return 2 * self.base_mb + self.adapter_mb


def _not_available(spec: str, what: str) -> ModelNotAvailable:
    if Path(spec).expanduser().exists() or spec.startswith(("/", ".", "~")):
        return ModelNotAvailable(f"{what} {spec!r} could not be loaded from that path")
    return ModelNotAvailable(
        f"{what} {spec!r} is not available offline: download it with `huggingface-cli download {spec}` "
        f"or pass a local folder (VOXQL_ASR_MODEL / VOXQL_TAG_ADAPTER)"
    )


def _param_mb(parameters) -> float:
    return sum(p.numel() * p.element_size() for p in parameters) / 2**20


class VoxtralEngine:
    """The processor, the base model and (optionally) the tag LoRA, loaded once and shared by every user."""

    def __init__(self, model_spec: str, adapter_spec: str | None = None, device: str | None = None, dtype=None):
        import torch
        from transformers import AutoProcessor, VoxtralRealtimeForConditionalGeneration

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
        try:
            self.processor = AutoProcessor.from_pretrained(model_spec)
            model = VoxtralRealtimeForConditionalGeneration.from_pretrained(model_spec, dtype=dtype)
        except (OSError, ValueError, ImportError) as error:
            log.debug("loading %s failed: %s", model_spec, error)
            raise _not_available(model_spec, "ASR model") from None
        model.to(device).eval()
        self.model = model  # the transformers model; with an adapter, LoRA layers are injected into it
        self.peft = None
        base_mb = _param_mb(model.parameters())
        adapter_mb = 0.0
        if adapter_spec:
            from peft import PeftModel

            try:
                self.peft = PeftModel.from_pretrained(model, adapter_spec, adapter_name=TAG_ADAPTER)
            except (OSError, ValueError) as error:
                log.debug("loading adapter %s failed: %s", adapter_spec, error)
                raise _not_available(adapter_spec, "tag adapter") from None
            self.peft.eval()
            adapter_mb = _param_mb(p for n, p in self.peft.named_parameters() if "lora_" in n)
        self.info = VoxtralInfo(model_spec, adapter_spec, device, str(dtype).replace("torch.", ""), base_mb, adapter_mb)
        self.device = device
        self.dtype = dtype
        self.lock = threading.Lock()
        self.tekken = self.processor.tokenizer.tokenizer.instruct_tokenizer.tokenizer
        self.token_seconds = self.processor.raw_audio_length_per_tok / SAMPLE_RATE

    # -- adapter routing -------------------------------------------------------------------------------------
    @property
    def has_tags(self) -> bool:
        return self.peft is not None

    def rows(self, tags: bool) -> list[str]:
        """Adapter per batch row: the ASR channel first, then the tag channel when it runs."""
        return [BASE_ROW, TAG_ADAPTER] if tags and self.has_tags else [BASE_ROW]

    def _routing(self, rows: list[str]):
        if self.peft is None:
            return nullcontext()
        # PeftModel.forward/generate do exactly this around the call; using it directly lets the streaming loop
        # call the transformers model with its caches in one code path.
        return self.peft._enable_peft_forward_hooks(adapter_names=rows)

    @contextmanager
    def running(self, rows: list[str]):
        """Exclusive use of the model with `rows` routing (the hooks are per module, hence the lock)."""
        import torch

        with self.lock, self._routing(rows), torch.inference_mode():
            yield self.model

    # -- whole file ------------------------------------------------------------------------------------------
    def offline_inputs(self, samples: np.ndarray) -> dict:
        """Processor inputs for a whole clip: padded as in training, mel frames a multiple of 8."""
        per_token = self.processor.audio_length_per_tok
        inputs = self.processor(pad_for_adapter(samples), return_tensors="pt")
        features = inputs["input_features"]
        usable = features.shape[-1] - features.shape[-1] % per_token
        return {
            "input_ids": inputs["input_ids"],
            "attention_mask": inputs["attention_mask"],
            "input_features": features[..., :usable],
            # A plain int: `generate` repeats tensor kwargs for num_return_sequences > 1, and a 0-d tensor
            # cannot be repeated (the known pitfall); an int is passed through untouched.
            "num_delay_tokens": int(inputs["num_delay_tokens"]),
        }

    def _generate(self, inputs: dict, rows: list[str], **generate_kwargs):
        import torch

        batch = {
            key: (value.repeat(len(rows), *[1] * (value.dim() - 1)) if isinstance(value, torch.Tensor) else value)
            for key, value in inputs.items()
        }
        batch = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        batch["input_features"] = batch["input_features"].to(self.dtype)
        # One token per audio token is the model's own cap; saying so explicitly keeps generate from warning.
        audio_tokens = batch["input_features"].shape[-1] // self.processor.audio_length_per_tok
        generate_kwargs.setdefault("max_length", audio_tokens)
        with self.running(rows) as model:
            return model.generate(**batch, **generate_kwargs)

    def transcribe(self, samples: np.ndarray, tags: bool = True) -> tuple[ChannelOutput, ChannelOutput | None]:
        """(ASR channel, tag channel or None) for a whole clip, both channels in one batched `generate`."""
        import torch

        rows = self.rows(tags)
        inputs = self.offline_inputs(samples)
        started = time.perf_counter()
        out = self._generate(inputs, rows, do_sample=False, return_dict_in_generate=True, output_logits=True)
        elapsed = (time.perf_counter() - started) * 1000
        prompt = inputs["input_ids"].shape[1]
        generated = out.sequences[:, prompt:].cpu()
        logprobs = torch.stack([torch.log_softmax(step.float(), dim=-1) for step in out.logits], dim=1).cpu()
        channels = []
        for row in range(len(rows)):
            stream = TokenStream()
            for step, token in enumerate(generated[row].tolist()):
                stream.append(token, float(logprobs[row, step, token]), (step + 1) * self.token_seconds)
            channels.append(channel_from_stream(self.tekken, stream, elapsed))
        return channels[0], (channels[1] if len(channels) > 1 else None)

    def sample(self, samples: np.ndarray, n: int, *, temperature: float = 0.7, top_p: float = 0.9,
               adapter: bool = True, seed: int | None = None) -> list[VoxtralSample]:
        """n sampled transcripts of one clip (the tag channel by default): what RAFT draws its candidates from."""
        if adapter and not self.has_tags:
            raise ModelNotAvailable("sampling the tag channel needs the tag adapter (VOXQL_TAG_ADAPTER)")
        import torch

        # generate repeats the one input row n times itself, so n rows go through the adapter routing.
        rows = [TAG_ADAPTER if adapter and self.has_tags else BASE_ROW] * n
        inputs = self.offline_inputs(samples)
        batch = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
        batch["input_features"] = batch["input_features"].to(self.dtype)
        max_length = batch["input_features"].shape[-1] // self.processor.audio_length_per_tok
        with self.running(rows) as model:
            if seed is not None:
                torch.manual_seed(seed)
            out = model.generate(**batch, do_sample=True, temperature=temperature, top_p=top_p,
                                 num_return_sequences=n, max_length=max_length)
        prompt = inputs["input_ids"].shape[1]
        eos = self.tekken.eos_id
        results = []
        for sequence in out.cpu().tolist():
            generated = sequence[prompt:]
            if eos in generated:  # rows that ended early are filled up after their end-of-stream
                generated = generated[:generated.index(eos) + 1]
            text = self.processor.tokenizer.decode(generated, skip_special_tokens=True).strip()
            results.append(VoxtralSample(text, generated))
        return results

    def stream(self, tags: bool = True) -> "VoxtralStream":
        return VoxtralStream(self, tags)


class VoxtralStream:
    """One user's live decoding: audio in as it arrives, one token per channel per 80 ms out.

    Chunking follows the processor: a first chunk of `num_samples_first_audio_chunk` samples (the processor adds
    the left padding and the prompt), then windows of `num_samples_per_audio_chunk` samples every 8 mel frames.
    `finish()` appends the right padding that flushes the model's delay.
    """

    def __init__(self, engine: VoxtralEngine, tags: bool = True):
        processor = engine.processor
        self.engine = engine
        self.rows = engine.rows(tags)
        self.hop = processor.feature_extractor.hop_length
        self.win = processor.feature_extractor.win_length
        self.per_token = processor.audio_length_per_tok
        self.first_samples = processor.num_samples_first_audio_chunk
        self.chunk_samples = processor.num_samples_per_audio_chunk
        self.next_frame = processor.num_mel_frames_first_audio_chunk
        self.streams = [TokenStream() for _ in self.rows]
        self.elapsed_ms = 0.0
        self.finished = False
        self._buffer = np.zeros(0, dtype=np.float32)
        self._buffer_start = 0  # absolute sample index of _buffer[0]
        self._received = 0
        self._state: dict | None = None  # caches and the last token of each row, after the prefill

    @property
    def seconds_received(self) -> float:
        return self._received / SAMPLE_RATE

    @property
    def seconds_recognised(self) -> float:
        """Audio the decoder has stepped over: every 80 ms window that is complete has had its token."""
        if self._state is None:
            return 0.0
        return min(max(self.next_frame * self.hop - self.win // 2, 0), self._received) / SAMPLE_RATE

    def feed(self, samples: np.ndarray) -> None:
        if self.finished:
            raise RuntimeError("this stream is finished")
        samples = np.asarray(samples, dtype=np.float32)
        self._buffer = np.concatenate([self._buffer, samples])
        self._received += len(samples)
        self._advance()

    def finish(self) -> list[ChannelOutput]:
        """Flush: pad the end as the model expects, decode what is left, return (ASR, tags) channel outputs."""
        if not self.finished:
            processor = self.engine.processor
            pad = processor.num_right_pad_tokens * processor.raw_audio_length_per_tok
            short = max(0, self.first_samples - self._received)
            self._buffer = np.concatenate([self._buffer, np.zeros(pad + short, dtype=np.float32)])
            self._received += pad + short
            self._advance()
            self.finished = True
        return self.outputs()

    def outputs(self) -> list[ChannelOutput]:
        return [channel_from_stream(self.engine.tekken, stream, self.elapsed_ms) for stream in self.streams]

    # -- decoding --------------------------------------------------------------------------------------------
    def _slice(self, start: int, end: int) -> np.ndarray:
        return self._buffer[start - self._buffer_start:end - self._buffer_start]

    def _advance(self) -> None:
        if self._state is None:
            if self._received < self.first_samples:
                return
            self._prefill(self._slice(0, self.first_samples))
        while True:
            start = self.next_frame * self.hop - self.win // 2
            end = start + self.chunk_samples
            if end > self._received:
                break
            self._step(self._slice(start, end))
            self.next_frame += self.per_token
        # Drop audio no future window needs.
        keep_from = self.next_frame * self.hop - self.win // 2
        if keep_from > self._buffer_start:
            self._buffer = self._buffer[keep_from - self._buffer_start:]
            self._buffer_start = keep_from

    def _forward(self, model, features, input_ids, **caches):
        import torch

        rows = len(self.rows)
        features = features.to(self.engine.device, self.engine.dtype).repeat(rows, 1, 1)
        out = model(input_ids=input_ids, input_features=features, use_cache=True,
                    num_delay_tokens=self.engine.processor.num_delay_tokens, **caches)
        logprobs = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        tokens = logprobs.argmax(dim=-1)
        time_s = (len(self.streams[0].ids) + 1) * self.engine.token_seconds
        for row, stream in enumerate(self.streams):
            token = int(tokens[row])
            stream.append(token, float(logprobs[row, token]), time_s)
        self._state = {
            "past_key_values": out.past_key_values,
            "encoder_past_key_values": out.encoder_past_key_values,
            "padding_cache": out.padding_cache,
            "last": tokens[:, None],
        }

    def _prefill(self, audio: np.ndarray) -> None:
        inputs = self.engine.processor(audio, is_streaming=True, is_first_audio_chunk=True, return_tensors="pt")
        started = time.perf_counter()
        with self.engine.running(self.rows) as model:
            input_ids = inputs["input_ids"].to(self.engine.device).repeat(len(self.rows), 1)
            self._forward(model, inputs["input_features"], input_ids)
        self.elapsed_ms += (time.perf_counter() - started) * 1000

    def _step(self, audio: np.ndarray) -> None:
        inputs = self.engine.processor(audio, is_streaming=True, is_first_audio_chunk=False, return_tensors="pt")
        state = self._state
        started = time.perf_counter()
        with self.engine.running(self.rows) as model:
            self._forward(model, inputs["input_features"], state["last"],
                          past_key_values=state["past_key_values"],
                          encoder_past_key_values=state["encoder_past_key_values"],
                          padding_cache=state["padding_cache"])
        self.elapsed_ms += (time.perf_counter() - started) * 1000


_engines: dict[tuple[str, str | None], VoxtralEngine] = {}
_engines_lock = threading.Lock()


def get_voxtral(model_spec: str, adapter_spec: str | None) -> VoxtralEngine:
    """The shared engine for this model and adapter, loaded on first use (once, however many users ask)."""
    key = (model_spec, adapter_spec)
    with _engines_lock:
        if key not in _engines:
            _engines[key] = VoxtralEngine(model_spec, adapter_spec)
        return _engines[key]
