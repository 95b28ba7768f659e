"""The Train tab's tags section: make the synthetic corpus, train the Whisper tags LoRA by SFT or RAFT, and
evaluate Base / SFT / RAFT side by side.

Only wiring: the corpus, the trainer and the evaluation are the functions `python -m pipelines make-tag-data`,
`train-tags` and `eval-tags --sft/--raft` call. Handlers are module-level functions; one tag job runs at a
time, in a background thread, and Cancel stops it at the next step (a cancelled run keeps its checkpoint).
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import gradio as gr
import pandas as pd

from components.common import error_markdown
from components.train import cancel_message, follow_job, job_status, loss_plot, training_log
from pipelines.errors import BadInput
from pipelines.profiles import CPU_TAG_ADAPTER_DIR, cache_dir
from pipelines.training.jobs import Job, JobRunner
from pipelines.training.sql_sft import format_duration
from pipelines.training.tags_train import METHODS, TagTrainConfig, tag_config, train_tags

# The fields the section shows, from TagTrainConfig (the same list the CLI flags come from): (field, label).
FIELDS = [("max_steps", "Max steps (0: by epochs)"), ("epochs", "Epochs (RAFT: 1)"),
          ("learning_rate", "Learning rate (RAFT: 1e-4)"), ("batch_size", "Batch size"),
          ("samples", "RAFT samples per clip"), ("temperature", "RAFT temperature"), ("top_p", "RAFT top-p"),
          ("max_clips", "Max clips (0: all)")]
RAFT_DEFAULT_OVERRIDES = {"epochs", "learning_rate"}  # left at 0 / blank, RAFT uses its own defaults
DEFAULTS = {f.name: f.default for f in dataclasses.fields(TagTrainConfig)}

jobs = JobRunner()  # one tag job at a time in this app (a corpus, a training run or an evaluation)


def corpus_dir() -> Path:
    return cache_dir() / "tag-data"


def tag_adapters_root() -> Path:
    return cache_dir() / "tag-adapters"


def tag_adapter_choices() -> list[str]:
    """Shipped and trained tag adapters, by name; the names are folders under tag_adapters_root()."""
    names = ["shipped"] if (CPU_TAG_ADAPTER_DIR / "adapter_config.json").is_file() else []
    if tag_adapters_root().is_dir():
        names += sorted(p.name for p in tag_adapters_root().iterdir() if (p / "adapter_config.json").is_file())
    return names


def adapter_path(name: str | None) -> str | None:
    if not name:
        return None
    return str(CPU_TAG_ADAPTER_DIR if name == "shipped" else tag_adapters_root() / name)


# -- handlers ----------------------------------------------------------------------------------------------------
def make_corpus(clips: float):
    """Generate the synthetic corpus into the cache (replacing an earlier one)."""
    from pipelines.speech.tag_data import generate

    def run(job: Job):
        return generate(corpus_dir(), clips=int(clips),
                        progress=lambda done, total: job.events.append(f"{done}/{total} clips"))

    try:
        job = jobs.start("corpus", run)
    except BadInput as error:
        yield error_markdown(str(error)), gr.skip()
        return
    for view in follow_job(job, lambda j: corpus_view(j)):
        yield view


def corpus_view(job: Job):
    if job.error:
        return error_markdown(job.error), gr.skip()
    if job.result is None:
        return f"Making the corpus… {job.events[-1] if job.events else ''}", gr.skip()
    counts = job.result.get("counts", {})
    return (f"**Corpus ready:** {', '.join(f'{n} {s}' for s, n in counts.items())} clips (synthetic voices).",
            str(corpus_dir() / "train.jsonl"))


def start_training(method: str, data: str, from_adapter: str | None, name: str, max_steps: float, epochs: float,
                   learning_rate: float, batch_size: float, samples: float, temperature: float, top_p: float,
                   max_clips: float):
    """Train a tags adapter; yields (status, log, loss plot, and the three adapter pickers at the end).
    The numbers are FIELDS, in order (0 leaves epochs, learning rate and max clips at the method's default)."""
    values = [max_steps, epochs, learning_rate, batch_size, samples, temperature, top_p, max_clips]
    try:
        config = training_config(method, data, from_adapter, name, values)
    except BadInput as error:
        yield error_markdown(str(error)), *[gr.skip()] * 5
        return
    try:
        job = jobs.start("tag training", lambda job: train_tags(config, job.events.append, job.cancel))
    except BadInput as error:
        yield error_markdown(str(error)), *[gr.skip()] * 5
        return
    for view in follow_job(job, training_view):
        yield *view, gr.skip(), gr.skip(), gr.skip()
    yield *training_view(job), *[gr.Dropdown(choices=tag_adapter_choices())] * 3


def training_config(method: str, data: str, from_adapter: str | None, name: str, values) -> TagTrainConfig:
    method = (method or "sft").lower()
    if method not in METHODS:
        raise BadInput("choose SFT or RAFT")
    if not data or not Path(data).is_file():
        raise BadInput("no training data: press “Make the synthetic corpus”, or give a JSONL path")
    name = (name or "").strip() or f"tags-{method}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}", name) or name == "shipped":
        raise BadInput("name the adapter with letters, digits, '.', '_' or '-'")
    overrides = {}
    for (field, _), value in zip(FIELDS, values):
        if value in (None, "") or (value == 0 and (field in RAFT_DEFAULT_OVERRIDES or field == "max_clips")):
            continue
        overrides[field] = type(DEFAULTS[field])(value) if DEFAULTS[field] is not None else int(value)
    if overrides.get("max_steps") == 0:
        overrides["max_steps"] = -1
    return tag_config(method, data, str(tag_adapters_root() / name), init_adapter=adapter_path(from_adapter),
                      **overrides)


