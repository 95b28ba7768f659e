"""The "Listen" tab: speak (or upload), watch the tagged transcript grow, send it to "Ask your data".

Only wiring: audio handling, channels, tags, merging and live recognition live in pipelines/speech/. Each
browser session keeps its current recording (a `MicRecording`: an id, the chunk sequencer and its
`ListenSession`) in a `gr.State`.

The live microphone does not use Gradio's audio streaming (it loses chunks under load, see
components/mic_transport.py). The `gr.Audio` microphone stays the visible control: its Record event starts the
page's own capture and gets a recording id from the server; the page POSTs numbered PCM chunks to our route,
which hands them, in order, to the session; recognition runs on a worker beside it. A `gr.Timer`, active only
while recording, shows what recognition has produced so far. Stop waits (bounded) for every chunk the browser
announced, and the final status says what was received against what the browser recorded, and loudly when
audio was lost.
"""

from __future__ import annotations

import html
import logging
import time

import gradio as gr

from components.common import error_markdown
from components.mic_transport import ATTACH_JS, START_JS, STOP_JS, ensure_routes, registry
from pipelines.errors import VoxQLError
from pipelines.profiles import ASSETS_DIR, Profile
from pipelines.spaces import gpu_task
from pipelines.speech.audio import max_seconds
from pipelines.speech.session import ListenSession, LiveStatus
from pipelines.speech.transport import MicRecording, TransportError, TransportStats
from pipelines.speech.tags import CATEGORY, TAG_PATTERN, normalize_tag
from pipelines.speech.transcribe import (SpeechEngine, Transcript, adapter_label, get_speech_engine,
                                         loaded_speech_engine, tag_channel_note, transcribe_file)
from pipelines.speech.whisper_asr import display_name

log = logging.getLogger(__name__)

# Events that run the model share this group (file transcription). The microphone's own events only read the
# session (the refresh timer) or wait for its worker (stop), so they get groups of their own and no tight limit.
CONCURRENCY_ID = "listen-model"
CONCURRENCY_LIMIT = 4
REFRESH_CONCURRENCY_ID = "listen-refresh"
FINISH_CONCURRENCY_ID = "listen-finish"
FINISH_CONCURRENCY_LIMIT = 16
REFRESH_S = 0.5  # the transcript and status refresh this often while recording
FINISH_POLL_S = 0.25  # how often "Finishing…" is refreshed while the worker catches up after stop
# After Stop, how long to wait for the browser's end announcement and for the chunks it announced (its retries
# take about 6 s): past this, what is missing is counted as lost.
TRANSPORT_WAIT_S = 12.0
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
    return tag_channel_note(profile)


