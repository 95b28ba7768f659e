"""The Train tab: train a text-to-SQL LoRA, watch its loss, evaluate it before/after, load it into "Ask your data".

Built the way Gradio's own demos are: the handlers below are module-level functions whose inputs and outputs are
all explicit (the app-wide `TrainContext` comes first; `build_train_tab`, which only lays out and wires, binds it
with `bind_context`). The job runner and adapter loading live in pipelines/ (`pipelines.training.jobs`,
`pipelines.engine.adapters`), next to the recipe, data, checkpoints, model card and evaluation that
`python -m pipelines train-sql` and `eval-adapter` use. One job (a training run or an evaluation) runs at a time,
in a background thread, so a closed browser tab does not stop it; Cancel stops it and a cancelled training run
keeps its last checkpoint (tick "Resume" to continue it).
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import pandas as pd

from components.ask import BASE, DEFAULT, adapter_choices
from components.common import bind_context, error_markdown, model_name, short_name
from pipelines.engine import get_engine
from pipelines.engine.adapters import ensure_adapter
from pipelines.errors import BadInput, VoxQLError
from pipelines.profiles import Profile
from pipelines.training.jobs import (EVALUATION, TRAINING, Job, JobRunner, adapter_folder, adapters_root,
                                     evaluation_progress, find_adapter)
from pipelines.training.model_card import check_base_model
from pipelines.training.sql_data import default_spider_dir, is_spider_dir
from pipelines.training.sql_sft import (PRESET_LABELS, PRESETS, TrainConfig, TrainProgress, config_from_preset,
                                        evaluate_adapter, format_duration, train_sql)

POLL_S = 1.0  # how often a running job's view refreshes
LOG_LINES = 200
SPIDER = "spider"  # typed in a folder field: the Spider folder the app found (so no server path is shown)
SPIDER_NOTE = (
    "Spider 1.0 (Yu et al., 2018; CC BY-SA 4.0) is the text-to-SQL benchmark: 10,181 questions on 200 databases. "
    "Get it from https://yale-lily.github.io/spider, unzip it and point `VOXQL_SPIDER_DIR` at the folder (the one "
    "with tables.json); the word `spider` in a field below means that folder."
)
# Hyperparameter fields, in the order of the inputs below: (config field, label).
HYPERPARAMETERS = [
    ("max_steps", "Max steps (0: by epochs)"), ("epochs", "Epochs"), ("learning_rate", "Learning rate"),
    ("batch_size", "Batch size"), ("grad_accum", "Gradient accumulation"), ("max_length", "Max length (tokens)"),
    ("lora_r", "LoRA r"), ("lora_alpha", "LoRA alpha"), ("lora_dropout", "LoRA dropout"),
    ("neftune_alpha", "NEFTune alpha (0: off)"), ("max_examples", "Max examples (0: all)"),
]
INTEGER_FIELDS = ("batch_size", "grad_accum", "max_length", "lora_r", "lora_alpha")
NOMINAL_STEPS = 15  # up to this many logged steps, the loss plot labels each step (no fractional ticks)


@dataclass
class TrainContext:
    """What every Train handler needs and no browser session owns: the app's profile, its one job runner and the
    Spider folder it found."""

    profile: Profile
    jobs: JobRunner = field(default_factory=JobRunner)
    spider: Path | None = field(default_factory=default_spider_dir)


def preset_values(preset: str) -> list:
    """The hyperparameter fields' values for a preset (0 where the config says "none")."""
    values = PRESETS[{label: key for key, label in PRESET_LABELS.items()}.get(preset, preset)]
    shown = {**values, "max_steps": max(0, values["max_steps"]), "neftune_alpha": values["neftune_alpha"] or 0,
             "max_examples": 0}
    return [shown[name] for name, _ in HYPERPARAMETERS]


