"""The Train tab: its module-level handlers, called directly on a tiny random Llama (train with a live loss, cancel,
re-attach, evaluate with an ETA, cancel an evaluation, load into "Ask your data"), and the tab built in Blocks."""

from __future__ import annotations

import json

import gradio as gr
import pytest

from components import train as train_tab
from components.ask import adapter_choices
from components.train import TrainContext, build_train_tab
from pipelines.profiles import resolve_profile
from pipelines.spider.tiny import build_tiny_spider
from pipelines.training import jobs
from pipelines.training.sql_sft import TrainProgress

# The numeric fields, in build order: max steps, epochs, lr, batch, accumulation, max length, r, alpha, dropout,
# NEFTune, max examples.
FIELDS = [3, 1, 1e-3, 1, 1, 256, 4, 8, 0.1, 5, 0]


def no_progress(*args, **kwargs):
    return None


@pytest.fixture(autouse=True)
def fast_polling(monkeypatch):
    monkeypatch.setattr(train_tab, "POLL_S", 0.05)


@pytest.fixture(autouse=True, scope="module")
def adapters_in_a_temporary_folder(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("adapters")
        patch.setattr(jobs, "adapters_root", lambda: folder)
        patch.setattr(train_tab, "adapters_root", lambda: folder)
        yield folder


@pytest.fixture(scope="module")
def profile(tiny_llama_dir):
    return resolve_profile("cpu", sql_model=str(tiny_llama_dir), sql_adapter="none")


@pytest.fixture(scope="module")
def spider(tmp_path_factory):
    return build_tiny_spider(tmp_path_factory.mktemp("spider") / "spider")


@pytest.fixture(scope="module")
def ctx(profile, spider):
    return TrainContext(profile, spider=spider)


def train(ctx, name, data, fields=FIELDS, **kwargs):
    return train_tab.start_training(ctx, ctx.profile.sql_model, str(data), kwargs.get("upload"), "CPU quick", name,
                                    False, *fields, progress=no_progress)


@pytest.fixture(scope="module")
def trained_adapter(ctx, count_jsonl):
    """A run through the tab's Start handler: every streamed update (the last names the adapter)."""
    return list(train(ctx, "tab-run", count_jsonl))


def test_the_tab_builds_and_wires_named_endpoints(profile):
    with gr.Blocks() as demo:
        with gr.Tabs() as tabs:
            with gr.Tab("Ask your data", id="ask"):
                picker = gr.Dropdown(adapter_choices(profile), value="base", label="Adapter")
            with gr.Tab("Train", id="train"):
                build_train_tab(profile, picker, tabs)
    names = {fn.api_name for fn in demo.fns.values() if fn.api_visibility != "private"}
    assert {"train", "cancel_training", "evaluate_adapter", "load_adapter", "train_progress"} <= names
    info = demo.get_api_info()["named_endpoints"]
    assert [p["parameter_name"] for p in info["/train"]["parameters"]][:6] == [
        "base_model", "data", "upload", "preset", "adapter_name", "resume"]
    assert not any(name.startswith("/lambda") for name in info)


def test_preset_fills_the_hyperparameters():
    values = train_tab.preset_values("seed recipe")
    assert values[:2] == [0, 3.0] and values[5] == 2048 and values[6:9] == [32, 64, 0.1]
    assert train_tab.preset_values("CPU quick")[5] == 768


def test_training_streams_status_loss_and_log_then_names_the_adapter(trained_adapter, adapters_in_a_temporary_folder):
    status, plot, log, adapter = trained_adapter[-1]
    assert status.startswith("**Done:** 3 steps") and "model card" in status and "**tab-run**" in status
    assert "training: 3 optimizer steps" in log and "adapter saved to tab-run" in log
    assert adapter == "tab-run"  # a name, not a server folder
    assert str(adapters_in_a_temporary_folder) not in status + log
    assert len(trained_adapter) > 1  # streamed while it ran, not only at the end


def test_loss_plot_labels_whole_steps():
    few = [TrainProgress("train", "", step, 3, loss=2.291 - step / 10) for step in (1, 2, 3)]
    plot = train_tab.loss_plot(few)
    assert plot.value["datatypes"]["step"] == "nominal"  # categories 1, 2, 3: no tick at 1.2
    assert [row[0] for row in plot.value["data"]] == ["1", "2", "3"] and plot.sort == ["1", "2", "3"]
    many = [TrainProgress("train", "", step, 40, loss=1.0) for step in range(1, 41)]
    plot = train_tab.loss_plot(many)
    assert plot.value["datatypes"]["step"] == "quantitative" and plot.x_axis_format == "d"


def test_live_status_shows_step_loss_and_eta():
    job = jobs.Job("training run", lambda job: None)  # not started: a view of its reports only
    job.events += [TrainProgress("train", "training: 40 optimizer steps", 0, 40),
                   TrainProgress("train", "step 10/40 loss 0.5", 10, 40, 0.25, loss=0.5, elapsed_s=65, eta_s=195)]
    assert train_tab.training_status(job) == "**Step 10/40** (25 %) · loss 0.5000 · elapsed 1m05s · ETA 3m15s"
    job.cancel.set()
    assert train_tab.training_status(job).endswith("cancelling after this micro-batch…")
    assert list(train_tab.loss_frame(job.events)["loss"]) == [0.5]


def test_evaluation_eta_counts_both_models():
    job = jobs.Job("evaluation", lambda job: None)
    job.events += [("base", 1, 10, 100.0), ("base", 5, 10, 104.0)]  # 4 questions in 4 s, 15 of 20 left
    assert jobs.evaluation_progress(job) == ("base", 5, 10, 15.0)
    job.events.append(("adapter", 5, 10, 109.0))  # 14 in 9 s, 5 left
    assert jobs.evaluation_progress(job)[3] == pytest.approx(9 / 14 * 5)


def test_upload_is_named_not_shown_as_a_server_path(tmp_path):
    upload = tmp_path / "gradio" / "0123abcd" / "mine.jsonl"
    assert train_tab.describe_upload(str(upload)) == (
        "Training on your upload **mine.jsonl** (clear it to use the field above).")
    assert train_tab.describe_upload(None) == ""


def test_cancel_keeps_a_checkpoint_and_only_one_job_runs(ctx, count_jsonl):
    fields = [200, 1, 1e-3, 1, 4, *FIELDS[5:]]  # far more steps than it will run: cancel lands mid-run
    stream = train(ctx, "tab-cancel", count_jsonl, fields)
    for status, plot, *_ in stream:
        if len(plot.value["data"]):  # a first step is done
            break
    busy = list(train(ctx, "other", count_jsonl))
    assert "already running" in busy[0][0]
    assert train_tab.cancel_job(ctx) == ("Cancelling the training run…", gr.skip())
    status = list(stream)[-1][0]
    assert status.startswith("**Cancelled** at step") and "Resume" in status
    assert list((jobs.adapters_root() / "tab-cancel" / "checkpoints").glob("checkpoint-*"))
    assert train_tab.cancel_job(ctx)[0] == "Nothing is running."


def test_show_the_running_job_after_runs_and_evaluations(ctx, trained_adapter, spider):
    """After a training run and then an evaluation, it still shows the last training run."""
    list(train_tab.start_evaluation(ctx, "tab-run", "spider", 1, 0, progress=no_progress))
    status, plot, log, adapter, evaluation = list(train_tab.show_running_job(ctx, progress=no_progress))[-1]
    assert "No training run yet" not in status and "training: " in log
    empty = TrainContext(ctx.profile, spider=spider)
    assert list(train_tab.show_running_job(empty, progress=no_progress))[0][0] == "No training run yet."


def test_evaluate_before_after_on_a_dev_sample(ctx, trained_adapter):
    updates = list(train_tab.start_evaluation(ctx, "tab-run", "spider", 1, 0, progress=no_progress))
    final = updates[-1]
    assert "| base model |" in final and "| with the adapter |" in final and "seeded sample of 1" in final
    assert "model card" in final


def test_a_cancelled_evaluation_ends_with_a_cancelled_view(ctx, trained_adapter):
    stream = train_tab.start_evaluation(ctx, "tab-run", "spider", 0, 0, progress=no_progress)
    first = next(stream)
    assert first.startswith(("Loading the model", "Evaluating"))
    training_status, evaluation = train_tab.cancel_job(ctx)
    assert training_status == gr.skip()  # the training status is not where this note belongs
    assert "cancelling" in evaluation
    final = list(stream)[-1]
    assert "Cancelled" in final and "Evaluating" not in final


def test_spider_word_needs_a_found_folder(ctx, trained_adapter):
    nowhere = TrainContext(ctx.profile, spider=None)
    final = list(train_tab.start_evaluation(nowhere, "tab-run", "spider", 1, 0, progress=no_progress))[-1]
    assert "no Spider folder was found" in final


def test_load_into_ask_selects_the_adapter_and_switches_tab(ctx, trained_adapter):
    from pipelines.engine import get_engine

    picker, tabs, message = train_tab.load_into_ask(ctx, "tab-run")
    assert isinstance(tabs, gr.Tabs) and tabs.selected == "ask"
    assert picker.value == "tab-run" and ("tab-run (tab-run)", "tab-run") in picker.choices
    engine = get_engine(ctx.profile.sql_model, ctx.profile.sql_adapter)
    assert engine.info.adapters["tab-run"] == str(jobs.adapters_root() / "tab-run")
    assert "tab-run" in message and "/" not in message  # no server folder in what the user reads
    again, *_ = train_tab.load_into_ask(ctx, "tab-run")  # loading twice reuses the loaded one
    assert again.value == "tab-run"


def test_adapter_of_another_base_model_is_refused(ctx, tmp_path):
    folder = tmp_path / "foreign"
    folder.mkdir()
    config = {"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    picker, tabs, message = train_tab.load_into_ask(ctx, str(folder))
    assert not isinstance(picker, gr.Dropdown) and not isinstance(tabs, gr.Tabs)
    assert "trained on embedded:smollm2" in message
    assert "adapter_config.json" in train_tab.load_into_ask(ctx, str(tmp_path))[2]


def test_the_log_names_an_upload_and_the_spider_folder_not_their_server_paths(ctx, tmp_path):
    upload = str(tmp_path / "gradio" / "0123abcd" / "mine.jsonl")
    job = jobs.Job("training run", lambda job: None, context={"paths": {upload: "mine.jsonl"}})
    job.events += [TrainProgress("data", f"reading {upload}"), TrainProgress("data", f"schemas from {ctx.spider}"),
                   TrainProgress("save", f"saving the adapter to {jobs.adapters_root() / 'x'}")]
    status, plot, log, adapter = train_tab.training_view(job, ctx)
    assert log.splitlines() == ["[  0m00s] reading mine.jsonl", "[  0m00s] schemas from spider",
                                "[  0m00s] saving the adapter to x"]
