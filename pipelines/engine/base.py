"""The generation interface every pipeline uses: chat messages in, text out.

An engine holds one base model and any number of named LoRA adapters. Each request says which adapter to use
(`None` = the base model alone), so the app can compare base and adapter without reloading anything. Every
engine (in-process transformers, a vLLM server, any OpenAI-compatible endpoint) implements the same methods and
says what it can do in `capabilities`. A request may carry a grammar (`SamplingParams.grammar`); an engine whose
capabilities include `grammar` makes every output follow it.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}


class _DefaultAdapter:
    def __repr__(self) -> str:
        return "DEFAULT_ADAPTER"


# Pass as `adapter=` to mean "the engine's default adapter" (the profile's, or None when it has none).
DEFAULT_ADAPTER = _DefaultAdapter()


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    n: int = 1  # samples per prompt (sampling only)
    seed: int | None = None
    grammar: str | None = None  # a Lark grammar the output must follow (engines with `capabilities.grammar`)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass
class Generation:
    text: str
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn), "length" (max_new_tokens) or "cancelled"
    # With a grammar: "followed", or "fell back" when the grammar dead-ended and decoding went on freely.
    grammar: str | None = None


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do; the UI and CLI read these instead of guessing from the engine's name."""

    streaming: bool = True
    adapters_per_request: bool = True  # each request names its adapter (base vs adapter without reloading)
    runtime_adapter_loading: bool = True  # `load_adapter` adds one while serving
    grammar: bool = False  # honours SamplingParams.grammar
    batching: bool = False  # a batch of conversations runs together (not one after another)
    # n samples of one prompt cost little more than one (they decode together): the SQL pipeline then votes over
    # several candidates by default (llama.cpp, CUDA, a server; not transformers on a CPU, 15-20 s for 7 samples)
    cheap_samples: bool = False
    audio_input: bool = False  # messages may carry audio

    def as_dict(self) -> dict[str, bool]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class EngineInfo:
    """What the UI shows: which model, adapters, engine and device are live."""

    model: str
    adapters: dict[str, str]
    default_adapter: str | None
    engine: str
    device: str
    dtype: str


@dataclass
class TextStream:
    """Iterate for text pieces as they are generated; afterwards `generation` and the timings are set.

    `cancel()` (or closing the iterator, as Gradio does when a user presses Stop) stops generation early.
    """

    pieces: Iterator[str]
    cancel_event: threading.Event
    prompt_tokens: int = 0
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    finished_at: float | None = None
    generation: Generation | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self.pieces
        finally:
            self.cancel_event.set()

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_token_at is None else (self.first_token_at - self.started) * 1000

    @property
    def tokens_per_s(self) -> float | None:
        """Decode speed after the first token (the prefill is in ttft)."""
        if self.generation is None or self.first_token_at is None or self.finished_at is None:
            return None
        decode_s = self.finished_at - self.first_token_at
        return (self.generation.completion_tokens - 1) / decode_s if decode_s > 0 else None


class Engine(ABC):
    info: EngineInfo
    capabilities: Capabilities = Capabilities()

    @abstractmethod
    def generate(
        self, conversations: list[list[Message]], params: SamplingParams = SamplingParams(), *, adapter=DEFAULT_ADAPTER
    ) -> list[list[Generation]]:
        """A batch of conversations in; for each, `params.n` generations out."""

    @abstractmethod
    def stream(self, messages: list[Message], params: SamplingParams = SamplingParams(), *, adapter=DEFAULT_ADAPTER) -> TextStream:
        """One conversation, one greedy or sampled generation, delivered piece by piece."""

    @abstractmethod
    def load_adapter(self, spec: str, name: str) -> None:
        """Attach another adapter (a folder or Hub id) under `name`, without reloading the base."""

    def resolve_adapter(self, adapter) -> str | None:
        from pipelines.errors import BadInput

        if adapter is DEFAULT_ADAPTER:
            return self.info.default_adapter
        if adapter is not None and adapter not in self.info.adapters:
            raise BadInput(f"no adapter named {adapter!r} is loaded (loaded: {', '.join(self.info.adapters) or 'none'})")
        return adapter
