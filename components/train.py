"""The Train tab: train a text-to-SQL LoRA, watch its loss, evaluate it before/after, load it into "Ask your data".

Only wiring: the recipe, data, checkpoints, model card and evaluation live in pipelines/training/ (the same
functions `python -m pipelines train-sql` and `eval-adapter` call). One job (a training run or an evaluation)
runs at a time, in a background thread, so a closed browser tab does not stop it; Cancel stops it and a
cancelled training run keeps its last checkpoint (tick "Resume" to continue it).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import gradio as gr
import pandas as pd

from components.ask import BASE, DEFAULT, adapter_choices
from components.common import error_markdown
from pipelines.engine import get_engine
from pipelines.engine.loading import display_name
from pipelines.errors import BadInput, VoxQLError
from pipelines.profiles import Profile, cache_dir
from pipelines.training.model_card import check_base_model
from pipelines.training.sql_data import default_spider_dir, is_spider_dir
from pipelines.training.sql_sft import (
    PRESET_LABELS,
    PRESETS,
    TrainConfig,
    TrainProgress,
    config_from_preset,
    evaluate_adapter,
    format_duration,
    train_sql,
)

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often a running job's view refreshes
LOG_LINES = 200
# Hyperparameter fields, in the order of the inputs below: (config field, label).
HYPERPARAMETERS = [
    ("max_steps", "Max steps (0: by epochs)"), ("epochs", "Epochs"), ("learning_rate", "Learning rate"),
    ("batch_size", "Batch size"), ("grad_accum", "Gradient accumulation"), ("max_length", "Max length (tokens)"),
    ("lora_r", "LoRA r"), ("lora_alpha", "LoRA alpha"), ("lora_dropout", "LoRA dropout"),
    ("neftune_alpha", "NEFTune alpha (0: off)"), ("max_examples", "Max examples (0: all)"),
]


def adapters_root() -> Path:
    return cache_dir() / "adapters"


def adapter_folder(name: str) -> Path:
    """Where the tab saves an adapter: `$VOXQL_CACHE/adapters/<name>`."""
    name = (name or "").strip() or f"sql-lora-{dt.datetime.now():%Y%m%d-%H%M%S}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}", name):
        raise BadInput("name the adapter with letters, digits, '.', '_' or '-'")
    return adapters_root() / name


def preset_values(preset: str) -> list:
    """The hyperparameter fields' values for a preset (0 where the config says "none")."""
    values = PRESETS[{label: key for key, label in PRESET_LABELS.items()}.get(preset, preset)]
    shown = {**values, "max_steps": max(0, values["max_steps"]), "neftune_alpha": values["neftune_alpha"] or 0,
             "max_examples": 0}
    return [shown[name] for name, _ in HYPERPARAMETERS]


class Job:
    """One background run and what it reported so far (the worker appends, the UI reads)."""

    def __init__(self, kind: str, target: Callable[[Job], object]):
        self.kind = kind
        self.cancel = threading.Event()
        self.events: list = []
        self.result = None
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, args=(target,), name=f"voxql-{kind}", daemon=True)

    def _run(self, target) -> None:
        try:
            self.result = target(self)
        except VoxQLError as error:
            self.error = str(error)
        except Exception as error:  # shown in the tab; the traceback goes to the log
            log.exception("%s failed", self.kind)
            self.error = f"{type(error).__name__}: {error}"

    @property
    def running(self) -> bool:
        return self.thread.is_alive()


# -- views of a job -------------------------------------------------------------------------------------------------


def loss_frame(events: list[TrainProgress]) -> pd.DataFrame:
    points = {e.step: e.loss for e in events if e.loss is not None and e.stage == "train"}
    return pd.DataFrame({"step": list(points), "loss": list(points.values())})


def training_log(events: list[TrainProgress]) -> str:
    lines = [f"[{format_duration(e.elapsed_s):>7}] {e.message}" for e in events
             if not (e.stage == "train" and e.loss is None and "micro-batch" in e.message)]
    return "\n".join(lines[-LOG_LINES:])


