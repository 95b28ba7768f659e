"""The "Listen" tab: speak (or upload), watch the tagged transcript grow, send it to "Ask your data".

Only wiring: audio handling, channels, tags and merging live in pipelines/speech/. Each browser session keeps
its own `ListenSession` in a `gr.State`; the model behind it is loaded once, on first use, and shared.
"""

from __future__ import annotations

import html
import logging

import gradio as gr

from components.common import error_markdown
from pipelines.errors import VoxQLError
from pipelines.profiles import ASSETS_DIR, Profile
from pipelines.speech.audio import max_seconds
from pipelines.speech.session import ListenSession
from pipelines.speech.tags import CATEGORY, TAG_PATTERN, normalize_tag
from pipelines.speech.transcribe import (NO_ADAPTER, TAGS_NEED_VOXTRAL, SpeechEngine, Transcript, get_speech_engine,
                                         loaded_speech_engine, transcribe_file)
from pipelines.speech.whisper_asr import display_name, is_whisper_spec

log = logging.getLogger(__name__)

# One model serves everyone: events on it share this group. The engine's lock makes each decode step
# exclusive, so several streams can be admitted and interleave step by step.
CONCURRENCY_ID = "listen-model"
CONCURRENCY_LIMIT = 4
STREAM_EVERY_S = 0.5
STOPPED = "stopped"  # session state between recordings, so late chunks do not start a new one
EXAMPLES_DIR = ASSETS_DIR / "audio"  # made by assets/audio/make_examples.py
COLOR_MAP = {"emotion": "#f59e0b", "nonverbal": "#10b981", "delivery": "#6366f1", "pause": "#9ca3af",
             "other": "#ef4444"}


def highlight(merged: str) -> list[tuple[str, str | None]]:
    """HighlightedText value: tags labelled by their category, words unlabelled."""
    spans: list[tuple[str, str | None]] = []
    position = 0
    for match in TAG_PATTERN.finditer(merged):
        if match.start() > position:
            spans.append((merged[position:match.start()], None))
        spans.append((match.group(0), CATEGORY.get(normalize_tag(match.group(1)), "other")))
        position = match.end()
    if position < len(merged):
        spans.append((merged[position:], None))
    return spans


def expected_tag_note(profile: Profile) -> str | None:
    """Why this profile can have no tag channel, known before any model loads."""
    if is_whisper_spec(profile.asr_model):
        return TAGS_NEED_VOXTRAL
    return None if profile.tag_adapter else NO_ADAPTER


def engine_markdown(profile: Profile, engine: SpeechEngine | None, error: str | None = None) -> str:
    """One line: which ASR model, tag adapter and device are live, and the tag channel's state."""
    if error:
        return f"**ASR:** {display_name(profile.asr_model)} · not available: {html.escape(error)}"
    if engine is None:
        adapter = profile.tag_adapter or "none"
        line = (f"**ASR:** {display_name(profile.asr_model)} · **tag adapter:** {adapter} · profile `{profile.name}`"
                " · loads on first use")
        note = expected_tag_note(profile)
        return line + (f"  \n**Tag channel unavailable:** {html.escape(note)}" if note else "")
    line = (f"**ASR:** {html.escape(engine.asr_model)} · **tag adapter:** {engine.tag_adapter or 'none'} · "
            f"**device:** {engine.device} · profile `{profile.name}`")
    if engine.memory:
        line += (f" · one base + LoRA in memory: {engine.memory['base_mb'] + engine.memory['adapter_mb']:.1f} MB "
                 f"(two copies would be {engine.memory['two_copies_mb']:.1f} MB)")
    if not engine.has_tags:
        line += f"  \n**Tag channel unavailable:** {html.escape(engine.tag_note)}"
    return line


def _timings(t: Transcript) -> str:
    parts = [f"audio {t.timings.get('audio_s', 0):.1f} s", f"decoding {t.timings.get('asr_ms', 0):.0f} ms"]
    if t.tag_channel == "on":
        parts.append(f"tags kept: {', '.join(t.tags_filtered) or 'none'}")
        if t.dropped_tags:
            parts.append(f"{t.dropped_tags} tag(s) outside the taxonomy dropped")
    elif t.tag_channel == "off":
        parts.append("tag channel off")
    return ("Live… " if t.partial else "Done. ") + " · ".join(parts)