def engine_markdown(profile: Profile, engine: SpeechEngine | None, error: str | None = None) -> str:
    """One line: which ASR model, tag adapter and device are live, and the tag channel's state."""
    if error:
        return f"**ASR:** {adapter_label(display_name(profile.asr_model))} · not available: {html.escape(error)}"
    if engine is None:
        adapter = adapter_label(profile.tag_adapter) or "none"
        line = (f"**ASR:** {adapter_label(display_name(profile.asr_model))} · **tag adapter:** {adapter} · "
                f"profile `{profile.name}`"
                " · loads on first use")
        note = expected_tag_note(profile)
        return line + (f"  \n**Tag channel unavailable:** {html.escape(note)}" if note else "")
    adapter = adapter_label(engine.tag_adapter) or "none"
    line = (f"**ASR:** {html.escape(adapter_label(engine.asr_model))} · **tag adapter:** {adapter} · "
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


def live_status_markdown(status: LiveStatus, transport: TransportStats | None = None) -> str:
    """The status line while recording: audio received (in order), audio recognised, whether recognition keeps
    up, and chunks that are late or lost on their way from the browser."""
    line = f"Live… received {status.received_s:.1f} s · recognised {status.recognised_s:.1f} s"
    if status.behind:
        line += f" · **behind real time by {status.lag_s:.1f} s**: recognition is catching up"
        if not (transport and transport.missing):
            line += ", no audio is lost"
    if transport is not None and transport.held:
        line += f" · {transport.held} chunk(s) wait for an earlier one that is late"
    if status.full:
        line += f" · the {max_seconds():.0f} s limit is reached; stop to get the result"
    if transport is not None and transport.missing:
        line += f" · **{_lost_chunks(transport)} lost on the way from the browser**"
    return line


def _lost_chunks(stats: TransportStats) -> str:
    missing = list(stats.missing)
    shown = ", ".join(f"#{seq}" for seq in missing[:8]) + (", …" if len(missing) > 8 else "")
    late = f"; {stats.late} of them came too late" if stats.late else ""
    return f"{len(missing)} chunk(s) ({shown}{late})"


def transport_markdown(stats: TransportStats) -> str:
    """Received against recorded, in the browser's own count; loud when anything was lost."""
    if stats.recorded_s is None:
        return (f"received {stats.delivered_s:.2f} s in {stats.delivered} chunks · **AUDIO MAY BE LOST: the "
                "browser never said how much it recorded** (its end of recording did not arrive)")
    line = (f"received {stats.delivered_s:.2f} s of {stats.recorded_s:.2f} s recorded by the browser · "
            f"{stats.delivered} of {stats.announced} chunks, in order")
    if stats.rejected_s:
        line += f" · {stats.rejected_s:.1f} s past the {max_seconds():.0f} s limit were not taken"
    if stats.lost:
        what = (_lost_chunks(stats) + " never arrived") if stats.missing else "chunks went missing"
        line += (f" · **AUDIO LOST: {what}; about {stats.missing_s:.1f} s of the recording is not in the "
                 "transcript**")
    return line


def final_status_markdown(final: Transcript, recording: MicRecording) -> str:
    stats = recording.session.handler_stats()
    return (f"{_timings(final)} · {transport_markdown(recording.stats())} · chunk route "
            f"p50 {stats['p50_ms']:.2f} ms, p95 {stats['p95_ms']:.2f} ms over {stats['n']} chunks")


def _new_session(profile: Profile, tags: bool, k: float) -> ListenSession:
    # The model loads on the worker (not in a handler), while the first chunks wait in the session.
    return ListenSession(lambda: get_speech_engine(profile, fallback=True), tags=tags, top_k=int(k))


def _busy(current) -> bool:
    """A recording that was stopped and is still being finished."""
    return isinstance(current, MicRecording) and current.session.stopping and not current.session.done


BUSY = ("**Still finishing the previous recording**; this one is not being recorded. Wait for its result, "
        "then record again.")


# -- handlers (module level: state in, state out) ----------------------------------------------------------------
def on_start(current, tags: bool, k: float, profile: Profile, request: gr.Request = None):
    """Record pressed: a new recording (id, sequencer, session with its model warming up on the worker), whose id
    goes to the page; or a refusal (an empty id: the page drops its capture) while one is finishing."""
    if _busy(current):
        return current, "", gr.skip(), BUSY, gr.skip()
    if request is not None and getattr(request, "request", None) is not None:
        ensure_routes(getattr(request.request, "app", None))  # a Blocks launched without launch_kwargs()
    live = _new_session(profile, tags, k)
    try:
        recording = registry().issue(live)
    except TransportError as error:
        return current, "", gr.skip(), error_markdown(str(error)), gr.skip()
    if isinstance(current, MicRecording):
        forget_session(current)  # the last one is done (or was never stopped): its id is retired
    live.prepare()
    return recording, recording.id, [], "Listening…", gr.Timer(active=True)


def on_refresh(current):
    """The timer, while recording: the latest partial transcript and the status line. Never waits."""
    if not isinstance(current, MicRecording) or current.stop_requested:
        return gr.skip(), gr.skip()
    status = current.session.status()
    if status.error:
        return gr.skip(), error_markdown(status.error)
    spans = highlight(status.transcript.merged) if status.transcript else gr.skip()
    return spans, live_status_markdown(status, current.stats())


def on_stop(current, profile: Profile):
    """Stop pressed: wait (bounded) for the chunks the browser announced, then the worker finishes what is left;
    show progress until the final transcript is there."""
    off = gr.Timer(active=False)
    if not isinstance(current, MicRecording):
        yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), off
        return
    current.stop_requested = True
    live = current.session
    deadline = time.monotonic() + TRANSPORT_WAIT_S
    while not current.sequencer.wait_complete(FINISH_POLL_S) and time.monotonic() < deadline:
        stats = current.stats()
        waiting = ("the browser's end of recording" if stats.announced is None else
                   f"{stats.waiting_for} more chunk(s)")
        yield (gr.skip(), f"Finishing… received {stats.delivered_s:.1f} s · waiting for {waiting}", gr.skip(),
               gr.skip(), gr.skip(), off)
    current.sequencer.close()  # what has not come by now is lost, and counted
    live.stop()
    while (final := _final_or_error(live, FINISH_POLL_S)) is None:
        status = live.status()
        spans = highlight(status.transcript.merged) if status.transcript else gr.skip()
        yield (spans, f"Finishing… received {status.received_s:.1f} s · {status.lag_s:.1f} s left to recognise",
               gr.skip(), gr.skip(), gr.skip(), off)
    registry().finished(current.id)
    if isinstance(final, str):
        lost = current.stats()
        note = f" · {transport_markdown(lost)}" if lost.lost or lost.recorded_s is None else ""
        if current.page_error:
            note += f" · the page could not capture the microphone: {html.escape(current.page_error)}"
        yield (gr.skip(), error_markdown(final) + note, gr.skip(), gr.skip(), engine_markdown(profile, live.engine),
               off)
        return
    if current.stats().recorded_s is not None:
        final.timings["recorded_s"] = round(current.stats().recorded_s, 3)
    yield (highlight(final.merged), final_status_markdown(final, current), final.to_dict(), final.text,
           engine_markdown(profile, live.engine), off)