def finished_training(result) -> str:
    if result.completed:
        return (f"**Done:** {result.steps} steps in {format_duration(result.wall_time_s)}; adapter "
                f"**{Path(result.output_dir).name}** saved.")
    return f"**Cancelled** at step {result.steps}/{result.max_steps}; the checkpoint is kept."


def training_view(job: Job):
    events = [e for e in job.events if not isinstance(e, str)]
    return job_status(job, finished_training), training_log(events), loss_plot(events)


def cancel_job() -> str:
    return cancel_message(jobs)


def evaluate(data: str, sft: str | None, raft: str | None, limit: float):
    """Base / SFT / RAFT raw / RAFT + top-k on a tagged set; yields (status, table)."""
    from pipelines.speech.tag_eval import evaluate_tag_systems, seed_table_systems
    from pipelines.speech.tag_data import load_tag_examples

    if not data or not Path(data).is_file():
        yield error_markdown("no evaluation data: make the corpus first (its dev.jsonl is used)"), gr.skip()
        return
    dev = Path(data).with_name("dev.jsonl")  # the held-out split beside the training data, when there is one
    dev = dev if dev.is_file() else Path(data)
    try:
        rows = [{"audio": e.audio, "reference": e.reference} for e in load_tag_examples(dev, int(limit) or None)]
        job = jobs.start("tag evaluation", lambda job: evaluate_tag_systems(
            rows, seed_table_systems(adapter_path(sft), adapter_path(raft)),
            lambda done, total: job.events.append((done, total))))
    except BadInput as error:
        yield error_markdown(str(error)), gr.skip()
        return
    for view in follow_job(job, lambda j: evaluation_view(j, dev.name)):
        yield view


