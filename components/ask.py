"""The "Ask your data" tab: pick a database, ask a question, watch the SQL stream, get a table and a chart.

Built the way Gradio's own demos are: module-level handlers whose inputs and outputs are all explicit (the
session's uploads and history come in and go out as `gr.State`; the app-wide `AskContext` is bound first with
`bind_context`), and `build_ask_tab`, which only lays out and wires. Every decision (prompt, checks,
execution, charts) is made in pipelines/.
"""

from __future__ import annotations

import datetime as dt
import decimal
import html
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from components.common import bind_context, error_markdown, sql_model_markdown
from pipelines.engine import get_engine, load_error, loaded_engine
from pipelines.errors import BadInput, VoxQLError
from pipelines.profiles import Profile
from pipelines.spaces import gpu_task
from pipelines.sql.chart import choose_chart
from pipelines.sql.databases import Database, DuckDBDatabase, SchemaOnlyDatabase
from pipelines.sql.demo_data import DemoDatabase
from pipelines.sql.examples import example_labels
from pipelines.sql.pipeline import Answer, Progress, ask_stream, run_sql
from pipelines.sql.uploads import import_upload, new_session_dir, remove_session_dir

BASE = "base"  # adapter picker value for "no adapter"
DEFAULT = "default"  # the engine's name for the profile's adapter
PASTED = "pasted schema"
HISTORY_COLUMNS = ["time", "database", "question", "sql", "rows", "status", "total ms"]
NO_RESULT = pd.DataFrame(columns=["no result yet"])  # an empty frame would show Gradio's default headers "1 2 3"

# Sessions with a question being answered, and that question: a second one is queued and says so (see ask_note).
# (Module state on purpose: the note's event runs unqueued, beside the queued question, and sees no shared State.)
_ANSWERING: dict[str, str] = {}


@dataclass
class AskTab:
    """The controls other tabs talk to."""

    question: gr.Textbox
    adapter_picker: gr.Dropdown


def adapter_choices(profile: Profile, extra: dict[str, str] | None = None) -> list[tuple[str, str]]:
    choices = [(f"profile adapter ({Path(profile.sql_adapter).name})", DEFAULT)] if profile.sql_adapter else []
    choices += [(f"{name} ({Path(spec).name})", name) for name, spec in (extra or {}).items() if name != DEFAULT]
    return choices + [("base model only", BASE)]


# -- sessions and databases ---------------------------------------------------------------------------------
@dataclass
class AskContext:
    """What every Ask handler needs and no browser session owns: the app's profile and its demo databases."""

    profile: Profile
    demos: dict[str, DemoDatabase]


# Browser session -> its upload folder, so the folder goes when the page closes (an unload event gets no state).
_SESSION_DIRS: dict[str, str] = {}


def _cleanup_session(session: dict) -> None:
    if session and session.get("dir"):
        remove_session_dir(session["dir"])
        _SESSION_DIRS.pop(session.get("id"), None)


def close_session(request: gr.Request) -> None:
    """The page was closed: its uploads go now, not when Gradio drops the session's state an hour later."""
    folder = _SESSION_DIRS.pop(request.session_hash, None) if request else None
    remove_session_dir(folder)


def _database(key: str, session: dict, demos: dict[str, DemoDatabase]) -> Database:
    if key in demos:
        return DuckDBDatabase(demos[key].path, name=key)
    if key == PASTED and session.get("ddl"):
        return SchemaOnlyDatabase(session["ddl"])
    if key in session.get("uploads", {}):
        path = Path(session["uploads"][key])
        if not path.is_file():  # the page was closed and its folder removed, then the session came back
            raise BadInput(f"the upload {key!r} is gone (its page was closed): upload it again")
        return DuckDBDatabase(path, name=key)
    raise BadInput("pick a database first (a demo, an upload or a pasted schema)")


def _choices(demos: dict[str, DemoDatabase], session: dict) -> list[str]:
    return [*demos, *session.get("uploads", {}), *([PASTED] if session.get("ddl") else [])]


# -- turning answers into component values --------------------------------------------------------------------
def _plain(value):
    """Values a DataFrame and a chart can show: decimals become floats."""
    return float(value) if isinstance(value, decimal.Decimal) else value