def training_status(job: Job) -> str:
    if job.error:
        return error_markdown(job.error)
    result = job.result
    if result is not None:
        if result.completed:
            loss = "" if result.final_loss is None else f", final loss {result.final_loss:.4f}"
            return (f"**Done:** {result.steps} steps in {format_duration(result.wall_time_s)}{loss}. Adapter saved to "
                    f"`{result.adapter_dir}` with its model card.")
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


def evaluation_markdown(reports: dict) -> str:
    def pct(value) -> str:
        return "–" if value is None else f"{100 * value:.1f} %"

    rows = ["| | execution accuracy | scored | correct |", "|---|---|---|---|"]
    for kind, report in reports.items():
        label = "base model" if kind == "base" else "with the adapter"
        rows.append(f"| {label} | **{pct(report.execution_accuracy)}** | {report.scored} | {report.correct} |")
    first = next(iter(reports.values()))
    sample = "all dev questions" if first.limit is None else f"a seeded sample of {first.limit} dev questions"
    note = ("Cancelled: partial numbers, not recorded." if any(r.cancelled for r in reports.values())
            else "Saved as eval-base.json / eval-adapter.json next to the adapter, and in its model card.")
    return f"Spider dev, {sample} (seed {first.seed}).\n\n" + "\n".join(rows) + f"\n\n{note}"


