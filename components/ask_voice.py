""""Ask by voice", a panel of the Ask tab: one recorded or uploaded question answered two ways, side by side.

- Cascade: the Listen tab's ASR writes the transcript, then the text model answers it (`ask_cascade`).
- End to end: the speech-in model (Ultravox) hears the question itself (`ask_end_to_end`).

Both answers are checked and run like a typed one. The handler streams: the cascade's answer shows as soon as it
is ready, then the end-to-end one; a path that cannot run (no speech-in model in this profile) says why in its
own column and leaves the other.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from components.ask import DEFAULT, NO_RESULT, _ask_options, _database, _status, results_frame
from components.common import bind_context, error_markdown
from pipelines.engine import get_engine
from pipelines.errors import BadInput, VoxQLError
from pipelines.speech.audio import load_audio
from pipelines.sql.pipeline import Answer
from pipelines.spaces import gpu_task
from pipelines.sql.spoken import ask_cascade, ask_end_to_end, speech_sql_engine

WAITING = "Waiting…"


def _column(answer: Answer) -> list:
    """(sql, status with timings, result) of one path's answer."""
    seconds = answer.timings.total_ms / 1000
    heard = answer.spoken or {}
    detail = f"{seconds:.1f} s in all"
    if heard.get("transcription_ms") is not None:
        detail += f" (transcription {heard['transcription_ms'] / 1000:.1f} s)"
    return [answer.sql or "", f"{_status(answer)}  \n{detail}", results_frame(answer.columns, answer.rows)]


def ask_by_voice(ctx, recording: str | None, database: str, constrain: bool, value_hints: bool, session: dict):
    """Stream (transcript, cascade sql, status, result, end-to-end sql, status, result)."""
    if not recording:
        yield "", "", error_markdown("record or upload a spoken question first"), None, "", "", None
        return
    values = ["", "", WAITING, None, "", WAITING, None]
    try:
        audio = load_audio(recording)
        db = _database(database, session, ctx.demos)
    except VoxQLError as error:
        yield "", "", error_markdown(str(error)), None, "", "", None
        return
    options = _ask_options(ctx.profile, DEFAULT, constrain, value_hints)
    values[2] = "Transcribing, then generating…"
    yield tuple(values)
    try:
        engine = get_engine(ctx.profile.sql_model, ctx.profile.sql_adapter)
        answer = ask_cascade(audio, db, engine, ctx.profile, **options)
        values[0] = answer.spoken["transcript"] or "(nothing heard)"
        values[1:4] = _column(answer)
    except VoxQLError as error:  # a silent or too-long recording is said here, and end to end is not tried
        values[2] = error_markdown(str(error))
        if isinstance(error, BadInput):
            values[5] = "Not tried: the recording was refused."
            yield tuple(values)
            return
    values[5] = "Listening and generating…"
    yield tuple(values)
    try:
        answer = ask_end_to_end(audio, db, speech_sql_engine(ctx.profile), **options)
        values[4:7] = _column(answer)
    except VoxQLError as error:
        values[5] = error_markdown(str(error))
    yield tuple(values)


def build_voice_panel(ctx, database: gr.Dropdown, constrain: gr.Checkbox, value_hints: gr.Checkbox,
                      session: gr.State) -> None:
    """The panel's layout and wiring (inside the Ask tab, under the typed question's answer)."""
    spec = ctx.profile.speech_sql_model
    # A Hub id as it is; a folder by its name (the page does not show the server's paths)
    model = (Path(spec).name if Path(spec).is_dir() else spec) if spec else "none in this profile"
    with gr.Accordion("Ask by voice: the cascade and end to end, side by side", open=False, elem_id="voice-panel"):
        gr.Markdown(f"Record or upload a question about the selected database. **Cascade**: "
                    f"`{ctx.profile.asr_model}` writes it down, then the SQL model answers the text. **End to end**: "
                    f"the speech-in model (`{model}`) hears it and writes the SQL, no transcript in between.")
        recording = gr.Audio(sources=["microphone", "upload"], type="filepath", label="Spoken question",
                             elem_id="voice-question")
        ask = gr.Button("Ask by voice", variant="primary", elem_id="voice-ask")
        with gr.Row():
            with gr.Column():
                gr.Markdown("**Cascade** (transcript, then SQL)")
                transcript = gr.Textbox(label="Transcript", interactive=False, elem_id="voice-transcript")
                cascade_sql = gr.Code(language="sql", interactive=False, label="Cascade SQL",
                                      elem_id="voice-cascade-sql", wrap_lines=True, max_lines=10)
                cascade_status = gr.Markdown(label="Cascade status", elem_id="voice-cascade-status")
                cascade_results = gr.Dataframe(NO_RESULT, interactive=False, max_height=240, label="Cascade result",
                                               elem_id="voice-cascade-results")
            with gr.Column():
                gr.Markdown("**End to end** (speech in, SQL out)")
                direct_sql = gr.Code(language="sql", interactive=False, label="End-to-end SQL",
                                     elem_id="voice-direct-sql", wrap_lines=True, max_lines=10)
                direct_status = gr.Markdown(label="End-to-end status", elem_id="voice-direct-status")
                direct_results = gr.Dataframe(NO_RESULT, interactive=False, max_height=240, label="End-to-end result",
                                              elem_id="voice-direct-results")
    ask.click(gpu_task(bind_context(ask_by_voice, ctx), duration=120),
              [recording, database, constrain, value_hints, session],
              [transcript, cascade_sql, cascade_status, cascade_results, direct_sql, direct_status, direct_results],
              api_name="ask_by_voice", trigger_mode="once", concurrency_id="sql-model", concurrency_limit=4)
