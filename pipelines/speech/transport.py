"""The live microphone's transport, server side: numbered PCM chunks in, in order, with honest loss accounting.

The browser (components/mic_transport.py) captures the microphone itself and POSTs int16 PCM chunks, each with
the recording's id and a sequence number, and at Stop says how many chunks it made and how much it recorded.
This module is the plain-Python half (no web code):

- `ChunkSequencer` puts one recording's chunks in order: out-of-order chunks wait for the gap before them,
  duplicates are dropped, a gap that is never filled is counted as lost (and a chunk that arrives after its gap
  was given up on is counted as late, and lost too). It hands the chunks, in order, to a delivery function.
- `MicRecording` ties a sequencer to the user's `ListenSession` (delivery is `session.receive`), and checks
  each chunk's size, rate and the recording's length limit.
- `RecordingRegistry` maps random, unguessable recording ids (issued here, server-side) to recordings. Chunks
  for an id that is issued but not yet attached to a session are held (briefly: an issued id expires); an id
  it never issued is unknown.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipelines.speech.audio import max_seconds

MAX_CHUNK_BYTES = 256 * 1024  # one POST: 1.3 s of 96 kHz int16; the browser sends 0.25 s
MIN_RATE, MAX_RATE = 8_000, 192_000
MAX_SEQ = 100_000  # sequence numbers: 7 h of 0.25 s chunks, far past any length limit
# A chunk that is missing while later ones wait: how long to hold the later ones for it (the browser's retries take
# about 6 s in all) before giving the gap up as lost, so that live recognition does not stall on it for ever.
GAP_WAIT_S = 8.0
# An issued id with no session attached, or a recording nobody touched for this long, is forgotten.
ISSUED_TTL_S = 30.0
IDLE_TTL_S = 120.0
KEEP_DONE_S = 60.0  # a finished recording still answers (late chunks are counted, not taken) this long
MAX_RECORDINGS = 256


class TransportError(Exception):
    """A chunk or an announcement refused; `status` is the HTTP status the route answers with."""

    status = 400


class UnknownRecording(TransportError):
    status = 404


class ChunkTooLarge(TransportError):
    status = 413


class TooManyRecordings(TransportError):
    status = 503


@dataclass(frozen=True)
class TransportStats:
    """What arrived of one recording, in the browser's own terms."""

    delivered: int  # chunks handed on, in order
    delivered_s: float  # their audio
    missing: tuple[int, ...]  # sequence numbers given up on (never arrived, or arrived after their gap closed)
    late: int  # of those, how many arrived after all
    duplicates: int
    held: int  # chunks that arrived out of order and wait for an earlier one
    announced: int | None  # chunks the browser says it made (None until Stop)
    recorded_s: float | None  # audio the browser says it recorded (None until Stop)
    rejected_s: float = 0.0  # audio refused for the length limit
    closed: bool = False
    chunk_s: float = 0.0  # the typical chunk's length
    passed: int = 0  # sequence numbers dealt with (delivered, refused for the limit, or given up)

    @property
    def complete(self) -> bool:
        """Every announced chunk arrived (nothing missing, nothing waiting)."""
        return self.announced is not None and self.passed >= self.announced and not self.missing and not self.held

    @property
    def waiting_for(self) -> int | None:
        """Announced chunks not in yet (None before the end is announced)."""
        return None if self.announced is None else max(self.announced - self.passed - self.held, 0)

    @property
    def missing_s(self) -> float:
        """Audio that did not reach recognition: missing chunks, or recorded minus received (whichever is more)."""
        by_chunks = len(self.missing) * self.chunk_s
        by_length = (self.recorded_s - self.delivered_s - self.rejected_s) if self.recorded_s is not None else 0.0
        return max(by_chunks, by_length, 0.0)

    @property
    def lost(self) -> bool:
        """Audio was lost: a sequence number never made it, or the browser recorded more than a chunk beyond what
        arrived."""
        if self.missing:
            return True
        if self.recorded_s is None:
            return False
        return self.recorded_s - self.delivered_s - self.rejected_s > max(self.chunk_s, 0.05)