# -- what users see of paths: names, never server folders -----------------------------------------------------
def _spider_folder(ctx: TrainContext, text: str | None) -> str:
    text = (text or "").strip()
    if text.lower() == SPIDER:
        if ctx.spider is None:
            raise BadInput("no Spider folder was found: download Spider 1.0 and set VOXQL_SPIDER_DIR (see the note "
                           "at the top of this tab)")
        return str(ctx.spider)
    return text


def _hide_paths(text: str, ctx: TrainContext, extra: dict[str, str] | None = None) -> str:
    """Server folders in a message replaced by what the user knows them as."""
    names = {**(extra or {}), str(adapters_root()) + "/": "", str(ctx.profile.sql_model): model_name(ctx.profile.sql_model)}
    if ctx.spider is not None:
        names[str(ctx.spider)] = SPIDER
    for path in sorted(names, key=len, reverse=True):  # longest first: a folder before its parent
        text = text.replace(path, names[path])
    return text


# -- views of a job ---------------------------------------------------------------------------------------------
def loss_frame(events: list[TrainProgress]) -> pd.DataFrame:
    points = {e.step: e.loss for e in events if e.loss is not None and e.stage == "train"}
    return pd.DataFrame({"step": list(points), "loss": list(points.values())})


def loss_plot(events: list[TrainProgress]) -> gr.LinePlot:
    """The loss by optimizer step. Few steps are drawn as labelled categories: Vega would otherwise put ticks at
    1.2, 1.4, … between them. Many steps keep a numeric axis, whose ticks are then whole steps anyway."""
    frame = loss_frame(events)
    if len(frame) <= NOMINAL_STEPS:
        shown = frame.assign(step=frame["step"].astype(str))
        return gr.LinePlot(shown, x="step", y="loss", sort=list(shown["step"]), x_axis_format=None)
    return gr.LinePlot(frame, x="step", y="loss", sort=None, x_axis_format="d")


def training_log(events: list[TrainProgress]) -> str:
    lines = [f"[{format_duration(e.elapsed_s):>7}] {e.message}" for e in events
             if not (e.stage == "train" and e.loss is None and "micro-batch" in e.message)]
    return "\n".join(lines[-LOG_LINES:])


def follow_job(job: Job, render):
    """Yield the job's view every POLL_S until it ends, then once more (the Train tab's sections all follow
    their background jobs this way)."""
    while job.running:
        yield render(job)
        time.sleep(POLL_S)
    yield render(job)


def job_status(job: Job, finished) -> str:
    """A section job's status line: its error, `finished(result)` once it has ended, else its latest message."""
    events = [e for e in job.events if not isinstance(e, str)]
    if job.error:
        return error_markdown(job.error)
    if job.result is not None:
        return finished(job.result)
    if events:
        return ("Cancelling… " if job.cancel.is_set() else "") + events[-1].message
    return "Starting…"


def cancel_message(runner: JobRunner) -> str:
    job = runner.cancel()
    return f"Cancelling the {job.kind}…" if job else "Nothing is running."


def _adapter_name(result) -> str:
    """A finished adapter as the Train fields take it: its name when it is in the app's adapter folder."""
    folder = Path(result.adapter_dir)
    return folder.name if folder.parent == adapters_root() else str(folder)


def training_status(job: Job) -> str:
    if job.error:
        return error_markdown(job.error)
    result = job.result
    if result is not None:
        if result.completed:
            loss = "" if result.final_loss is None else f", final loss {result.final_loss:.4f}"
            return (f"**Done:** {result.steps} steps in {format_duration(result.wall_time_s)}{loss}. Adapter "
                    f"**{html.escape(_adapter_name(result))}** saved with its model card: evaluate it or load it "
                    "below.")
        return (f"**Cancelled** at step {result.steps}/{result.max_steps}. The last checkpoint is kept: tick "
                "*Resume* and press *Start* to continue.")
    if not job.events:
        return "Starting…"
    last = job.events[-1]
    if last.stage != "train" or not last.max_steps:
        return f"{'Cancelling: ' if job.cancel.is_set() else ''}{last.message}"
    losses = [e.loss for e in job.events if e.loss is not None]
    parts = [f"**Step {last.step}/{last.max_steps}** ({100 * last.fraction:.0f} %)",
             f"loss {losses[-1]:.4f}" if losses else None, f"elapsed {format_duration(last.elapsed_s)}",
             f"ETA {format_duration(last.eta_s)}" if last.eta_s is not None else None,
             "cancelling after this micro-batch…" if job.cancel.is_set() else None]
    return " · ".join(p for p in parts if p)


