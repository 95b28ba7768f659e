"""Background jobs (a training run, an evaluation), one at a time, and where trained adapters are kept.

The Train tab runs its jobs here, and so can a script: `JobRunner.start` runs a function in a thread and keeps
what it reports, so a closed browser tab neither stops the job nor loses its view; `cancel` asks it to stop (the
training and evaluation loops check the job's `cancel` event). One job at a time, because both hold the one model.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pipelines.errors import BadInput, VoxQLError
from pipelines.profiles import cache_dir

log = logging.getLogger(__name__)

TRAINING = "training run"
EVALUATION = "evaluation"
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}")


class Job:
    """One background run and what it reported so far (the worker appends to `events`, viewers read them)."""

    def __init__(self, kind: str, target: Callable[[Job], object], context: dict | None = None):
        self.kind = kind
        self.context = dict(context or {})  # what the starter keeps with the job (the Train tab: upload names)
        self.cancel = threading.Event()
        self.events: list = []
        self.result = None
        self.error: str | None = None
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, args=(target,), name=f"voxql-{kind}", daemon=True)

    def _run(self, target) -> None:
        try:
            self.result = target(self)
        except VoxQLError as error:
            self.error = str(error)
        except Exception as error:  # said to whoever watches the job; the traceback goes to the log
            log.exception("%s failed", self.kind)
            self.error = f"{type(error).__name__}: {error}"

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def wait(self, timeout: float | None = None) -> bool:
        """True when the job has ended within `timeout`."""
        self.thread.join(timeout)
        return not self.running


class JobRunner:
    """Runs one job at a time and remembers the last job of each kind (so "show the running job" can show the
    last training run even after an evaluation ran)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, Job] = {}
        self._running: Job | None = None

    def start(self, kind: str, target: Callable[[Job], object], context: dict | None = None) -> Job:
        with self._lock:
            if self._running is not None and self._running.running:
                raise BadInput(f"a {self._running.kind} is already running: wait for it or cancel it first")
            job = self._running = self._last[kind] = Job(kind, target, context)
            job.thread.start()
            return job

    @property
    def running(self) -> Job | None:
        job = self._running
        return job if job is not None and job.running else None

    def last(self, kind: str) -> Job | None:
        return self._last.get(kind)

    def cancel(self) -> Job | None:
        """Ask the running job to stop; returns it (None when nothing runs)."""
        job = self.running
        if job is not None:
            job.cancel.set()
        return job


def evaluation_progress(job: Job) -> tuple[str, int, int, float | None] | None:
    """(model being scored, questions done, questions per model, seconds left) of an evaluation job whose events
    are (kind, done, total, monotonic time) with kind "base" then "adapter"; None before the first report.

    The ETA is the pace since the first report (loading the model comes before it) over both models' questions.
    """
    if not job.events:
        return None
    kind, done, total, now = job.events[-1]
    first_done = job.events[0][1]
    work_done = done + (total if kind == "adapter" else 0)
    paced = work_done - first_done
    eta = (now - job.events[0][3]) / paced * (2 * total - work_done) if paced > 0 and total else None
    return kind, done, total, eta


# -- adapter folders ----------------------------------------------------------------------------------------------
def adapters_root() -> Path:
    """Where trained adapters are saved: `$VOXQL_CACHE/adapters`."""
    return cache_dir() / "adapters"


def adapter_folder(name: str | None) -> Path:
    """The folder for a new adapter called `name` (default: sql-lora-DATE-TIME)."""
    name = (name or "").strip() or f"sql-lora-{dt.datetime.now():%Y%m%d-%H%M%S}"
    if not ADAPTER_NAME.fullmatch(name):
        raise BadInput("name the adapter with letters, digits, '.', '_' or '-'")
    return adapters_root() / name


def find_adapter(text: str | None) -> Path:
    """An adapter given by the name it was trained under here, or by its folder."""
    text = (text or "").strip()
    candidates = [adapters_root() / text] if ADAPTER_NAME.fullmatch(text) else []
    candidates.append(Path(text).expanduser())
    for path in candidates:
        if text and (path / "adapter_config.json").is_file():
            return path
    raise BadInput("give the name of an adapter trained here, or a folder that holds adapter_config.json")