@dataclass
class _Chunk:
    rate: int
    samples: np.ndarray
    arrived: float
    rejected_s: float = 0.0  # refused for the length limit: its place is kept, its audio is not taken


class ChunkSequencer:
    """One recording's chunks, put in order by sequence number (0, 1, 2, ...). Thread-safe."""

    def __init__(self, deliver: Callable[[int, np.ndarray], None] | None = None, *, gap_wait_s: float = GAP_WAIT_S,
                 clock: Callable[[], float] = time.monotonic):
        self._deliver = deliver
        self.gap_wait_s = gap_wait_s
        self._clock = clock
        self._lock = threading.RLock()
        self._next = 0  # the next sequence number to hand on
        self._held: dict[int, _Chunk] = {}  # arrived out of order
        self._ready: list[tuple[int, np.ndarray]] = []  # in order, waiting for a delivery function
        self._missing: list[int] = []
        self._late = 0
        self._duplicates = 0
        self._delivered = 0
        self._delivered_s = 0.0
        self._lengths: list[float] = []
        self._announced: int | None = None
        self._recorded_s: float | None = None
        self._rejected_s = 0.0
        self._closed = False
        self._complete = threading.Event()

    def attach(self, deliver: Callable[[int, np.ndarray], None]) -> None:
        """The delivery function, when it was not there at creation: what waited for it goes out now, in order."""
        with self._lock:
            self._deliver = deliver
            ready, self._ready = self._ready, []
            for rate, samples in ready:
                deliver(rate, samples)

    def put(self, seq: int, rate: int, samples: np.ndarray, *, rejected_s: float = 0.0) -> str:
        """Take chunk `seq`: "ok" (taken), "duplicate" (seen before) or "late" (its gap was already given up).
        `rejected_s`: the chunk was refused (too long a recording); it fills its place, and no audio goes on."""
        if not 0 <= seq < MAX_SEQ:
            raise TransportError(f"sequence number {seq} is outside 0-{MAX_SEQ - 1}")
        with self._lock:
            if seq < self._next or seq in self._held:
                if seq in self._missing:
                    self._late += 1
                    return "late"
                self._duplicates += 1
                return "duplicate"
            if self._closed:
                self._late += 1
                return "late"
            if self._announced is not None and seq >= self._announced:
                raise TransportError(f"chunk {seq} is past the {self._announced} chunks announced")
            self._held[seq] = _Chunk(int(rate), samples, self._clock(), rejected_s)
            self._advance()
            return "ok"

    def end(self, chunks: int, recorded_s: float | None = None) -> None:
        """The browser's Stop: it made `chunks` chunks (0 .. chunks-1) and recorded `recorded_s` seconds."""
        if not 0 <= chunks <= MAX_SEQ:
            raise TransportError(f"the number of chunks {chunks} is outside 0-{MAX_SEQ}")
        with self._lock:
            if self._announced is not None and self._announced != chunks:
                raise TransportError(f"{chunks} chunks announced, {self._announced} before")
            if self._held and max(self._held) >= chunks:
                raise TransportError(f"{chunks} chunks announced, but chunk {max(self._held)} arrived")
            self._announced = chunks
            self._recorded_s = None if recorded_s is None or not math.isfinite(recorded_s) else max(recorded_s, 0.0)
            self._advance()

    def close(self) -> TransportStats:
        """No more waiting: give up every gap (lost), hand on what waited behind them, and take nothing more."""
        with self._lock:
            if not self._closed:
                end = self._announced if self._announced is not None else (max(self._held) + 1 if self._held else
                                                                           self._next)
                while self._next < end:
                    if self._next in self._held:
                        self._take(self._next)
                    else:
                        self._skip_to(min([seq for seq in self._held if seq > self._next], default=end))
                self._closed = True
                self._complete.set()
            return self.stats()

    def check_gaps(self) -> None:
        """Give up gaps that later chunks have waited on for longer than `gap_wait_s`."""
        with self._lock:
            self._advance()

    def wait_complete(self, timeout: float) -> bool:
        """Wait until every announced chunk is in (or the sequencer is closed)."""
        deadline = time.monotonic() + timeout
        while not self._complete.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._complete.wait(min(left, 0.1))
            self.check_gaps()
        return self._complete.is_set()

    @property
    def complete(self) -> bool:
        return self._complete.is_set()

    def stats(self) -> TransportStats:
        with self._lock:
            chunk_s = float(np.median(self._lengths)) if self._lengths else 0.0
            return TransportStats(delivered=self._delivered, delivered_s=self._delivered_s,
                                  missing=tuple(self._missing), late=self._late, duplicates=self._duplicates,
                                  held=len(self._held), announced=self._announced, recorded_s=self._recorded_s,
                                  rejected_s=self._rejected_s, closed=self._closed, chunk_s=chunk_s,
                                  passed=self._next)

    # -- under the lock ---------------------------------------------------------------------------------------
    def _advance(self) -> None:
        while True:
            if self._next in self._held:
                self._take(self._next)
            elif self._held and self._clock() - min(c.arrived for c in self._held.values()) > self.gap_wait_s:
                self._skip_to(min(self._held))  # a later chunk waited too long for the ones before it
            else:
                break
        if self._announced is not None and self._next >= self._announced and not self._held:
            self._complete.set()

    def _skip_to(self, seq: int) -> None:
        self._missing.extend(range(self._next, seq))
        self._next = seq

    def _take(self, seq: int) -> None:
        chunk = self._held.pop(seq)
        self._next = seq + 1
        if chunk.rejected_s:
            self._rejected_s += chunk.rejected_s
            return
        seconds = len(chunk.samples) / chunk.rate
        self._delivered += 1
        self._delivered_s += seconds
        self._lengths.append(seconds)
        if self._deliver is None:
            self._ready.append((chunk.rate, chunk.samples))
        else:
            self._deliver(chunk.rate, chunk.samples)