def _final_or_error(live: ListenSession, timeout: float) -> Transcript | str | None:
    try:
        return live.result(timeout)
    except VoxQLError as error:
        return str(error)


def forget_session(current) -> None:
    """The browser tab closed (or a new recording replaces this one): stop recognising for it, retire its id."""
    if isinstance(current, MicRecording):
        if not current.session.done:
            current.session.cancel()
        registry().discard(current.id)


def on_file(audio: str | None, tags: bool, top_k: float, profile: Profile):
    """Transcribe an audio file: (highlighted transcript, result dict, status line, plain text)."""
    if not audio:
        return [], None, error_markdown("upload or record an audio file first"), ""
    try:
        final = transcribe_file(audio, profile, tags=tags, top_k=int(top_k), fallback=True)
    except VoxQLError as error:
        return [], None, error_markdown(str(error)), ""
    return highlight(final.merged), final.to_dict(), _timings(final), final.text


def refresh_engine_line(profile: Profile) -> str:
    return engine_markdown(profile, loaded_speech_engine(profile, fallback=True))


def tags_note_markdown(note: str | None) -> str:
    """The line in place of the tag controls; the model line above says in full why there is no tag channel."""
    return "**No tags here:** this speech model gives the words only (why: see the model line above)." if note else ""


def tag_controls(profile: Profile) -> tuple:
    """(tag checkbox, top-k slider, transcript, note): the tag controls and the legend only where a tag channel
    exists (what the loaded engine says, else what the profile tells), and a line saying why when not."""
    note = tag_channel_note(profile, loaded_speech_engine(profile, fallback=True))
    available = note is None
    checkbox = gr.Checkbox(interactive=True) if available else gr.Checkbox(interactive=False, value=False)
    return (checkbox, gr.Slider(visible=available),
            gr.HighlightedText(show_legend=available), gr.Markdown(tags_note_markdown(note), visible=not available))


def to_ask(text: str):
    if not text or not text.strip():
        return gr.skip(), gr.skip(), error_markdown("there is no transcript to send yet")
    return text.strip(), gr.Tabs(selected="ask"), gr.skip()