def _column_title(name: str) -> str:
    return "count(*)" if name == "count_star()" else name  # DuckDB's name for an unaliased count(*)


def results_frame(columns: list[str], rows: list[list]) -> pd.DataFrame:
    if not columns:
        return NO_RESULT
    seen: dict[str, int] = {}
    unique = []
    for name in map(_column_title, columns):  # `SELECT count(*), count(*)` gives two columns of one name
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return pd.DataFrame([[_plain(v) for v in row] for row in rows], columns=unique)


def _status(answer: Answer) -> str:
    tries = len(answer.attempts)
    retried = f" after {tries} attempts" if tries > 1 else ""
    if answer.error:
        return error_markdown(f"{answer.error}{retried}")
    if not answer.executed:
        return f"Valid query{retried} (schema-only mode: there is no data to run it on)."
    more = " (first rows only: the result was truncated)" if answer.truncated else ""
    return f"{answer.row_count} row(s){more}{retried}."


def _timings(answer: Answer) -> str:
    t = answer.timings
    parts = []
    if t.ttft_ms is not None:
        parts.append(f"first token {t.ttft_ms:.0f} ms")
    if t.tokens_per_s:
        parts.append(f"{t.tokens_per_s:.1f} tokens/s")
    parts += [f"generation {t.generation_ms:.0f} ms", f"validation {t.validation_ms:.1f} ms",
              f"execution {t.execution_ms:.1f} ms", f"total {t.total_ms:.0f} ms", f"attempts {len(answer.attempts)}"]
    return " · ".join(parts)


def _charts(answer: Answer):
    """(bar plot, line plot) updates: at most one visible."""
    spec = choose_chart(answer.columns, answer.rows) if answer.executed else None
    if spec is None:
        return gr.BarPlot(visible=False), gr.LinePlot(visible=False)
    frame = results_frame(answer.columns, answer.rows)
    x, y = _column_title(spec.x), _column_title(spec.y)
    plot = dict(value=frame, x=x, y=y, visible=True, title=f"{y} by {x}")
    if spec.kind == "line":
        return gr.BarPlot(visible=False), gr.LinePlot(**plot)
    lowest = pd.to_numeric(frame[y], errors="coerce").min()
    # Bars start at zero (Vega would start the axis near the smallest bar, which then all but vanishes).
    return gr.BarPlot(**plot, y_lim=[min(0.0, float(lowest)) if pd.notna(lowest) else 0.0, None]), gr.LinePlot(visible=False)


def cleared_answer() -> tuple:
    """(sql, status, results, bar, line, timings, attempts) with nothing in them: no old answer under a new
    question or database."""
    return "", "", NO_RESULT, gr.BarPlot(visible=False), gr.LinePlot(visible=False), "", ""


def ask_note(text: str, request: gr.Request):
    """Said at once when a question is sent while this session's previous one is still being answered: the new
    one waits (the ask event runs `always_last`) and runs next, so it is never dropped silently."""
    running = _ANSWERING.get(request.session_hash) if request else None
    if running is None or not (text or "").strip():
        return gr.skip()
    return f"Queued: “{text.strip()}” runs as soon as the answer to “{running}” is done."


def _attempts(answer: Answer) -> str:
    """Every attempt, so a self-correction shows what it changed and why."""
    unavailable = answer.constrained not in ("on", "off")  # it says why
    fell_back = any(a.grammar == "fell back" for a in answer.attempts)
    if len(answer.attempts) < 2 and not (unavailable or fell_back or answer.vote):
        return ""  # one attempt that ran as asked: the SQL and status above say it all
    lines = [f"Schema-constrained decoding {answer.constrained}."] if unavailable else []
    if answer.vote:
        vote = answer.vote
        grounding = (f" It uses {vote['grounding']} of what the question names (values, numbers, a 'not')."
                     if vote.get("grounding") else "")
        lines.append(f"Voted over {vote['candidates']} candidates ({vote['executed']} ran): {vote['votes']} gave "
                     f"this result; chosen: the {vote['chosen']} reply.{grounding}" if vote["votes"] else
                     f"Voted over {vote['candidates']} candidates: none ran.")
    for number, attempt in enumerate(answer.attempts, 1):
        how = attempt.decoding + (", grammar dead-ended: decoded freely" if attempt.grammar == "fell back" else "")
        outcome = f"failed: {attempt.error}" if attempt.error else "ran"
        lines.append(f"{number}. ({how}) `{(attempt.sql or attempt.reply or '').strip()[:300]}` {outcome}")
    return "**Attempts**  \n" + "  \n".join(lines)


