"""Recognition beside the microphone: a worker that serves every live session in turn.

The microphone route only appends a chunk to its session and returns (see `ListenSession.receive`);
everything slow (loading the model, resampling, VAD, decoding) happens here. Sessions take turns one step at a
time, so four people recording at once share the CPU fairly: each one lags a little, none loses audio.

One shared worker rather than a thread per session: the model decodes one thing at a time anyway (its lock),
and a queue makes the order fair instead of leaving it to whichever thread wins the lock.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Protocol, TypeVar

log = logging.getLogger(__name__)

# Recognition runs at a lower CPU priority than the web server in the same process. Measured in Chromium on
# 2 busy cores: while Whisper decoded at normal priority, the server answered the browser's chunk uploads so
# late that Gradio's client sent them out of order and overwrote some (9.5 s of 13.5 s arrived); with the model
# busy but idle CPU every chunk arrived in order. The UI's side must win the CPU: it needs almost none of it.
# VOXQL_RECOGNITION_NICE overrides it (0: same priority as the server).
RECOGNITION_NICE = 5
T = TypeVar("T")


def recognition_nice() -> int:
    try:
        return int(os.environ.get("VOXQL_RECOGNITION_NICE", RECOGNITION_NICE))
    except ValueError:
        return RECOGNITION_NICE


def lower_this_threads_priority(nice: int | None = None) -> None:
    """Make the calling thread (and every thread it starts later) yield the CPU to the rest (Linux: per thread)."""
    nice = recognition_nice() if nice is None else nice
    if nice <= 0:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError):  # not on this platform, or not allowed: run at normal priority
        pass


def build_at_low_priority(build: Callable[[], T]) -> T:
    """Run `build` on a short-lived low-priority thread. A native library's worker threads created inside it
    (CTranslate2's, at model load) inherit that priority, so all their decoding later runs below the server."""
    result: dict[str, object] = {}

    def run() -> None:
        lower_this_threads_priority()
        try:
            result["value"] = build()
        except BaseException as error:  # re-raised in the caller's thread
            result["error"] = error

    thread = threading.Thread(target=run, name="voxql-model-load", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]  # type: ignore[return-value]


class LiveWork(Protocol):
    def has_work(self) -> bool: ...

    def work(self) -> None:
        """One step of recognition; must not raise (a session keeps its own error)."""


class LiveScheduler:
    """A FIFO of sessions with pending audio, served by `workers` daemon threads (started on first use).

    A session is in the queue at most once and is worked on by one thread at a time, so its recognition state
    needs no lock of its own.
    """

    def __init__(self, workers: int = 1, name: str = "voxql-listen"):
        self.workers = workers
        self.name = name
        self._cond = threading.Condition()
        self._ready: deque[LiveWork] = deque()
        self._queued: set[int] = set()  # ids of sessions in _ready
        self._running: set[int] = set()  # ids of sessions a worker holds now
        self._threads: list[threading.Thread] = []
        self.steps = 0  # work steps done, all sessions together

    def wake(self, session: LiveWork) -> None:
        """Schedule `session` (it has new audio, or wants to finish). Cheap: called from the UI handler."""
        key = id(session)
        with self._cond:
            if key in self._queued or key in self._running:
                return  # a running session is re-queued by its worker if it still has work
            self._queued.add(key)
            self._ready.append(session)
            if len(self._threads) < self.workers:
                thread = threading.Thread(target=self._loop, name=f"{self.name}-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
            self._cond.notify()

    def _loop(self) -> None:
        lower_this_threads_priority()
        while True:
            with self._cond:
                while not self._ready:
                    self._cond.wait()
                session = self._ready.popleft()
                key = id(session)
                self._queued.discard(key)
                self._running.add(key)
            try:
                session.work()
            except Exception:  # a bug in one session must not stop the worker that serves everyone
                log.exception("live recognition step failed")
            with self._cond:
                self._running.discard(key)
                self.steps += 1
                if session.has_work() and key not in self._queued:  # to the back of the line: fair turns
                    self._queued.add(key)
                    self._ready.append(session)
                    self._cond.notify()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._ready) + len(self._running)


_shared: LiveScheduler | None = None
_shared_lock = threading.Lock()


def shared_scheduler() -> LiveScheduler:
    """The process's live worker (created on first use, like the model caches): every session shares it."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = LiveScheduler()
        return _shared
