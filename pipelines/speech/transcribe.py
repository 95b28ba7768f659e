"""The one entry point the Listen tab and the CLI share: audio in, a `Transcript` out.

A profile's `asr_model` picks the engine: Voxtral Realtime (a Hub id or a local folder), with the tag LoRA
when `tag_adapter` is set; or Whisper tiny.en through faster-whisper (`embedded:whisper-tiny.en`, or a local
CTranslate2 folder), which has no tag channel and says so instead of inventing tags.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipelines.errors import ModelNotAvailable
from pipelines.profiles import Profile
from pipelines.speech.audio import Audio, load_audio, validate
from pipelines.speech.channels import ChannelOutput
from pipelines.speech.merge import merge
from pipelines.speech.tags import DEFAULT_TOP_K, TagMention, select_top_k
from pipelines.speech.whisper_asr import display_name as whisper_display_name
from pipelines.speech.whisper_asr import is_whisper_spec

log = logging.getLogger(__name__)

REAL_TAG_SETUP = "YongkangZOU/evoxtral-realtime-rl on mistralai/Voxtral-Mini-4B-Realtime-2602"
TAGS_NEED_VOXTRAL = (
    f"the tag channel needs the Voxtral tag adapter ({REAL_TAG_SETUP}, profile gpu); "
    "Whisper gives the words only, so no tags are shown"
)
NO_ADAPTER = "no tag adapter is configured (set VOXQL_TAG_ADAPTER or use the gpu profile)"
TAGS_NEED_ADAPTER = (
    "no tag adapter is configured for Whisper: set VOXQL_TAG_ADAPTER to a Whisper tags LoRA (the cpu profile "
    "ships one, made by `python -m pipelines train-tags`); Whisper gives the words only, so no tags are shown"
)


def adapter_label(spec: str | None) -> str | None:
    """An adapter as the user sees it: a Hub id as is, a local folder by its name (never a server path)."""
    if spec and Path(spec).is_absolute():
        return Path(spec).name
    return spec


@dataclass
class Transcript:
    text: str  # the ASR channel's words, tags removed
    tags: list[str]  # every tag the tag channel wrote, in order, taxonomy or not
    tags_filtered: list[str]  # the top-k taxonomy tags, in order of first appearance
    merged: str  # tags placed into the text
    timings: dict[str, float]  # audio_s, asr_ms, tags_ms, total_ms (tags_ms equals asr_ms: one batch)
    words: list[dict] = field(default_factory=list)  # {"word", "start"}: the ASR text's words with times
    tag_events: list[dict] = field(default_factory=list)  # {"tag", "time", "score"} for the kept occurrences
    tag_scores: dict[str, float | None] = field(default_factory=dict)  # mean token log-prob per taxonomy tag
    dropped_tags: int = 0  # tag occurrences outside the 15-tag taxonomy
    tag_channel: str = "on"  # "on", "off" (switched off) or why it is unavailable
    asr_model: str = ""
    tag_adapter: str | None = None
    device: str = "cpu"
    partial: bool = False  # a live update, not the final result

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SpeechEngine:
    """One loaded ASR engine (and its tag channel, if any), shared by every user."""

    kind: str  # "voxtral" | "whisper"
    backend: object  # VoxtralEngine | WhisperEngine
    asr_model: str  # display name
    tag_adapter: str | None
    device: str
    tag_note: str | None  # why there is no tag channel; None when there is one
    memory: dict[str, float] = field(default_factory=dict)  # MB: base, adapter, two_copies (Voxtral only)
    tag_channel: object | None = None  # Whisper only: the WhisperTagChannel (converted model + tags LoRA)

    @property
    def has_tags(self) -> bool:
        return self.tag_note is None

    def channels(self, samples: np.ndarray, tags: bool) -> tuple[ChannelOutput, ChannelOutput | None]:
        if self.kind == "whisper":
            words = self.backend.channel(samples)
            return words, self.tag_channel.channel(samples, words.words) if tags and self.has_tags else None
        return self.backend.transcribe(samples, tags=tags and self.has_tags)

    def stream(self, tags: bool):
        if self.kind == "whisper":
            if tags and self.has_tags:
                from pipelines.speech.whisper_tags import TaggedWhisperStream

                return TaggedWhisperStream(self.backend.stream(), self.tag_channel)
            return self.backend.stream()
        return self.backend.stream(tags=tags and self.has_tags)

    def describe(self) -> str:
        adapter = adapter_label(self.tag_adapter) or "none"
        return f"ASR {self.asr_model} · tag adapter {adapter} · device {self.device}"


def _load(profile: Profile) -> SpeechEngine:
    if is_whisper_spec(profile.asr_model):
        from pipelines.speech.whisper_asr import get_whisper

        backend = get_whisper(profile.asr_model)
        tag_channel = None
        if profile.tag_adapter:
            from pipelines.speech.whisper_tags import get_whisper_tag_channel

            tag_channel = get_whisper_tag_channel(profile.tag_adapter)
        return SpeechEngine("whisper", backend, whisper_display_name(profile.asr_model), profile.tag_adapter,
                            backend.device, None if tag_channel else TAGS_NEED_ADAPTER, tag_channel=tag_channel)
    from pipelines.speech.voxtral import get_voxtral

    backend = get_voxtral(profile.asr_model, profile.tag_adapter)
    info = backend.info
    memory = {"base_mb": round(info.base_mb, 3), "adapter_mb": round(info.adapter_mb, 3),
              "two_copies_mb": round(info.two_copies_mb, 3)}
    return SpeechEngine("voxtral", backend, profile.asr_model, profile.tag_adapter, f"{info.device} ({info.dtype})",
                        None if backend.has_tags else NO_ADAPTER, memory)


_cache: dict[tuple[str, str | None, bool], SpeechEngine] = {}
_cache_lock = threading.Lock()


def get_speech_engine(profile: Profile, fallback: bool = False) -> SpeechEngine:
    """The engine for `profile`, loaded on first use. With `fallback`, a Voxtral that cannot load (no weights
    offline, say) gives way to the embedded Whisper, and the engine's tag note says why."""
    key = (profile.asr_model, profile.tag_adapter, fallback)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    try:
        engine = _load(profile)
    except ModelNotAvailable as error:
        if not fallback or is_whisper_spec(profile.asr_model):
            raise
        log.warning("Voxtral is not available (%s); falling back to Whisper tiny.en", error)
        from pipelines.speech.whisper_asr import EMBEDDED_WHISPER, get_whisper

        backend = get_whisper(EMBEDDED_WHISPER)
        engine = SpeechEngine("whisper", backend, whisper_display_name(EMBEDDED_WHISPER), None, backend.device,
                              f"{error}; {TAGS_NEED_VOXTRAL}")
    with _cache_lock:
        return _cache.setdefault(key, engine)