def _history_row(answer: Answer) -> list:
    status = "error" if answer.error else ("ok" if answer.executed else "valid")
    return [dt.datetime.now().strftime("%H:%M:%S"), answer.database, answer.question or "(SQL typed by hand)",
            answer.sql or "", answer.row_count, status, round(answer.timings.total_ms)]


# -- handlers (module level; the context first, then the inputs in order, state in and out) ---------------------
def _ask_options(profile: Profile, adapter: str, constrain: bool, value_hints: bool) -> dict:
    # The profile's dialect is for its own adapter; for others the pipeline reads the adapter's training record.
    dialect = profile.sql_dialect if adapter == DEFAULT else None
    return dict(dialect=dialect, constrain=constrain, value_hints=value_hints)


def _finished(ctx: AskContext, answer: Answer, history: list, engine=None, adapter: str | None = None) -> tuple:
    """answer_outputs: (sql, status, results, bar, line, timings, history, history view, model line, attempts)."""
    history = [*history, _history_row(answer)]
    info = sql_model_markdown(ctx.profile, engine.info, adapter=adapter) if engine else gr.skip()
    return (answer.sql or "", _status(answer), results_frame(answer.columns, answer.rows), *_charts(answer),
            _timings(answer), history, pd.DataFrame(history, columns=HISTORY_COLUMNS), info, _attempts(answer))


def _failed(message: str) -> tuple:
    return (gr.skip(), error_markdown(message), *[gr.skip()] * 8)


def _cleared_answer_outputs() -> tuple:
    """cleared_answer() spread over answer_outputs (history and the model line kept)."""
    sql, status, results, bar, line, timings, attempts = cleared_answer()
    return sql, status, results, bar, line, timings, gr.skip(), gr.skip(), gr.skip(), attempts


def pick_database(ctx: AskContext, database: str, session: dict) -> tuple:
    """(schema, description, examples, *cleared answer): a new database shows its schema and examples, and the
    previous answer goes."""
    session["picked"] = database  # a question still streaming for the previous one stops (see _still_picked)
    try:
        db = _database(database, session, ctx.demos)
    except VoxQLError as error:
        return gr.skip(), error_markdown(str(error)), gr.skip(), *[gr.skip()] * 8
    demo = ctx.demos.get(database)
    description = demo.description if demo else (
        "Pasted schema: queries are generated and checked, not run." if database == PASTED
        else "Your upload (this session only).")
    samples = [[q] for q in demo.examples] if demo else []
    labels = example_labels(database, demo.examples, ctx.profile.name) if demo else None  # marks known-wrong ones
    examples = gr.Dataset(samples=samples, sample_labels=labels, visible=bool(samples))
    return db.schema.to_ddl(), description, examples, "", *cleared_answer()


def _answer_stream(ctx, question, database, adapter, constrain, value_hints, session, history):
    try:
        db = _database(database, session, ctx.demos)
        profile = ctx.profile
        if loaded_engine(profile.sql_model, profile.sql_adapter) is None:
            yield (gr.skip(), "Loading the model…", *[gr.skip()] * 8)
        engine = get_engine(profile.sql_model, profile.sql_adapter)
        options = _ask_options(profile, adapter, constrain, value_hints)
        for event in ask_stream(question, db, engine, adapter=None if adapter == BASE else adapter, **options):
            if isinstance(event, Progress):
                note = {"generating": f"Generating (attempt {event.attempt})…", "executing": "Running…"}.get(
                    event.stage, event.stage.capitalize() + "…")
                yield (event.sql, note, *[gr.skip()] * 8)
            else:
                yield _finished(ctx, event, history, engine, adapter)
    except VoxQLError as error:
        yield _failed(str(error))


