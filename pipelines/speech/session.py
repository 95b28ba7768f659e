"""One user's live recording: microphone chunks in, a growing transcript out, the final one on stop.

Two sides, two threads:
- the microphone transport (`pipelines.speech.transport`, fed by the browser's numbered chunks) calls
  `receive` with each chunk in order (append the raw chunk, wake the worker: microseconds), and the UI calls
  `status` (read what the worker last produced). Neither waits for the model;
- the recognition worker (`pipelines.speech.live`) calls `work`: load the model on first use, resample what
  came in, feed the model's stream, publish a partial transcript; after `stop`, flush and publish the final.

Each user (each browser session) owns one `ListenSession`; the model and the worker are shared.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipelines.errors import BadInput, VoxQLError
from pipelines.speech.audio import SAMPLE_RATE, SILENCE_PEAK, ChunkResampler, max_seconds
from pipelines.speech.live import LiveScheduler, shared_scheduler
from pipelines.speech.tags import DEFAULT_TOP_K
from pipelines.speech.transcribe import SpeechEngine, Transcript, build_transcript

# Recognition that trails the received audio by more than this is "behind real time", and the status says so.
# (Audio lost on its way from the browser is counted by the transport, by sequence number: see transport.py.)
BEHIND_S = 2.0


@dataclass(frozen=True)
class LiveStatus:
    """What the UI shows about a recording: how much audio came in, how much is recognised, and the text."""

    received_s: float  # audio the handler has taken in (before resampling)
    recognised_s: float  # audio the recogniser has looked at
    transcript: Transcript | None  # the latest partial (or the final) transcript
    stopping: bool
    done: bool
    error: str | None
    full: bool  # the length limit is reached: later audio is dropped

    @property
    def lag_s(self) -> float:
        return max(self.received_s - self.recognised_s, 0.0)

    @property
    def behind(self) -> bool:
        return self.lag_s > BEHIND_S and not self.done


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


class ListenSession:
    def __init__(self, engine: SpeechEngine | Callable[[], SpeechEngine], *, tags: bool = True,
                 top_k: int | None = DEFAULT_TOP_K, scheduler: LiveScheduler | None = None):
        # A loader instead of an engine: the model then loads on the worker, while the first chunks wait in
        # the inbox, instead of inside a web handler (which would then hold up the chunks behind it).
        self._engine = engine if isinstance(engine, SpeechEngine) else None
        self._load = None if isinstance(engine, SpeechEngine) else engine
        self.tags = tags
        self.top_k = top_k
        self.scheduler = scheduler or shared_scheduler()
        self.handler_ms: list[float] = []  # the time taking each chunk in took (the route records it here)
        self.started = time.perf_counter()
        self.published: list[tuple[float, str]] = []  # (perf_counter, text) each time the live text changed
        # Shared between the handler and the worker, under _lock.
        self._lock = threading.Lock()
        self._inbox: list[tuple[int, np.ndarray]] = []
        self._received_s = 0.0
        self._stopping = False
        self._latest: Transcript | None = None
        self._recognised_s = 0.0
        self._error: str | None = None
        self._error_type: type[VoxQLError] = VoxQLError
        self._done = threading.Event()
        self.final: Transcript | None = None
        # The worker's own (one worker at a time holds a session).
        self._stream = None
        self._resampler = ChunkResampler()
        self._peak = 0.0
        self._samples_in = 0  # 16 kHz samples fed to the model (real audio only, no padding)

    # -- the UI's side: never blocks on the model ------------------------------------------------------------
    def receive(self, rate: int, chunk: np.ndarray) -> None:
        """Take a microphone chunk (any rate, int16 or float, mono or stereo) and return at once."""
        chunk = np.asarray(chunk)
        with self._lock:
            if self._stopping:
                return  # a chunk that arrives after stop belongs to no recording
            self._inbox.append((int(rate), chunk))
            if rate and rate > 0:
                self._received_s += chunk.shape[0] / rate
        self.scheduler.wake(self)

    def prepare(self) -> None:
        """Load the model and open the stream on the worker now, before the first chunk (non-blocking)."""
        self.scheduler.wake(self)

    def cancel(self) -> None:
        """Drop the recording (its browser tab closed): no final transcript, nothing left for the worker."""
        with self._lock:
            self._stopping = True
            self._inbox.clear()
            if self._error is None and self.final is None:
                self._error, self._error_type = "microphone: the recording was cancelled", BadInput
        self._done.set()

    def stop(self) -> None:
        """Ask for the final transcript (non-blocking); `result` or `finish` waits for it."""
        with self._lock:
            self._stopping = True
        self.scheduler.wake(self)

    def status(self) -> LiveStatus:
        with self._lock:
            return LiveStatus(received_s=self._received_s, recognised_s=self._recognised_s,
                              transcript=self.final or self._latest, stopping=self._stopping,
                              done=self._done.is_set(), error=self._error, full=self._received_s >= max_seconds())

    @property
    def engine(self) -> SpeechEngine | None:
        return self._engine

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> Transcript | None:
        """The final transcript once it is ready (None if not within `timeout`); a recording that failed (silent,
        empty, model unavailable) raises its BadInput/VoxQLError here."""
        if not self._done.wait(timeout):
            return None
        if self._error is not None:
            raise self._error_type(self._error)
        return self.final

    def finish(self, timeout: float | None = None) -> Transcript:
        """Stop and wait for the final transcript (for the CLI, the benchmark and tests)."""
        self.stop()
        final = self.result(timeout)
        if final is None:
            raise TimeoutError(f"no final transcript within {timeout} s")
        return final

    def record_handler_ms(self, ms: float) -> None:
        self.handler_ms.append(ms)

    def handler_stats(self) -> dict[str, float]:
        return {"n": len(self.handler_ms), "p50_ms": round(percentile(self.handler_ms, 50), 3),
                "p95_ms": round(percentile(self.handler_ms, 95), 3),
                "max_ms": round(max(self.handler_ms, default=0.0), 3)}

    # -- the worker's side ----------------------------------------------------------------------------------
    def has_work(self) -> bool:
        with self._lock:
            return not self._done.is_set() and (bool(self._inbox) or self._stopping or self._stream is None)

    def work(self) -> None:
        try:
            self._work()
        except VoxQLError as error:
            self._fail(error)
        except Exception as error:  # the user sees a message; the worker goes on serving the others
            self._fail(VoxQLError(f"live recognition failed: {type(error).__name__}: {error}"))

    def _fail(self, error: VoxQLError) -> None:
        with self._lock:
            self._error = str(error)
            self._error_type = type(error)
            self._inbox.clear()
            self._stopping = True
        self._resampler = None  # (the worker's own: _fail runs on the worker)
        self._done.set()

    def _work(self) -> None:
        if self._done.is_set():  # cancelled (or failed) while queued
            return
        if self._engine is None:
            self._engine = self._load()
        if self._stream is None:
            self._stream = self._engine.stream(self.tags)
        with self._lock:
            chunks, self._inbox = self._inbox, []
            stopping = self._stopping
        room = max(int(max_seconds() * SAMPLE_RATE) - self._samples_in, 0)
        pieces = [self._resampler(rate, chunk) for rate, chunk in chunks]
        if stopping:  # nothing more can arrive: receive() drops chunks once stopping
            pieces.append(self._resampler.flush())
        samples = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
        samples = samples[:room]  # past the length limit audio is dropped (the status says so)
        if len(samples):
            self._peak = max(self._peak, float(np.max(np.abs(samples))))
            self._samples_in += len(samples)
            self._stream.feed(samples)
        if stopping:
            self._finish()
            return
        partial = self._transcript(self._stream.outputs(), partial=True)
        with self._lock:
            self._latest = partial
            self._recognised_s = self._recognised()
        if partial.text and (not self.published or self.published[-1][1] != partial.text):
            self.published.append((time.perf_counter(), partial.text))

    def _recognised(self) -> float:
        # The recogniser's own count when it has one (Whisper: looked at; Voxtral: decoded steps).
        seen = getattr(self._stream, "seconds_recognised", None)
        return min(seen, self._samples_in / SAMPLE_RATE) if seen is not None else self._samples_in / SAMPLE_RATE

    def _finish(self) -> None:
        if self._samples_in == 0:
            raise BadInput("microphone: nothing was recorded")
        if self._peak < SILENCE_PEAK:
            raise BadInput("microphone: the recording is silent (check the input device and its level)")
        final = self._transcript(self._stream.finish(), partial=False)
        self._resampler = None  # frees its soxr stream now rather than at interpreter exit
        with self._lock:
            self.final = final
            self._recognised_s = self._samples_in / SAMPLE_RATE
        self._done.set()

    @property
    def seconds(self) -> float:
        """Seconds of 16 kHz audio the recogniser was given."""
        return self._samples_in / SAMPLE_RATE

    def _transcript(self, outputs, partial: bool) -> Transcript:
        asr = outputs[0]
        tag = outputs[1] if len(outputs) > 1 else None
        transcript = build_transcript(self._engine, asr, tag, tags=self.tags, top_k=self.top_k, audio_s=self.seconds,
                                      total_ms=(time.perf_counter() - self.started) * 1000, partial=partial)
        with self._lock:
            received = self._received_s
        transcript.timings["received_s"] = round(received, 3)
        if not partial:
            stats = self.handler_stats()
            transcript.timings.update(handler_p50_ms=stats["p50_ms"], handler_p95_ms=stats["p95_ms"],
                                      handler_chunks=float(stats["n"]))
        return transcript