def training_view(job: Job, ctx: TrainContext) -> tuple:
    """(status, loss plot, log, adapter field) of a training run; the adapter field gets the finished adapter."""
    done = job.result is not None and job.result.completed
    paths = job.context.get("paths")  # an upload's server path -> its file name
    return (_hide_paths(training_status(job), ctx, paths), loss_plot(job.events),
            _hide_paths(training_log(job.events), ctx, paths), _adapter_name(job.result) if done else gr.skip())


def evaluation_markdown(reports: dict) -> str:
    def pct(value) -> str:
        return "–" if value is None else f"{100 * value:.1f} %"

    if not reports:
        return "**Cancelled** before any question was scored."
    rows = ["| | execution accuracy | scored | correct |", "|---|---|---|---|"]
    for kind, report in reports.items():
        label = "base model" if kind == "base" else "with the adapter"
        rows.append(f"| {label} | **{pct(report.execution_accuracy)}** | {report.scored} | {report.correct} |")
    first = next(iter(reports.values()))
    sample = "all dev questions" if first.limit is None else f"a seeded sample of {first.limit} dev questions"
    note = ("**Cancelled:** partial numbers, not recorded." if any(r.cancelled for r in reports.values())
            else "Saved as eval-base.json / eval-adapter.json next to the adapter, and in its model card.")
    return f"Spider dev, {sample} (seed {first.seed}).\n\n" + "\n".join(rows) + f"\n\n{note}"


def evaluation_status(job: Job, ctx: TrainContext) -> str:
    """A running evaluation: which model, how far, elapsed and ETA; its table (or error) once it has ended."""
    if not job.running:
        return _hide_paths(error_markdown(job.error), ctx) if job.error else evaluation_markdown(job.result)
    cancelling = " · **cancelling…**" if job.cancel.is_set() else ""
    progress = evaluation_progress(job)
    if progress is None:
        return f"Loading the model… · elapsed {format_duration(job.elapsed_s)}{cancelling}"
    kind, done, total, eta = progress
    model = "base model" if kind == "base" else "adapter"
    step = "1/2" if kind == "base" else "2/2"
    eta_text = f" · ETA {format_duration(eta)}" if eta is not None else ""
    return (f"Evaluating the {model} ({step}): {done}/{total} questions · elapsed "
            f"{format_duration(job.elapsed_s)}{eta_text}{cancelling}")


def _evaluation_fraction(job: Job) -> tuple[float, str] | None:
    progress = evaluation_progress(job)
    if progress is None:
        return None
    kind, done, total, _ = progress
    return (done + (total if kind == "adapter" else 0)) / max(1, 2 * total), f"{kind}: {done}/{total}"


# -- handlers (module level; the context first, then the inputs, in order) -------------------------------------
def follow_training(job: Job, ctx: TrainContext, progress):
    while job.running:
        last = job.events[-1] if job.events else None
        if last is not None and last.stage == "train":
            progress(last.fraction, desc=f"step {last.step}/{last.max_steps}")
        yield training_view(job, ctx)
        time.sleep(POLL_S)
    yield training_view(job, ctx)


def follow_evaluation(job: Job, ctx: TrainContext, progress):
    while job.running:
        fraction = _evaluation_fraction(job)
        if fraction is not None:
            progress(fraction[0], desc=fraction[1])
        yield evaluation_status(job, ctx)
        time.sleep(POLL_S)
    yield evaluation_status(job, ctx)