def ask_question(ctx: AskContext, question: str, database: str, adapter: str, constrain: bool, value_hints: bool,
                 session: dict, history: list, request: gr.Request):
    """Stream the SQL as it is written, then the table, chart, timings and attempts (answer_outputs + the
    queue note, which it clears)."""
    if not question or not question.strip():
        yield (*_failed("type a question first"), "")
        return
    session_key = request.session_hash if request else None
    if session_key:
        _ANSWERING[session_key] = question.strip()
    session["picked"] = database
    try:
        yield (*_cleared_answer_outputs(), "")  # the previous answer goes before the new one starts
        for values in _answer_stream(ctx, question, database, adapter, constrain, value_hints, session, history):
            if not _still_picked(session, database):
                return
            yield (*values, gr.skip())
    finally:
        _ANSWERING.pop(session_key, None)


def _still_picked(session: dict, database: str) -> bool:
    """Whether `database` is still the one picked (asking or comparing picks it too). Switching cancels a running
    question, but a step already under way when the cancel lands could still show its output under the new
    database; this check stops it."""
    return session.get("picked", database) == database


def run_typed_sql(ctx: AskContext, sql: str, database: str, session: dict, history: list) -> tuple:
    """Check and run SQL typed (or edited) by hand: answer_outputs."""
    try:
        return _finished(ctx, run_sql(sql or "", _database(database, session, ctx.demos)), history)
    except VoxQLError as error:
        return _failed(str(error))


def compare_answers(ctx: AskContext, question: str, database: str, adapter: str, constrain: bool,
                    value_hints: bool, session: dict):
    """Stream the base model's answer, then the adapter's, into two columns: (accordion, base sql, base status,
    base result, adapter sql, adapter status, adapter result)."""
    def problem(message: str) -> tuple:
        return gr.Accordion(open=True), "", error_markdown(message), None, "", "", None

    if not question or not question.strip():
        yield problem("type a question first")
        return
    session["picked"] = database
    try:
        db = _database(database, session, ctx.demos)
        engine = get_engine(ctx.profile.sql_model, ctx.profile.sql_adapter)
        tuned = adapter if adapter != BASE else engine.info.default_adapter
        if tuned is None:
            raise BadInput("no adapter is loaded for this model, so there is nothing to compare with "
                           "(set VOXQL_SQL_ADAPTER or load one from the Train tab)")
        values = ["", "Waiting…", None, "", "Waiting…", None]  # base sql/status/result, then the adapter's
        for at, which in ((0, BASE), (3, tuned)):
            for event in ask_stream(question, db, engine, adapter=None if which == BASE else which,
                                    **_ask_options(ctx.profile, which, constrain, value_hints)):
                if isinstance(event, Progress):
                    values[at:at + 2] = [event.sql, "Generating…"]
                else:
                    values[at:at + 3] = [event.sql or "", f"{_status(event)}  \n{_timings(event)}",
                                         results_frame(event.columns, event.rows)]
                if not _still_picked(session, database):
                    return
                yield (gr.Accordion(open=True), *values)
    except VoxQLError as error:
        yield problem(str(error))


def upload_file(ctx: AskContext, file: str | None, session: dict, request: gr.Request = None) -> tuple:
    """(database picker, upload box, message under it, session): the picker switches to the upload, which
    clears the previous answer; a refused file leaves the box so the next one can be dropped."""
    if not file:
        return gr.skip(), gr.skip(), "", session
    session = dict(session)
    new_dir = "dir" not in session  # one folder per session, made by its first upload that works
    folder = session["dir"] if not new_dir else str(new_session_dir())
    try:
        path = import_upload(file, folder)
    except VoxQLError as error:
        if new_dir:
            remove_session_dir(folder)
        return gr.skip(), None, error_markdown(str(error)), session
    name = Path(file).stem
    session["dir"] = folder
    session["uploads"] = {**session.get("uploads", {}), name: str(path)}
    if request is not None and request.session_hash:
        session["id"] = request.session_hash
        _SESSION_DIRS[request.session_hash] = folder
    return (gr.Dropdown(choices=_choices(ctx.demos, session), value=name), None,
            f"Uploaded **{html.escape(Path(file).name)}** as database `{name}`.", session)


def use_pasted_schema(ctx: AskContext, ddl: str, session: dict) -> tuple:
    """(database picker, message, session): a valid schema becomes the "pasted schema" database."""
    try:
        SchemaOnlyDatabase(ddl or "")  # validates, with a clear message
    except VoxQLError as error:
        return gr.skip(), error_markdown(str(error)), session
    session = {**session, "ddl": ddl}
    return gr.Dropdown(choices=_choices(ctx.demos, session), value=PASTED), "", session