def decode_pcm16(body: bytes) -> np.ndarray:
    """Little-endian int16 mono PCM, as the browser sends it. Nothing else is accepted (or executed)."""
    if len(body) % 2:
        raise TransportError("a PCM chunk has an odd number of bytes")
    return np.frombuffer(body, dtype="<i2").astype(np.int16)


@dataclass
class MicRecording:
    """One live recording: its id, its sequencer, and (once attached) the session its chunks go to."""

    id: str
    sequencer: ChunkSequencer
    session: object | None = None  # a ListenSession (anything with receive(rate, samples))
    created: float = field(default_factory=time.monotonic)
    touched: float = field(default_factory=time.monotonic)
    route_ms: list[float] = field(default_factory=list)  # the route's own time per chunk
    accepted_s: float = 0.0  # audio taken in (in order or held), for the length limit
    rate: int | None = None
    finished_at: float | None = None
    stop_requested: bool = False  # the UI's Stop came (its live refresh stops)
    page_error: str | None = None  # why the page could not capture, as it said at the end

    def put(self, seq: int, rate: int, body: bytes) -> str:
        if len(body) > MAX_CHUNK_BYTES:
            raise ChunkTooLarge(f"a chunk is at most {MAX_CHUNK_BYTES} bytes")
        if not MIN_RATE <= rate <= MAX_RATE:
            raise TransportError(f"sample rate {rate} is outside {MIN_RATE}-{MAX_RATE} Hz")
        if self.rate is not None and rate != self.rate:
            raise TransportError(f"sample rate {rate} changed from {self.rate} Hz")
        samples = decode_pcm16(body)
        seconds = len(samples) / rate
        self.touched = time.monotonic()
        if self.accepted_s + seconds > max_seconds() + 1.0:
            if self.sequencer.put(seq, rate, samples[:0], rejected_s=seconds) == "ok":
                self.accepted_s += seconds  # (counted once: a retried refusal is a duplicate)
            raise ChunkTooLarge(f"the recording is past the {max_seconds():.0f} s limit")
        outcome = self.sequencer.put(seq, rate, samples)
        if outcome == "ok":
            self.rate = rate
            self.accepted_s += seconds
            self._finish_if_complete()
        return outcome

    def end(self, chunks: int, recorded_s: float | None) -> TransportStats:
        self.touched = time.monotonic()
        self.sequencer.end(chunks, recorded_s)
        self._finish_if_complete()
        return self.sequencer.stats()

    def _finish_if_complete(self) -> None:
        # Every announced chunk is in: recognition can finish now, without waiting for the UI's stop event.
        if self.sequencer.complete and self.session is not None and hasattr(self.session, "stop"):
            self.session.stop()

    def record_route_ms(self, ms: float) -> None:
        self.route_ms.append(ms)
        if self.session is not None and hasattr(self.session, "record_handler_ms"):
            self.session.record_handler_ms(ms)

    def stats(self) -> TransportStats:
        self.sequencer.check_gaps()
        return self.sequencer.stats()