def _train_config(ctx: TrainContext, base_model, data, upload, preset, output: Path, numbers: dict) -> TrainConfig:
    overrides = {key: value for key, value in numbers.items() if value is not None}
    overrides["max_steps"] = int(overrides.get("max_steps") or 0) or -1
    overrides["max_examples"] = int(overrides.get("max_examples") or 0) or None
    for key in INTEGER_FIELDS:
        if key in overrides:
            overrides[key] = int(overrides[key])
    source = upload or _spider_folder(ctx, data)
    if not source:
        raise BadInput("give the training data: `spider`, a Spider folder or a JSONL file")
    config = config_from_preset(preset, source, str(output), model=(base_model or "").strip() or ctx.profile.sql_model,
                                schemas_dir=str(ctx.spider) if ctx.spider else None, **overrides)
    config.neftune_alpha = config.neftune_alpha or None  # 0 switches NEFTune off
    return config


def start_training(ctx: TrainContext, base_model: str, data: str, upload: str | None, preset: str,
                   adapter_name: str, resume: bool, max_steps: float, epochs: float, learning_rate: float,
                   batch_size: float, grad_accum: float, max_length: float, lora_r: float, lora_alpha: float,
                   lora_dropout: float, neftune_alpha: float, max_examples: float, progress=gr.Progress()):
    """Start a training run in the background and stream (status, loss plot, log, adapter name) until it ends."""
    numbers = dict(max_steps=max_steps, epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                   grad_accum=grad_accum, max_length=max_length, lora_r=lora_r, lora_alpha=lora_alpha,
                   lora_dropout=lora_dropout, neftune_alpha=neftune_alpha, max_examples=max_examples)
    paths = {upload: Path(upload).name} if upload else {}
    try:
        output = adapter_folder(adapter_name)
        if resume:
            config = TrainConfig(data="", output_dir=str(output), resume=True)
        else:
            config = _train_config(ctx, base_model, data, upload, preset, output, numbers)
        job = ctx.jobs.start(TRAINING, lambda job: train_sql(config, job.events.append, job.cancel,
                                                             command="Train tab"), context={"paths": paths})
    except VoxQLError as error:
        yield _hide_paths(error_markdown(str(error)), ctx, paths), gr.skip(), gr.skip(), gr.skip()
        return
    yield from follow_training(job, ctx, progress)


def show_running_job(ctx: TrainContext, progress=gr.Progress()):
    """Re-attach to the running job (after reloading the page, say): a running evaluation streams into the
    evaluation view, and the training fields show the last training run (running or not)."""
    running = ctx.jobs.running
    training = ctx.jobs.last(TRAINING)
    if running is not None and running.kind == EVALUATION:
        last_training = training_view(training, ctx) if training else ("No training run yet.", *[gr.skip()] * 3)
        for update in follow_evaluation(running, ctx, progress):
            yield (*last_training, update)
        return
    if training is None:
        yield "No training run yet.", gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return
    for update in follow_training(training, ctx, progress):
        yield (*update, gr.skip())


def cancel_job(ctx: TrainContext) -> tuple:
    """(training status, evaluation view): the note goes next to the job being cancelled; the job's own stream
    replaces it with how the job ended."""
    job = ctx.jobs.cancel()
    if job is None:
        return "Nothing is running.", gr.skip()
    if job.kind == EVALUATION:
        return gr.skip(), evaluation_status(job, ctx)
    return f"Cancelling the {job.kind}…", gr.skip()


def _adapter_for_app(ctx: TrainContext, text: str) -> Path:
    path = find_adapter(text)
    check_base_model(path, ctx.profile.sql_model)
    return path