def build_listen_tab(profile: Profile, question_box: gr.Textbox, tabs: gr.Tabs) -> None:
    session = gr.State(None)  # this user's ListenSession while recording; STOPPED after
    plain_text = gr.State("")  # the final transcript without tags: what "Ask your data" receives
    # A callable value: every page load shows what is live now, not what was live when the app was built.
    engine_status = gr.Markdown(lambda: engine_markdown(profile, loaded_speech_engine(profile, fallback=True)),
                                elem_id="listen-engine")

    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            mic = gr.Audio(sources=["microphone"], streaming=True, type="numpy", label="Speak",
                           elem_id="listen-mic")
            upload = gr.Audio(sources=["upload"], type="filepath", label="…or upload a file (wav, flac, ogg, mp3)",
                              elem_id="listen-file")
            examples = sorted(str(path) for path in EXAMPLES_DIR.glob("*.flac"))
            if examples:
                gr.Examples([[path] for path in examples], inputs=[upload], label="Example clips (espeak-ng voices)",
                            cache_examples=False)
            with gr.Row():
                no_tags = expected_tag_note(profile)
                tags_on = gr.Checkbox(not no_tags, label="Tag channel", interactive=not no_tags,
                                      info="needs the Voxtral tag adapter" if no_tags else None,
                                      elem_id="listen-tags-on")
                top_k = gr.Slider(0, 5, value=2, step=1, label="Tags kept (top-k, 0 = all)", elem_id="listen-top-k")
            transcribe_button = gr.Button("Transcribe file", variant="primary", elem_id="listen-transcribe")
        with gr.Column(scale=2):
            transcript = gr.HighlightedText(label="Tagged transcript", color_map=COLOR_MAP, show_legend=True,
                                            combine_adjacent=False, elem_id="listen-transcript")
            status = gr.Markdown(elem_id="listen-status")
            send = gr.Button("Ask this in “Ask your data”", elem_id="listen-send")
            with gr.Accordion("Result (JSON)", open=False):
                result = gr.JSON(elem_id="listen-result")

    def engine() -> SpeechEngine:
        return get_speech_engine(profile, fallback=True)

    # -- microphone ---------------------------------------------------------------------------------------------
    def on_chunk(chunk, current: ListenSession | str | None, tags: bool, k: float):
        if chunk is None or current == STOPPED:  # a chunk that arrives after stop belongs to no recording
            return gr.skip(), gr.skip(), current, gr.skip()
        try:
            live = current or ListenSession(engine(), tags=tags, top_k=int(k))
            rate, data = chunk
            update = live.push(rate, data)
        except VoxQLError as error:  # STOPPED: the rest of this recording's chunks are ignored, not retried
            return gr.skip(), error_markdown(str(error)), STOPPED, engine_markdown(profile, None, str(error))
        note = f" · the {max_seconds():.0f} s limit is reached; stop to get the result" if live.full else ""
        return highlight(update.merged), _timings(update) + note, live, engine_markdown(profile, live.engine)

    def on_stop(current: ListenSession | str | None):
        if not isinstance(current, ListenSession):
            return gr.skip(), gr.skip(), gr.skip(), STOPPED, gr.skip()
        try:
            final = current.stop()
        except VoxQLError as error:
            return gr.skip(), error_markdown(str(error)), gr.skip(), STOPPED, gr.skip()
        return highlight(final.merged), _timings(final), final.to_dict(), STOPPED, final.text

    mic.stream(on_chunk, inputs=[mic, session, tags_on, top_k],
               outputs=[transcript, status, session, engine_status], stream_every=STREAM_EVERY_S,
               time_limit=int(max_seconds()) + 5, concurrency_id=CONCURRENCY_ID, concurrency_limit=CONCURRENCY_LIMIT,
               api_visibility="private", show_progress="hidden")
    mic.stop_recording(on_stop, inputs=[session], outputs=[transcript, status, result, session, plain_text],
                       concurrency_id=CONCURRENCY_ID, concurrency_limit=CONCURRENCY_LIMIT, api_visibility="private")
    mic.start_recording(lambda: (None, [], "Listening…"), outputs=[session, transcript, status],
                        api_visibility="private", queue=False)

    # -- file (also the programmatic endpoint: gradio_client cannot drive a microphone stream) -------------------
    def on_file(path: str | None, tags: bool, k: float):
        """Transcribe an audio file: (highlighted transcript, result dict, status line, plain text)."""
        if not path:
            return [], None, error_markdown("upload or record an audio file first"), ""
        try:
            final = transcribe_file(path, profile, tags=tags, top_k=int(k), fallback=True)
        except VoxQLError as error:
            return [], None, error_markdown(str(error)), ""
        return highlight(final.merged), final.to_dict(), _timings(final), final.text

    transcribe_button.click(on_file, inputs=[upload, tags_on, top_k], outputs=[transcript, result, status, plain_text],
                            api_name="transcribe", concurrency_id=CONCURRENCY_ID,
                            concurrency_limit=CONCURRENCY_LIMIT).then(
        lambda: engine_markdown(profile, loaded_speech_engine(profile, fallback=True)), outputs=[engine_status],
        api_visibility="private", queue=False)

    # -- to "Ask your data" ---------------------------------------------------------------------------------------
    def to_ask(text: str):
        if not text or not text.strip():
            return gr.skip(), gr.skip(), error_markdown("there is no transcript to send yet")
        return text.strip(), gr.Tabs(selected="ask"), gr.skip()

    send.click(to_ask, inputs=[plain_text], outputs=[question_box, tabs, status], api_visibility="private",
               queue=False)
