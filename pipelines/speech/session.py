"""One user's live recording: microphone chunks in, a growing transcript out, the final one on stop.

Each user (each browser session) owns one `ListenSession`; the model it uses is shared. Nothing here is
global, so several people can record at once.
"""

from __future__ import annotations

import time

import numpy as np

from pipelines.errors import BadInput
from pipelines.speech.audio import SAMPLE_RATE, SILENCE_PEAK, ChunkResampler, max_seconds
from pipelines.speech.tags import DEFAULT_TOP_K
from pipelines.speech.transcribe import SpeechEngine, Transcript, build_transcript


class ListenSession:
    def __init__(self, engine: SpeechEngine, *, tags: bool = True, top_k: int | None = DEFAULT_TOP_K):
        self.engine = engine
        self.tags = tags
        self.top_k = top_k
        self.stream = engine.stream(tags)
        self.resampler = ChunkResampler()
        self.peak = 0.0
        self.samples_in = 0  # real audio only (the stream's own count includes its padding)
        self.started = time.perf_counter()
        self.last: Transcript | None = None
        self.final: Transcript | None = None

    @property
    def seconds(self) -> float:
        return self.samples_in / SAMPLE_RATE

    def push(self, rate: int, chunk: np.ndarray) -> Transcript:
        """Add a microphone chunk (any rate, int16 or float, mono or stereo); returns the live transcript."""
        if self.final is not None:
            return self.final
        samples = self.resampler(rate, chunk)
        if len(samples):
            self.peak = max(self.peak, float(np.max(np.abs(samples))))
            room = max(int(max_seconds() * SAMPLE_RATE) - self.samples_in, 0)  # past the limit, audio is dropped
            samples = samples[:room]
            self.samples_in += len(samples)
            self.stream.feed(samples)
        self.last = self._transcript(self.stream.outputs(), partial=True)
        return self.last

    @property
    def full(self) -> bool:
        """True once the recording reached the length limit: later audio is dropped (the UI says so)."""
        return self.seconds >= max_seconds()

    def stop(self) -> Transcript:
        """Flush the stream and return the final transcript; an empty or silent recording is a BadInput."""
        if self.final is not None:
            return self.final
        tail = self.resampler.flush()
        if len(tail):
            self.peak = max(self.peak, float(np.max(np.abs(tail))))
            self.samples_in += len(tail)
            self.stream.feed(tail)
        if self.seconds == 0:
            raise BadInput("microphone: nothing was recorded")
        if self.peak < SILENCE_PEAK:
            raise BadInput("microphone: the recording is silent (check the input device and its level)")
        self.final = self._transcript(self.stream.finish(), partial=False)
        return self.final

    def _transcript(self, outputs, partial: bool) -> Transcript:
        asr = outputs[0]
        tag = outputs[1] if len(outputs) > 1 else None
        return build_transcript(self.engine, asr, tag, tags=self.tags, top_k=self.top_k, audio_s=self.seconds,
                                total_ms=(time.perf_counter() - self.started) * 1000, partial=partial)