def start_evaluation(ctx: TrainContext, adapter: str, spider_dir: str, limit: float, seed: float,
                     progress=gr.Progress()):
    """Score the base model and the adapter on the same seeded Spider dev sample; streams the evaluation view."""
    try:
        path = _adapter_for_app(ctx, adapter)
        folder = _spider_folder(ctx, spider_dir)
        if not folder or not is_spider_dir(folder) or not (Path(folder) / "dev.json").is_file():
            raise BadInput("give the Spider folder (with dev.json, tables.json and database/) to evaluate on; "
                           "`spider` means the one the app found")
        limit_value = int(limit or 0) or None

        def run(job: Job):
            engine = get_engine(ctx.profile.sql_model, ctx.profile.sql_adapter)
            name_in_engine = ensure_adapter(engine, path, reserved=(BASE, DEFAULT))
            return evaluate_adapter(
                path, folder, engine=engine, adapter_name=name_in_engine, limit=limit_value,
                seed=int(seed or 0), cancel=job.cancel,
                progress=lambda kind, done, total: job.events.append((kind, done, total, time.monotonic())))

        job = ctx.jobs.start(EVALUATION, run)
    except VoxQLError as error:
        yield _hide_paths(error_markdown(str(error)), ctx)
        return
    yield from follow_evaluation(job, ctx, progress)


def load_into_ask(ctx: TrainContext, adapter: str) -> tuple:
    """(Adapter picker, tabs, Train note): load the adapter into the shared engine, pick it in "Ask your data" and
    go there; a toast says so on the page (the note in this tab is for when you come back)."""
    try:
        path = _adapter_for_app(ctx, adapter)
        engine = get_engine(ctx.profile.sql_model, ctx.profile.sql_adapter)
        name_in_engine = ensure_adapter(engine, path, reserved=(BASE, DEFAULT))
    except VoxQLError as error:
        return gr.skip(), gr.skip(), _hide_paths(error_markdown(str(error)), ctx)
    message = f"Loaded adapter {short_name(str(path))} as “{name_in_engine}”: “Ask your data” answers with it now."
    gr.Info(message)
    return (gr.Dropdown(choices=adapter_choices(ctx.profile, engine.info.adapters), value=name_in_engine),
            gr.Tabs(selected="ask"), html.escape(message))


def describe_upload(upload: str | None) -> str:
    """The line under the upload box: which file trains (an upload wins over the data field)."""
    if not upload:
        return ""
    return f"Training on your upload **{html.escape(Path(upload).name)}** (clear it to use the field above)."


SCROLL_LOG_JS = ("() => { const box = document.querySelector('#train-log textarea');"
                 " if (box) box.scrollTop = box.scrollHeight; }")


