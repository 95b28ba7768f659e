"""The Train tab's projector section: make the spoken-questions corpus and train the small Ultravox's projector,
the model behind "Ask by voice" end to end on the cpu profile.

Only wiring: the corpus and the trainer are the functions `python -m pipelines make-spoken-questions` and
`train-projector` call. One projector job runs at a time, in a background thread; Cancel stops it after the
current step and keeps the checkpoint (`train-projector --output-dir FOLDER --resume` continues it).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import gradio as gr

from components.common import error_markdown
from components.train import cancel_message, follow_job, job_status, loss_plot, training_log
from pipelines.errors import BadInput
from pipelines.profiles import cache_dir
from pipelines.training.jobs import Job, JobRunner
from pipelines.training.projector_train import ProjectorTrainConfig, train_projector
from pipelines.training.sql_sft import format_duration

# The fields the section shows, from ProjectorTrainConfig (the same list the CLI flags come from): (field, label).
FIELDS = [("ctc_steps", "CTC warm-up steps"), ("kd_steps", "KD steps"), ("batch_size", "KD batch size"),
          ("learning_rate", "KD learning rate"), ("max_clips", "Max clips (0: all)")]
DEFAULTS = ProjectorTrainConfig(data="", output_dir="")

jobs = JobRunner()  # one projector job at a time in this app (a corpus or a training run)


def corpus_dir() -> Path:
    return cache_dir() / "spoken-questions"


def projectors_root() -> Path:
    return cache_dir() / "ultravox"


# -- handlers ----------------------------------------------------------------------------------------------------
def make_corpus(questions: float):
    """Synthesize `questions` Spider train questions (plus the dev, test and demo splits) into the cache."""
    from pipelines.speech.spoken_questions import generate
    from pipelines.training.sql_data import default_spider_dir

    spider = default_spider_dir()
    if spider is None:
        yield error_markdown("no Spider folder is bundled here: make the corpus with `python -m pipelines "
                             "make-spoken-questions --spider-dir DIR`"), gr.skip()
        return

    def run(job: Job):
        return generate(corpus_dir(), spider, counts={"train": int(questions)},
                        progress=lambda done, total: job.events.append(f"{done}/{total} clips"))

    try:
        job = jobs.start("spoken corpus", run)
    except BadInput as error:
        yield error_markdown(str(error)), gr.skip()
        return
    yield from follow_job(job, corpus_view)


def corpus_view(job: Job):
    if job.error:
        return error_markdown(job.error), gr.skip()
    if job.result is None:
        return f"Making the spoken questions… {job.events[-1] if job.events else ''}", gr.skip()
    counts = job.result.get("counts", {})
    return (f"**Corpus ready:** {', '.join(f'{n} {s}' for s, n in counts.items())} clips (synthetic voices; the "
            "test and demo splits use voices held out from training).", str(corpus_dir() / "train.jsonl"))


def projector_config(data: str, name: str, values) -> ProjectorTrainConfig:
    if not data or not Path(data).is_file():
        raise BadInput("no training data: press “Make the spoken questions”, or give a train.jsonl path")
    name = (name or "").strip() or f"projector-{time.strftime('%Y%m%d-%H%M%S')}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}", name):
        raise BadInput("name the projector with letters, digits, '.', '_' or '-'")
    overrides = {}
    for (field, _), value in zip(FIELDS, values):
        if value in (None, "") or (field == "max_clips" and not value):
            continue
        overrides[field] = type(getattr(DEFAULTS, field) or 0)(value)
    if overrides.get("batch_size", 1) < 1 or overrides.get("ctc_steps", 0) + overrides.get("kd_steps", 1) < 1:
        raise BadInput("the batch size and the number of steps must be at least 1")
    return ProjectorTrainConfig(data=data, output_dir=str(projectors_root() / name), **overrides)


def start_training(data: str, name: str, ctc_steps: float, kd_steps: float, batch_size: float,
                   learning_rate: float, max_clips: float):
    """Train a projector; yields (status, log, loss plot). The numbers are FIELDS, in order (named, so the API's
    parameters are)."""
    try:
        config = projector_config(data, name, [ctc_steps, kd_steps, batch_size, learning_rate, max_clips])
        job = jobs.start("projector training", lambda job: train_projector(config, job.events.append, job.cancel))
    except BadInput as error:
        yield error_markdown(str(error)), gr.skip(), gr.skip()
        return
    yield from follow_job(job, training_view)


def finished_training(record: dict) -> str:
    folder = Path(record["config"]["output_dir"])
    if record["status"] == "completed":
        return (f"**Done:** {record['steps']} steps in {format_duration(record['wall_time_s'])}; the small Ultravox "
                f"is in `{folder}`. Ask by voice with it: start the app with `VOXQL_SPEECH_SQL_MODEL={folder}`.")
    return (f"**Cancelled** at step {record['steps']}/{record['max_steps']}; the projector so far is in `{folder}` "
            f"and the checkpoint is kept. Continue it with `python -m pipelines train-projector --output-dir {folder} "
            "--resume`")


def training_view(job: Job):
    events = [e for e in job.events if not isinstance(e, str)]
    return job_status(job, finished_training), training_log(events), loss_plot(events)


def cancel_job() -> str:
    return cancel_message(jobs)


# -- layout ----------------------------------------------------------------------------------------------------
def build_projector_section() -> None:
    with gr.Accordion("Ask by voice: the small Ultravox's projector (knowledge distillation)", open=False,
                      elem_id="train-projector"):
        gr.Markdown("Whisper tiny.en's encoder and SmolLM2 + the SQL adapter stay frozen; only the projector between "
                    "them learns. A CTC warm-up, then distillation: the student hears the question, the teacher "
                    "reads it, and the student learns to write the teacher's SQL. The questions are Spider's, "
                    "**synthesized** with espeak-ng and Piper voices. On 2 CPU cores a KD step takes about 10 s.")
        with gr.Row():
            questions = gr.Number(3000, label="Spoken train questions", precision=0, minimum=10, maximum=7000)
            make = gr.Button("Make the spoken questions", elem_id="train-projector-corpus")
        corpus_status = gr.Markdown(label="Spoken corpus status", elem_id="train-projector-corpus-status")
        with gr.Row():
            data = gr.Textbox(str(corpus_dir() / "train.jsonl"), label="Training data (train.jsonl)", scale=3)
            name = gr.Textbox(label="Projector name", placeholder="projector-…", scale=2,
                              elem_id="train-projector-name")
        with gr.Row():
            fields = [gr.Number(getattr(DEFAULTS, key) or 0, label=label, min_width=120) for key, label in FIELDS]
        with gr.Row():
            start = gr.Button("Train the projector", variant="primary", elem_id="train-projector-start")
            cancel = gr.Button("Cancel", elem_id="train-projector-cancel")
        status = gr.Markdown(label="Projector training status", elem_id="train-projector-status")
        loss = gr.LinePlot(x="step", y="loss", label="Loss", elem_id="train-projector-loss", height=220)
        log_box = gr.Textbox(label="Log", lines=6, max_lines=12, autoscroll=True, elem_id="train-projector-log")

    make.click(make_corpus, questions, [corpus_status, data], api_name="make_spoken_corpus",
               concurrency_id="projector-job")
    start.click(start_training, [data, name, *fields], [status, log_box, loss], api_name="train_projector",
                concurrency_id="projector-job")
    cancel.click(cancel_job, None, status, api_name="cancel_projector_job", queue=False)
