"""The "Listen" tab: speak (or upload), watch the tagged transcript grow, send it to "Ask your data".

Only wiring: audio handling, channels, tags, merging and live recognition live in pipelines/speech/. Each
browser session keeps its own `ListenSession` in a `gr.State`. The microphone's stream handler only hands the
chunk to that session and shows what recognition has produced so far: recognition runs on a worker beside
it, so the handler returns in well under a millisecond and Gradio never drops a chunk for being busy.
"""

from __future__ import annotations

import html
import logging
import time

import gradio as gr

from components.common import error_markdown
from pipelines.errors import VoxQLError
from pipelines.profiles import ASSETS_DIR, Profile
from pipelines.speech.audio import max_seconds
from pipelines.speech.session import ListenSession, LiveStatus
from pipelines.speech.tags import CATEGORY, TAG_PATTERN, normalize_tag
from pipelines.speech.transcribe import (NO_ADAPTER, TAGS_NEED_VOXTRAL, SpeechEngine, Transcript, get_speech_engine,
                                         loaded_speech_engine, transcribe_file)
from pipelines.speech.whisper_asr import display_name, is_whisper_spec

log = logging.getLogger(__name__)

# Events that run the model share this group (file transcription). The microphone's own events only touch the
# session (the stream) or wait for its worker (stop), so they get groups of their own and no tight limit: a
# stream holds its slot for the whole recording, and a full group would keep a new recording from starting.
CONCURRENCY_ID = "listen-model"
CONCURRENCY_LIMIT = 4
MIC_CONCURRENCY_ID = "listen-mic"
FINISH_CONCURRENCY_ID = "listen-finish"
FINISH_CONCURRENCY_LIMIT = 16
STREAM_EVERY_S = 0.5
FINISH_POLL_S = 0.25  # how often "Finishing…" is refreshed while the worker catches up after stop
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


def live_status_markdown(status: LiveStatus) -> str:
    """The status line while recording: audio received, audio recognised, and whether recognition keeps up."""
    line = f"Live… received {status.received_s:.1f} s · recognised {status.recognised_s:.1f} s"
    if status.behind:
        line += f" · **behind real time by {status.lag_s:.1f} s**: recognition is catching up"
        if not status.lost_audio:
            line += ", no audio is lost"
    if status.full:
        line += f" · the {max_seconds():.0f} s limit is reached; stop to get the result"
    return line + _lost_audio_note(status)


def _lost_audio_note(status: LiveStatus) -> str:
    if not status.lost_audio:
        return ""
    return (f" · **about {status.missing_s:.1f} s of the recording never reached the server** (it was too busy to "
            "take every chunk from the browser)")


def final_status_markdown(final: Transcript, live: ListenSession) -> str:
    stats = live.handler_stats()
    return (f"{_timings(final)} · received {final.timings.get('received_s', 0):.1f} s · stream handler "
            f"p50 {stats['p50_ms']:.2f} ms, p95 {stats['p95_ms']:.2f} ms over {stats['n']} chunks"
            + _lost_audio_note(live.status()))


def _new_session(profile: Profile, tags: bool, k: float) -> ListenSession:
    # The model loads on the worker (not in this handler), while the first chunks wait in the session.
    return ListenSession(lambda: get_speech_engine(profile, fallback=True), tags=tags, top_k=int(k))


def _busy(live) -> bool:
    """A recording that was stopped and is still being finished."""
    return isinstance(live, ListenSession) and live.stopping and not live.done


BUSY = ("**Still finishing the previous recording**; this one is not being recorded. Wait for its result, "
        "then record again.")


# -- handlers (module level: state in, state out) ----------------------------------------------------------------
def on_start(current, tags: bool, k: float, profile: Profile):
    """Record pressed: a new session, its model warming up on the worker; or a refusal while one is finishing."""
    if _busy(current):
        return current, gr.skip(), BUSY
    live = _new_session(profile, tags, k)
    live.prepare()
    return live, [], "Listening…"


def on_chunk(chunk, current, tags: bool, k: float, profile: Profile):
    """One microphone chunk: hand it to the session and show the latest partial transcript. Never waits."""
    started = time.perf_counter()
    if chunk is None or (isinstance(current, ListenSession) and current.stopping):
        return gr.skip(), gr.skip(), gr.skip()  # late chunks after stop, or a refused second recording
    live = current if isinstance(current, ListenSession) else _new_session(profile, tags, k)
    rate, data = chunk
    live.receive(rate, data)
    status = live.status()
    if status.error:
        outputs = (gr.skip(), error_markdown(status.error), live)
    else:
        spans = highlight(status.transcript.merged) if status.transcript else []
        outputs = (spans, live_status_markdown(status), live)
    live.record_handler_ms((time.perf_counter() - started) * 1000)
    return outputs