class RecordingRegistry:
    """Live recordings by id. Ids are issued here (`secrets.token_urlsafe`), never taken from the browser."""

    def __init__(self, *, issued_ttl_s: float = ISSUED_TTL_S, idle_ttl_s: float = IDLE_TTL_S,
                 keep_done_s: float = KEEP_DONE_S, max_recordings: int = MAX_RECORDINGS,
                 gap_wait_s: float = GAP_WAIT_S):
        self.issued_ttl_s = issued_ttl_s
        self.idle_ttl_s = idle_ttl_s
        self.keep_done_s = keep_done_s
        self.max_recordings = max_recordings
        self.gap_wait_s = gap_wait_s
        self._lock = threading.Lock()
        self._recordings: dict[str, MicRecording] = {}

    def issue(self, session=None) -> MicRecording:
        """A new recording with a fresh id; its chunks are held until `attach` gives it a session."""
        with self._lock:
            self._sweep()
            if len(self._recordings) >= self.max_recordings:
                raise TooManyRecordings(f"{self.max_recordings} recordings are live already")
            rid = secrets.token_urlsafe(18)
            recording = MicRecording(rid, ChunkSequencer(gap_wait_s=self.gap_wait_s))
            self._recordings[rid] = recording
        if session is not None:
            self.attach(rid, session)
        return recording

    def attach(self, rid: str, session) -> MicRecording:
        recording = self.get(rid)
        recording.session = session
        recording.touched = time.monotonic()
        recording.sequencer.attach(session.receive)
        recording._finish_if_complete()
        return recording

    def get(self, rid: str) -> MicRecording:
        with self._lock:
            recording = self._recordings.get(rid) if isinstance(rid, str) else None
            if recording is None or self._expired(recording, time.monotonic()):
                raise UnknownRecording("no such recording")
            return recording

    def put(self, rid: str, seq: int, rate: int, body: bytes) -> str:
        return self.get(rid).put(seq, rate, body)

    def end(self, rid: str, chunks: int, recorded_s: float | None) -> TransportStats:
        return self.get(rid).end(chunks, recorded_s)

    def finished(self, rid: str) -> None:
        """The recording's result is out: keep answering its id a while (late chunks are counted), then forget it."""
        with self._lock:
            recording = self._recordings.get(rid)
            if recording is not None and recording.finished_at is None:
                recording.finished_at = time.monotonic()

    def discard(self, rid: str) -> None:
        with self._lock:
            self._recordings.pop(rid, None)

    def __contains__(self, rid: str) -> bool:
        try:
            self.get(rid)
        except UnknownRecording:
            return False
        return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._recordings)

    def _expired(self, recording: MicRecording, now: float) -> bool:
        if recording.finished_at is not None:
            return now - recording.finished_at > self.keep_done_s
        if recording.session is None:
            return now - recording.created > self.issued_ttl_s
        return now - recording.touched > self.idle_ttl_s + max_seconds()

    def _sweep(self) -> None:
        now = time.monotonic()
        for rid in [rid for rid, rec in self._recordings.items() if self._expired(rec, now)]:
            del self._recordings[rid]


_shared: RecordingRegistry | None = None
_shared_lock = threading.Lock()


def shared_registry() -> RecordingRegistry:
    """The process's live recordings (the route and the Listen tab's handlers share it)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = RecordingRegistry()
        return _shared