def model_line(ctx: AskContext, adapter: str) -> str:
    profile = ctx.profile
    engine = loaded_engine(profile.sql_model, profile.sql_adapter)
    error = load_error(profile.sql_model, profile.sql_adapter)
    return sql_model_markdown(profile, engine.info if engine else None, error, adapter=adapter)


def refresh_model_status(ctx: AskContext, adapter: str) -> tuple:
    """(model line, timer): the timer switches itself off once the model has loaded (or failed to)."""
    profile = ctx.profile
    done = (loaded_engine(profile.sql_model, profile.sql_adapter) is not None
            or load_error(profile.sql_model, profile.sql_adapter) is not None)
    return model_line(ctx, adapter), gr.Timer(active=not done)


def pick_example(sample: list) -> str:
    return sample[0]


# -- the tab ----------------------------------------------------------------------------------------------------
def build_ask_tab(profile: Profile, demos: dict[str, DemoDatabase]) -> AskTab:
    ctx = AskContext(profile, demos)
    first = next(iter(demos))
    session = gr.State({}, delete_callback=_cleanup_session)
    history = gr.State([])
    model_status = gr.Markdown(sql_model_markdown(profile, None), label="Model", elem_id="model-status")
    status_timer = gr.Timer(1.0)  # until the model has loaded (or failed to), then it switches itself off

    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            db_picker = gr.Dropdown(list(demos), value=first, label="Database", elem_id="db-picker")
            db_info = gr.Markdown(demos[first].description, label="About the database")
            upload = gr.File(label="Upload CSV, Parquet, SQLite or DuckDB", elem_id="upload")
            upload_status = gr.Markdown(label="Upload message", elem_id="upload-status")
            with gr.Accordion("Paste a schema (CREATE TABLE …): generate and check without running", open=False):
                ddl_box = gr.Textbox(lines=6, label="DDL", placeholder="CREATE TABLE orders (id INTEGER, total DECIMAL(10,2));",
                                     elem_id="ddl")
                use_ddl = gr.Button("Use this schema", size="sm", elem_id="use-ddl")
                ddl_status = gr.Markdown(label="Schema message", elem_id="ddl-status")
            schema_view = gr.Code(_database(first, {}, demos).schema.to_ddl(), language="sql", interactive=False,
                                  label="Schema (the model also sees value hints under it, when they are on)",
                                  elem_id="schema", max_lines=18)
        with gr.Column(scale=2):
            question = gr.Textbox(label="Question", placeholder="Ask in plain words and press Enter",
                                  elem_id="question", lines=1, max_lines=3)
            examples = gr.Dataset(components=[question], samples=[[q] for q in demos[first].examples],
                                  sample_labels=example_labels(first, demos[first].examples, profile.name),
                                  label="Examples", elem_id="examples", visible=bool(demos[first].examples))
            queue_note = gr.Markdown(label="Queue note", elem_id="ask-queued")
            with gr.Row(equal_height=True):
                ask = gr.Button("Ask", variant="primary", elem_id="ask", scale=1, min_width=100)
                compare = gr.Button("Compare base vs adapter", elem_id="compare", scale=1, min_width=180)
                adapter_picker = gr.Dropdown(adapter_choices(profile), value=DEFAULT if profile.sql_adapter else BASE,
                                             label="Adapter", elem_id="adapter-picker", scale=2, min_width=260)
            with gr.Row():
                constrain = gr.Checkbox(True, label="Constrain to the schema (grammar)", elem_id="constrain",
                                        info="only SQL that parses and uses columns of the tables in its FROM")
                value_hints = gr.Checkbox(True, label="Show the model column values", elem_id="value-hints",
                                          info="frequent values, and values the question names")
            sql = gr.Code(language="sql", label="SQL (edit it and press Run SQL)", interactive=True, elem_id="sql",
                          wrap_lines=True)
            with gr.Row():
                run_button = gr.Button("Run SQL", elem_id="run-sql", size="sm")
                status = gr.Markdown(label="Status", elem_id="status")
            results = gr.Dataframe(NO_RESULT, label="Result", interactive=False, elem_id="results",
                                   max_height=360)
            # A plain column, not a gr.Group: a group draws a heavy border around the plot inside it.
            with gr.Column(elem_id="chart"):
                bar = gr.BarPlot(visible=False, label="Bar chart", show_label=False, elem_id="chart-bar")
                line = gr.LinePlot(visible=False, label="Line chart", show_label=False, elem_id="chart-line")
            timings = gr.Markdown(label="Timings", elem_id="timings")
            attempts = gr.Markdown(label="Attempts", elem_id="attempts")
    with gr.Accordion("Base vs adapter, side by side", open=False) as compare_box:
        with gr.Row():
            with gr.Column():
                gr.Markdown("**Base model**")
                base_sql = gr.Code(language="sql", interactive=False, label="Base model SQL", elem_id="compare-base-sql",
                                   wrap_lines=True)
                base_status = gr.Markdown(label="Base model status", elem_id="compare-base-status")
                base_results = gr.Dataframe(interactive=False, max_height=240, label="Base model result",
                                            elem_id="compare-base-results")
            with gr.Column():
                gr.Markdown("**With adapter**")
                tuned_sql = gr.Code(language="sql", interactive=False, label="Adapter SQL", elem_id="compare-adapter-sql",
                                    wrap_lines=True)
                tuned_status = gr.Markdown(label="Adapter status", elem_id="compare-adapter-status")
                tuned_results = gr.Dataframe(interactive=False, max_height=240, label="Adapter result",
                                             elem_id="compare-adapter-results")
    from components.ask_voice import build_voice_panel  # here: it imports this module's helpers

    build_voice_panel(ctx, db_picker, constrain, value_hints, session)
    with gr.Accordion("History (this session)", open=False):
        history_view = gr.Dataframe(headers=HISTORY_COLUMNS, interactive=False, label="History", elem_id="history")

    answer_outputs = [sql, status, results, bar, line, timings, history, history_view, model_status, attempts]
    cleared_outputs = [sql, status, results, bar, line, timings, attempts]
    ask_inputs = [question, db_picker, adapter_picker, constrain, value_hints, session]
    model_events = dict(concurrency_id="sql-model", concurrency_limit=4)
    # gpu_task: on ZeroGPU hardware a GPU is attached only while these run (elsewhere it changes nothing).
    private = dict(api_visibility="private", show_progress="hidden")

    status_timer.tick(bind_context(refresh_model_status, ctx), adapter_picker, [model_status, status_timer], **private)
    adapter_picker.change(bind_context(model_line, ctx), adapter_picker, model_status, **private)
    # A question sent while one runs waits for it (always_last) and the note above the buttons says so at once.
    gr.on([question.submit, ask.click], ask_note, question, queue_note, queue=False, trigger_mode="multiple",
          **private)
    asking = gr.on([question.submit, ask.click], gpu_task(bind_context(ask_question, ctx)), [*ask_inputs, history],
                   [*answer_outputs, queue_note], api_name="ask", trigger_mode="always_last", **model_events)
    run_button.click(bind_context(run_typed_sql, ctx), [sql, db_picker, session, history], answer_outputs,
                     api_name="run_sql")
    comparing = compare.click(gpu_task(bind_context(compare_answers, ctx), duration=120), ask_inputs,
                  [compare_box, base_sql, base_status, base_results, tuned_sql, tuned_status, tuned_results],
                  api_name="compare", **model_events)
    # A question still being answered belongs to the database it was asked of: switching (or uploading) stops it,
    # so its answer never shows up under the new database.
    db_picker.change(bind_context(pick_database, ctx), [db_picker, session],
                     [schema_view, db_info, examples, queue_note, *cleared_outputs], api_name="pick_database",
                     cancels=[asking, comparing])
    examples.click(pick_example, examples, question, api_visibility="private")
    upload.upload(bind_context(upload_file, ctx), [upload, session], [db_picker, upload, upload_status, session],
                  api_name="upload")
    use_ddl.click(bind_context(use_pasted_schema, ctx), [ddl_box, session], [db_picker, ddl_status, session],
                  api_name="use_schema")
    return AskTab(question=question, adapter_picker=adapter_picker)