def on_stop(current, profile: Profile):
    """Stop pressed: the worker finishes what is left; show progress until the final transcript is there."""
    if not isinstance(current, ListenSession):
        yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return
    current.stop()
    while (final := _final_or_error(current, FINISH_POLL_S)) is None:
        status = current.status()
        spans = highlight(status.transcript.merged) if status.transcript else gr.skip()
        yield (spans, f"Finishing… received {status.received_s:.1f} s · {status.lag_s:.1f} s left to recognise",
               gr.skip(), gr.skip(), gr.skip())
    if isinstance(final, str):
        yield gr.skip(), error_markdown(final), gr.skip(), gr.skip(), engine_markdown(profile, current.engine)
        return
    yield (highlight(final.merged), final_status_markdown(final, current), final.to_dict(), final.text,
           engine_markdown(profile, current.engine))


def _final_or_error(live: ListenSession, timeout: float) -> Transcript | str | None:
    try:
        return live.result(timeout)
    except VoxQLError as error:
        return str(error)


def forget_session(live) -> None:
    """The browser tab closed: stop recognising for it."""
    if isinstance(live, ListenSession):
        live.cancel()


def on_file(path: str | None, tags: bool, k: float, profile: Profile):
    """Transcribe an audio file: (highlighted transcript, result dict, status line, plain text)."""
    if not path:
        return [], None, error_markdown("upload or record an audio file first"), ""
    try:
        final = transcribe_file(path, profile, tags=tags, top_k=int(k), fallback=True)
    except VoxQLError as error:
        return [], None, error_markdown(str(error)), ""
    return highlight(final.merged), final.to_dict(), _timings(final), final.text


def refresh_engine_line(profile: Profile) -> str:
    return engine_markdown(profile, loaded_speech_engine(profile, fallback=True))


def to_ask(text: str):
    if not text or not text.strip():
        return gr.skip(), gr.skip(), error_markdown("there is no transcript to send yet")
    return text.strip(), gr.Tabs(selected="ask"), gr.skip()


def build_listen_tab(profile: Profile, question_box: gr.Textbox, tabs: gr.Tabs) -> None:
    session = gr.State(None, delete_callback=forget_session)  # this user's ListenSession
    profile_state = gr.State(profile)
    plain_text = gr.State("")  # the final transcript without tags: what "Ask your data" receives
    # A callable value: every page load shows what is live now, not what was live when the app was built.
    engine_status = gr.Markdown(lambda: refresh_engine_line(profile), elem_id="listen-engine")

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

    # -- microphone ---------------------------------------------------------------------------------------------
    mic.start_recording(on_start, inputs=[session, tags_on, top_k, profile_state],
                        outputs=[session, transcript, status], api_visibility="private", queue=False)
    mic.stream(on_chunk, inputs=[mic, session, tags_on, top_k, profile_state], outputs=[transcript, status, session],
               stream_every=STREAM_EVERY_S, time_limit=int(max_seconds()) + 5, concurrency_id=MIC_CONCURRENCY_ID,
               concurrency_limit=None, api_visibility="private", show_progress="hidden")
    mic.stop_recording(on_stop, inputs=[session, profile_state],
                       outputs=[transcript, status, result, plain_text, engine_status],
                       concurrency_id=FINISH_CONCURRENCY_ID, concurrency_limit=FINISH_CONCURRENCY_LIMIT,
                       api_visibility="private", show_progress="hidden")

    # -- file (also the programmatic endpoint: gradio_client cannot drive a microphone stream) -------------------
    transcribe_button.click(on_file, inputs=[upload, tags_on, top_k, profile_state],
                            outputs=[transcript, result, status, plain_text], api_name="transcribe",
                            concurrency_id=CONCURRENCY_ID, concurrency_limit=CONCURRENCY_LIMIT).then(
        refresh_engine_line, inputs=[profile_state], outputs=[engine_status], api_visibility="private", queue=False)

    # -- to "Ask your data" ---------------------------------------------------------------------------------------
    send.click(to_ask, inputs=[plain_text], outputs=[question_box, tabs, status], api_visibility="private",
               queue=False)