def evaluation_view(job: Job, name: str):
    if job.error:
        return error_markdown(job.error), gr.skip()
    if job.result is None:
        done, total = job.events[-1] if job.events else (0, "?")
        return f"Evaluating on {name}: {done}/{total} clips…", gr.skip()
    table = pd.DataFrame([{"system": system, **{k: row[k] for k in ("f1", "recall", "precision",
                                                                     "hallucination_rate", "wer", "reward_seed",
                                                                     "reward_over-emit")}}
                          for system, row in job.result["table"].items()])
    return f"**Evaluated** on {job.result['n']} clips of {name} in {job.result['seconds']:.0f} s.", table.round(3)


# -- layout ----------------------------------------------------------------------------------------------------
def build_tag_training_section() -> None:
    with gr.Accordion("Tags adapter (Whisper tiny.en): SFT, then RAFT", open=False, elem_id="train-tags"):
        gr.Markdown("The corpus is **synthetic** (espeak-ng and Piper voices, made noises): see the README. "
                    "RAFT samples N transcripts per clip from the chosen adapter with the Listen tab's own sampler, "
                    "keeps the best by reward, drops the bottom 10 % and fine-tunes one epoch.")
        with gr.Row():
            clips = gr.Number(420, label="Corpus clips", precision=0, minimum=14, maximum=3000, scale=1)
            make = gr.Button("Make the synthetic corpus", elem_id="train-tags-corpus", scale=1)
        corpus_status = gr.Markdown(label="Corpus status", elem_id="train-tags-corpus-status")
        with gr.Row():
            data = gr.Textbox(str(corpus_dir() / "train.jsonl"), label="Training data (JSONL)", scale=3)
            method = gr.Radio(["SFT", "RAFT"], value="SFT", label="Method", scale=1, elem_id="train-tags-method")
            from_adapter = gr.Dropdown(tag_adapter_choices(), value=None, label="Start from (RAFT: required)",
                                       allow_custom_value=False, scale=2, elem_id="train-tags-from")
            name = gr.Textbox(label="Adapter name", placeholder="tags-sft-…", scale=2, elem_id="train-tags-name")
        with gr.Row():
            fields = [gr.Number(0 if key in RAFT_DEFAULT_OVERRIDES | {"max_steps", "max_clips"} else DEFAULTS[key],
                                label=label, min_width=120) for key, label in FIELDS]
        with gr.Row():
            start = gr.Button("Train", variant="primary", elem_id="train-tags-start")
            cancel = gr.Button("Cancel", elem_id="train-tags-cancel")
        status = gr.Markdown(label="Tag training status", elem_id="train-tags-status")
        loss = gr.LinePlot(x="step", y="loss", label="Loss", elem_id="train-tags-loss", height=220)
        log_box = gr.Textbox(label="Log", lines=6, max_lines=12, autoscroll=True, elem_id="train-tags-log")
        with gr.Row():
            sft = gr.Dropdown(tag_adapter_choices(), label="SFT adapter", elem_id="train-tags-eval-sft")
            raft = gr.Dropdown(tag_adapter_choices(), label="RAFT adapter", elem_id="train-tags-eval-raft")
            limit = gr.Number(0, label="Clips (0: all of dev)", precision=0)
            evaluate_button = gr.Button("Evaluate before/after", elem_id="train-tags-eval")
        eval_status = gr.Markdown(label="Tag evaluation status", elem_id="train-tags-eval-status")
        eval_table = gr.Dataframe(label="Base / SFT / RAFT (the seed's table)", interactive=False,
                                  elem_id="train-tags-eval-table")

    make.click(make_corpus, clips, [corpus_status, data], api_name="make_tag_corpus", concurrency_id="tag-job")
    start.click(start_training, [method, data, from_adapter, name, *fields],
                [status, log_box, loss, from_adapter, sft, raft],
                api_name="train_tags", concurrency_id="tag-job")
    cancel.click(cancel_job, None, status, api_name="cancel_tag_job", queue=False)
    evaluate_button.click(evaluate, [data, sft, raft, limit], [eval_status, eval_table], api_name="evaluate_tags",
                          concurrency_id="tag-job")