# -- the tab ----------------------------------------------------------------------------------------------------
def build_train_tab(profile: Profile, adapter_picker: gr.Dropdown, tabs: gr.Tabs,
                    ctx: TrainContext | None = None) -> TrainContext:
    ctx = ctx or TrainContext(profile)
    preset = "CPU quick" if profile.name == "cpu" else "seed recipe"
    found = SPIDER if ctx.spider else ""

    gr.Markdown(
        "Train a LoRA adapter for text-to-SQL on Spider's train split or a JSONL file of "
        "`{question, query, db_id | schema}`, with the same prompt the app uses. QLoRA (4-bit NF4) is used when a "
        "CUDA GPU and bitsandbytes are present, plain LoRA otherwise. One job runs at a time, in the background."
    )
    gr.Markdown(SPIDER_NOTE + ("" if ctx.spider else " **No Spider folder was found on this server.**"),
                elem_id="train-spider-note")
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            # Shown by name (a local model's folder is a server path); the value stays the model's spec.
            models = [(model_name(spec), spec) for spec in dict.fromkeys([profile.sql_model, "embedded:smollm2"])]
            model = gr.Dropdown(models, value=profile.sql_model,
                                allow_custom_value=True, label="Base model (id, folder or embedded:smollm2)",
                                elem_id="train-model")
            data = gr.Textbox(found, label="Training data: `spider` (its train split), a Spider folder or a JSONL",
                              elem_id="train-data")
            upload = gr.File(label="…or upload a JSONL", file_types=[".jsonl"], elem_id="train-upload")
            upload_note = gr.Markdown(label="Upload", elem_id="train-upload-note")
            preset_picker = gr.Radio(list(PRESET_LABELS.values()), value=preset, label="Preset", elem_id="train-preset")
            with gr.Accordion("Hyperparameters", open=False):
                fields = [gr.Number(value, label=label, elem_id=f"train-{name.replace('_', '-')}")
                          for (name, label), value in zip(HYPERPARAMETERS, preset_values(preset))]
            name = gr.Textbox(label="Adapter name", placeholder="default: sql-lora-DATE-TIME",
                              info="kept in the app's adapter folder ($VOXQL_CACHE/adapters)", elem_id="train-name")
            resume = gr.Checkbox(False, label="Resume the unfinished run of this name", elem_id="train-resume")
            with gr.Row():
                start = gr.Button("Start training", variant="primary", elem_id="train-start")
                cancel = gr.Button("Cancel", variant="stop", elem_id="train-cancel")
                attach = gr.Button("Show the running job", size="sm", elem_id="train-attach")
        with gr.Column(scale=2):
            status = gr.Markdown("No training run yet.", label="Training status", elem_id="train-status")
            loss = gr.LinePlot(loss_frame([]), x="step", y="loss", title="Training loss", label="Training loss",
                               show_label=False, elem_id="train-loss")
            log_box = gr.Textbox(label="Log", lines=10, max_lines=10, interactive=False, autoscroll=True,
                                 elem_id="train-log")
    with gr.Accordion("Evaluate and use an adapter", open=True):
        with gr.Row():
            adapter_dir = gr.Textbox(label="Adapter: its name (the last one trained here is filled in) or a folder",
                                     scale=3, elem_id="train-adapter-dir")
            spider_dir = gr.Textbox(found, label="Spider (dev): `spider` or a folder", scale=2,
                                    elem_id="train-spider-dir")
            limit = gr.Number(50, label="Dev questions (0: all)", precision=0, scale=1, elem_id="train-eval-limit")
            seed = gr.Number(0, label="Sample seed", precision=0, scale=1, elem_id="train-eval-seed")
        with gr.Row():
            evaluate = gr.Button("Evaluate before/after", elem_id="train-evaluate")
            load = gr.Button("Load into Ask your data", variant="primary", elem_id="train-load")
        eval_view = gr.Markdown(label="Evaluation", elem_id="train-eval")

    train_outputs = [status, loss, log_box, adapter_dir]
    job_events = dict(concurrency_id="train", concurrency_limit=4)
    preset_picker.change(preset_values, preset_picker, fields, api_name="train_preset")
    upload.change(describe_upload, upload, upload_note, api_visibility="private", queue=False)
    start.click(bind_context(start_training, ctx), [model, data, upload, preset_picker, name, resume, *fields],
                train_outputs, api_name="train", **job_events)
    cancel.click(bind_context(cancel_job, ctx), None, [status, eval_view], api_name="cancel_training")
    evaluate.click(bind_context(start_evaluation, ctx), [adapter_dir, spider_dir, limit, seed], eval_view,
                   api_name="evaluate_adapter", **job_events)
    load.click(bind_context(load_into_ask, ctx), adapter_dir, [adapter_picker, tabs, eval_view], api_name="load_adapter")
    attach.click(bind_context(show_running_job, ctx), None, [*train_outputs, eval_view], api_name="train_progress",
                 **job_events)
    # Keep the read-only log on its last line at every update (Gradio's autoscroll left it at the top in Chromium).
    log_box.change(None, js=SCROLL_LOG_JS, api_visibility="private", queue=False)
    return ctx