def warm_speech_engine(profile: Profile) -> threading.Thread:
    """Load the speech engine in the background (as the app starts), so the first recording waits for nothing."""

    def load() -> None:
        try:
            get_speech_engine(profile, fallback=True)
        except ModelNotAvailable as error:  # the Listen tab says so when someone records
            log.error("the speech model is not available: %s", error)

    thread = threading.Thread(target=load, name="voxql-speech-warm-up", daemon=True)
    thread.start()
    return thread


def loaded_speech_engine(profile: Profile, fallback: bool = False) -> SpeechEngine | None:
    """The engine if it is already loaded (for status lines that must not trigger a load)."""
    return _cache.get((profile.asr_model, profile.tag_adapter, fallback))


def tag_channel_note(profile: Profile, engine: SpeechEngine | None = None) -> str | None:
    """Why there is no tag channel, or None when there is one: the loaded engine's word when there is one, else
    what the profile alone tells (a Whisper model, or no tag adapter), known before any model loads."""
    if engine is not None:
        return engine.tag_note
    if profile.tag_adapter:
        return None
    return TAGS_NEED_ADAPTER if is_whisper_spec(profile.asr_model) else NO_ADAPTER


def build_transcript(engine: SpeechEngine, asr: ChannelOutput, tag: ChannelOutput | None, *, tags: bool,
                     top_k: int | None = DEFAULT_TOP_K, audio_s: float = 0.0, total_ms: float | None = None,
                     partial: bool = False) -> Transcript:
    """Both channels' outputs -> the merged result."""
    mentions: list[TagMention] = tag.mentions if tag is not None else []
    selection = select_top_k(mentions, top_k)
    if selection.mentions and all(m.time is not None for m in selection.mentions):
        placed = selection.mentions  # timed: every kept occurrence goes before its nearest word
    else:
        first: dict[str, TagMention] = {}
        for mention in selection.mentions:
            first.setdefault(mention.name, mention)
        placed = list(first.values())
    if not tags:
        channel_state = "off"
    else:
        channel_state = "on" if engine.has_tags else engine.tag_note
    asr_ms = round(asr.elapsed_ms, 1)
    return Transcript(
        text=asr.plain_text,
        tags=[m.name for m in mentions],
        tags_filtered=selection.kept,
        merged=merge(asr.words, placed),
        timings={"audio_s": round(audio_s, 3), "asr_ms": asr_ms,
                 "tags_ms": round(tag.elapsed_ms, 1) if tag is not None else 0.0,
                 "total_ms": round(total_ms if total_ms is not None else asr.elapsed_ms, 1)},
        words=[{"word": w.text, "start": w.start} for w in asr.words],
        tag_events=[{"tag": m.name, "time": m.time, "score": selection.scores.get(m.name)} for m in selection.mentions],
        tag_scores=selection.scores,
        dropped_tags=selection.out_of_taxonomy,
        tag_channel=channel_state,
        asr_model=engine.asr_model,
        tag_adapter=adapter_label(engine.tag_adapter),
        device=engine.device,
        partial=partial,
    )


def transcribe_audio(audio: Audio, engine: SpeechEngine, *, tags: bool = True,
                     top_k: int | None = DEFAULT_TOP_K) -> Transcript:
    """Whole-clip transcription: both channels in one pass, then the merge."""
    validate(audio)
    started = time.perf_counter()
    asr, tag = engine.channels(audio.samples, tags)
    total_ms = (time.perf_counter() - started) * 1000
    return build_transcript(engine, asr, tag, tags=tags, top_k=top_k, audio_s=audio.seconds, total_ms=total_ms)


def transcribe_file(path, profile: Profile, *, tags: bool = True, top_k: int | None = DEFAULT_TOP_K,
                    fallback: bool = False) -> Transcript:
    audio = validate(load_audio(path))  # check the file before loading a model for it
    return transcribe_audio(audio, get_speech_engine(profile, fallback=fallback), tags=tags, top_k=top_k)