# -- the tab ----------------------------------------------------------------------------------------------------------
def build_train_tab(profile: Profile, adapter_picker: gr.Dropdown, tabs: gr.Tabs) -> None:
    spider = default_spider_dir()
    preset = "CPU quick" if profile.name == "cpu" else "seed recipe"
    current: dict[str, Job | None] = {"job": None}  # this app's one background job
    lock = threading.Lock()
    loaded_versions: dict[str, float] = {}  # adapter folder -> weights' mtime when loaded into the engine

    gr.Markdown(
        "Train a LoRA adapter for text-to-SQL on a Spider folder (its train split) or a JSONL file of "
        "`{question, query, db_id | schema}`, with the same prompt the app uses. QLoRA (4-bit NF4) is used when a "
        "CUDA GPU and bitsandbytes are present, plain LoRA otherwise. One job runs at a time, in the background."
    )
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            model = gr.Dropdown(list(dict.fromkeys([profile.sql_model, "embedded:smollm2"])), value=profile.sql_model,
                                allow_custom_value=True, label="Base model (id, folder or embedded:smollm2)",
                                elem_id="train-model")
            data = gr.Textbox(str(spider) if spider else "", label="Training data: Spider folder or JSONL path",
                              elem_id="train-data")
            upload = gr.File(label="…or upload a JSONL", file_types=[".jsonl"], elem_id="train-upload")
            preset_picker = gr.Radio(list(PRESET_LABELS.values()), value=preset, label="Preset", elem_id="train-preset")
            with gr.Accordion("Hyperparameters", open=False):
                fields = [gr.Number(value, label=label, elem_id=f"train-{name.replace('_', '-')}")
                          for (name, label), value in zip(HYPERPARAMETERS, preset_values(preset))]
            name = gr.Textbox(label="Adapter name", placeholder="default: sql-lora-DATE-TIME",
                              info=f"saved in {adapters_root()}", elem_id="train-name")
            resume = gr.Checkbox(False, label="Resume the unfinished run of this name", elem_id="train-resume")
            with gr.Row():
                start = gr.Button("Start training", variant="primary", elem_id="train-start")
                cancel = gr.Button("Cancel", variant="stop", elem_id="train-cancel")
                attach = gr.Button("Show the running job", size="sm", elem_id="train-attach")
        with gr.Column(scale=2):
            status = gr.Markdown("No training run yet.", elem_id="train-status")
            loss_plot = gr.LinePlot(loss_frame([]), x="step", y="loss", title="Training loss", elem_id="train-loss")
            log_box = gr.Textbox(label="Log", lines=10, max_lines=10, interactive=False, autoscroll=True,
                                 elem_id="train-log")
    with gr.Accordion("Evaluate and use an adapter", open=True):
        with gr.Row():
            adapter_dir = gr.Textbox(label="Adapter folder (the last one trained here, or any other)", scale=3,
                                     elem_id="train-adapter-dir")
            spider_dir = gr.Textbox(str(spider) if spider else "", label="Spider folder (dev)", scale=2,
                                    elem_id="train-spider-dir")
            limit = gr.Number(50, label="Dev questions (0: all)", precision=0, scale=1, elem_id="train-eval-limit")
            seed = gr.Number(0, label="Sample seed", precision=0, scale=1, elem_id="train-eval-seed")
        with gr.Row():
            evaluate = gr.Button("Evaluate before/after", elem_id="train-evaluate")
            load = gr.Button("Load into Ask your data", variant="primary", elem_id="train-load")
        eval_view = gr.Markdown(elem_id="train-eval")

    # -- handlers ---------------------------------------------------------------------------------------------------
    def start_job(kind: str, target: Callable[[Job], object]) -> Job:
        with lock:
            running = current["job"]
            if running is not None and running.running:
                raise BadInput(f"a {running.kind} is already running: wait for it or cancel it first")
            job = current["job"] = Job(kind, target)
            job.thread.start()
            return job

    def training_view(job: Job) -> tuple:
        done = job.result is not None and job.result.completed
        return (training_status(job), loss_frame(job.events), training_log(job.events),
                job.result.adapter_dir if done else gr.skip())

    def follow_training(job: Job, progress: gr.Progress):
        while job.running:
            last = job.events[-1] if job.events else None
            if last is not None and last.stage == "train":
                progress(last.fraction, desc=f"step {last.step}/{last.max_steps}")
            yield training_view(job)
            time.sleep(POLL_S)
        yield training_view(job)

    def start_training(base_model, data_path, uploaded, preset_label, adapter_name, resume_run, *values,
                       progress=gr.Progress()):
        try:
            output = adapter_folder(adapter_name)
            if resume_run:
                config = TrainConfig(data="", output_dir=str(output), resume=True)
            else:
                numbers = dict(zip([n for n, _ in HYPERPARAMETERS], values))
                overrides = {key: value for key, value in numbers.items() if value is not None}
                overrides["max_steps"] = int(overrides.get("max_steps") or 0) or -1
                overrides["max_examples"] = int(overrides.get("max_examples") or 0) or None
                for key in ("batch_size", "grad_accum", "max_length", "lora_r", "lora_alpha"):
                    if key in overrides:
                        overrides[key] = int(overrides[key])
                source = uploaded or (data_path or "").strip()
                if not source:
                    raise BadInput("give the training data: a Spider folder or a JSONL file")
                config = config_from_preset(preset_label, source, str(output), model=(base_model or "").strip()
                                            or profile.sql_model, schemas_dir=str(spider) if spider else None,
                                            **overrides)
                config.neftune_alpha = config.neftune_alpha or None  # 0 switches NEFTune off
            job = start_job("training run", lambda job: train_sql(config, job.events.append, job.cancel,
                                                                   command="Train tab"))
        except VoxQLError as error:
            yield error_markdown(str(error)), gr.skip(), gr.skip(), gr.skip()
            return
        yield from follow_training(job, progress)

    def show_current(progress=gr.Progress()):
        """Re-attach to the running (or last) training run, e.g. after reloading the page."""
        job = current["job"]
        if job is None or job.kind != "training run":
            yield "No training run yet.", gr.skip(), gr.skip(), gr.skip()
            return
        yield from follow_training(job, progress)

    def cancel_job():
        job = current["job"]
        if job is None or not job.running:
            return "Nothing is running."
        job.cancel.set()
        return f"Cancelling the {job.kind}…"

    def ensure_loaded(engine, path: Path) -> str:
        """The engine's name for this adapter folder, loading it (again, if retrained) when needed."""
        weights = max((p.stat().st_mtime for p in path.glob("adapter_model.*")), default=0.0)
        key = str(path.resolve())
        for loaded_name, spec in engine.info.adapters.items():
            if Path(spec).resolve() == path.resolve() and loaded_versions.get(key, weights) == weights:
                return loaded_name
        base_name = re.sub(r"[^A-Za-z0-9._-]", "-", path.name) or "adapter"
        adapter_name, number = base_name, 2
        while adapter_name in engine.info.adapters or adapter_name in {BASE, DEFAULT}:
            adapter_name, number = f"{base_name}-{number}", number + 1
        engine.load_adapter(str(path), adapter_name)
        loaded_versions[key] = weights
        return adapter_name

    def adapter_path(text: str) -> Path:
        path = Path((text or "").strip()).expanduser()
        if not text or not (path / "adapter_config.json").is_file():
            raise BadInput("give the folder of a trained adapter (it holds adapter_config.json)")
        check_base_model(path, profile.sql_model)
        return path

    def start_evaluation(adapter_text, spider_text, sample, sample_seed, progress=gr.Progress()):
        try:
            path = adapter_path(adapter_text)
            folder = (spider_text or "").strip()
            if not folder or not is_spider_dir(folder) or not (Path(folder) / "dev.json").is_file():
                raise BadInput("give the Spider folder (with dev.json, tables.json and database/) to evaluate on")
            limit_value = int(sample or 0) or None

            def run(job: Job):
                engine = get_engine(profile.sql_model, profile.sql_adapter)
                name_in_engine = ensure_loaded(engine, path)
                return evaluate_adapter(
                    path, folder, engine=engine, adapter_name=name_in_engine, limit=limit_value,
                    seed=int(sample_seed or 0), cancel=job.cancel,
                    progress=lambda kind, done, total: job.events.append((kind, done, total)))

            job = start_job("evaluation", run)
        except VoxQLError as error:
            yield error_markdown(str(error))
            return
        while job.running:
            if job.events:
                kind, done, total = job.events[-1]
                progress((done + (total if kind == "adapter" else 0)) / (2 * total),
                         desc=f"{'base model' if kind == 'base' else 'adapter'}: {done}/{total}")
                yield f"Evaluating the {'base model' if kind == 'base' else 'adapter'}: {done}/{total} questions…"
            else:
                yield "Loading the model…"
            time.sleep(POLL_S)
        yield error_markdown(job.error) if job.error else evaluation_markdown(job.result)

    def load_into_ask(adapter_text):
        try:
            path = adapter_path(adapter_text)
            engine = get_engine(profile.sql_model, profile.sql_adapter)
            name_in_engine = ensure_loaded(engine, path)
        except VoxQLError as error:
            return gr.skip(), gr.skip(), error_markdown(str(error))
        return (gr.Dropdown(choices=adapter_choices(profile, engine.info.adapters), value=name_in_engine),
                gr.Tabs(selected="ask"),
                f"Loaded `{path}` as **{name_in_engine}** into {display_name(profile.sql_model)}: "
                "pick it in *Adapter*.")

    def pick_upload(path: str | None):
        return path or gr.skip()

    train_outputs = [status, loss_plot, log_box, adapter_dir]
    preset_picker.change(preset_values, preset_picker, fields, api_name="train_preset")
    upload.upload(pick_upload, upload, data, api_visibility="private")
    start.click(start_training, [model, data, upload, preset_picker, name, resume, *fields], train_outputs,
                api_name="train", concurrency_id="train", concurrency_limit=4)
    cancel.click(cancel_job, None, status, api_name="cancel_training")
    evaluate.click(start_evaluation, [adapter_dir, spider_dir, limit, seed], eval_view, api_name="evaluate_adapter",
                   concurrency_id="train", concurrency_limit=4)
    load.click(load_into_ask, adapter_dir, [adapter_picker, tabs, eval_view], api_name="load_adapter")
    attach.click(show_current, None, train_outputs, api_name="train_progress", concurrency_id="train",
                 concurrency_limit=4)