def build_listen_tab(profile: Profile, question_box: gr.Textbox, tabs: gr.Tabs) -> None:
    session = gr.State(None, delete_callback=forget_session)  # this user's current MicRecording
    profile_state = gr.State(profile)
    plain_text = gr.State("")  # the final transcript without tags: what "Ask your data" receives
    engine_status = gr.Markdown(engine_markdown(profile, None), label="Speech model", elem_id="listen-engine")
    # Every page load shows what is live now, not what was live when the app was built (triggers=None: on load).
    # (A callable value would do the same through a public "/lambda" endpoint.)
    gr.on(None, refresh_engine_line, inputs=[profile_state], outputs=[engine_status], api_visibility="private",
          queue=False, show_progress="hidden")

    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            # The visible control only: the audio itself goes through the page's own transport. (At Stop, Gradio
            # still uploads the whole recording for its player; nothing on the server reads it, and it is cleared.)
            # No live waveform while recording: drawing it costs the browser CPU that a busy machine lacks.
            # (interactive=True: it is an output too, of the clear at Stop, and Gradio would make it static.)
            mic = gr.Audio(sources=["microphone"], type="filepath", label="Speak", elem_id="listen-mic",
                           interactive=True, waveform_options=gr.WaveformOptions(show_recording_waveform=False))
            recording_id = gr.Textbox(visible=False, elem_id="listen-recording-id")
            refresh = gr.Timer(REFRESH_S, active=False)
            upload = gr.Audio(sources=["upload"], type="filepath", label="…or upload a file (wav, flac, ogg, mp3)",
                              elem_id="listen-file")
            examples = sorted(str(path) for path in EXAMPLES_DIR.glob("*.flac"))
            if examples:
                gr.Examples([[path] for path in examples], inputs=[upload], label="Example clips (espeak-ng voices)",
                            cache_examples=False)
            no_tags = expected_tag_note(profile)
            with gr.Row():
                tags_on = gr.Checkbox(not no_tags, label="Tag channel", interactive=not no_tags,
                                      info="needs the Voxtral tag adapter" if no_tags else None,
                                      elem_id="listen-tags-on")
                # No top-k to set where no tags come (a live slider there would promise what cannot happen).
                top_k = gr.Slider(0, 5, value=2, step=1, label="Tags kept (top-k, 0 = all)", elem_id="listen-top-k",
                                  visible=not no_tags)
            tags_note = gr.Markdown(tags_note_markdown(no_tags), visible=bool(no_tags), elem_id="listen-tags-note")
            transcribe_button = gr.Button("Transcribe file", variant="primary", elem_id="listen-transcribe")
        with gr.Column(scale=2):
            transcript = gr.HighlightedText(label="Tagged transcript", color_map=COLOR_MAP, show_legend=not no_tags,
                                            combine_adjacent=False, elem_id="listen-transcript")
            status = gr.Markdown(label="Status", elem_id="listen-status")
            send = gr.Button("Ask this in “Ask your data”", elem_id="listen-send")
            with gr.Accordion("Result (JSON)", open=False):
                result = gr.JSON(label="Result", elem_id="listen-result")

    # -- microphone: the page captures and POSTs the audio itself (components/mic_transport.py) --------------
    # Record: the capture starts at once (js only), and the handler's recording id then goes to the page.
    mic.start_recording(None, js=START_JS)
    mic.start_recording(on_start, inputs=[session, tags_on, top_k, profile_state],
                        outputs=[session, recording_id, transcript, status, refresh],
                        api_visibility="private", queue=False).then(
        None, inputs=[recording_id], js=ATTACH_JS)
    refresh.tick(on_refresh, inputs=[session], outputs=[transcript, status], concurrency_id=REFRESH_CONCURRENCY_ID,
                 concurrency_limit=None, api_visibility="private", show_progress="hidden")
    mic.stop_recording(None, js=STOP_JS)  # (the page also acts at the Stop click itself)
    # Gradio's recorder then shows its own copy in a player; clear it, so Record is there for the next recording.
    mic.stop_recording(None, outputs=[mic], js="() => null")
    mic.stop_recording(on_stop, inputs=[session, profile_state],
                       outputs=[transcript, status, result, plain_text, engine_status, refresh],
                       concurrency_id=FINISH_CONCURRENCY_ID, concurrency_limit=FINISH_CONCURRENCY_LIMIT,
                       api_visibility="private", show_progress="hidden")

    # -- file (also the programmatic endpoint: gradio_client cannot drive a microphone stream) -------------------
    transcribe_button.click(gpu_task(on_file), inputs=[upload, tags_on, top_k, profile_state],
                            outputs=[transcript, result, status, plain_text], api_name="transcribe",
                            concurrency_id=CONCURRENCY_ID, concurrency_limit=CONCURRENCY_LIMIT).then(
        refresh_engine_line, inputs=[profile_state], outputs=[engine_status], api_visibility="private", queue=False).then(
        tag_controls, inputs=[profile_state], outputs=[tags_on, top_k, transcript, tags_note], api_visibility="private",
        queue=False)

    # -- to "Ask your data" ---------------------------------------------------------------------------------------
    send.click(to_ask, inputs=[plain_text], outputs=[question_box, tabs, status], api_visibility="private",
               queue=False)
