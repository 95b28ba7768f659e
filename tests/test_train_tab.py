"""The Train tab: its handlers run directly on a tiny random Llama (train with a live loss, cancel, evaluate,
load into "Ask your data")."""

from __future__ import annotations

import json

import gradio as gr
import pytest

from components import train as train_tab
from components.ask import adapter_choices
from components.train import build_train_tab
from pipelines.profiles import resolve_profile
from pipelines.spider.tiny import build_tiny_spider

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
        patch.setattr(train_tab, "adapters_root", lambda: folder)
        yield folder


@pytest.fixture(scope="module")
def profile(tiny_llama_dir):
    return resolve_profile("cpu", sql_model=str(tiny_llama_dir), sql_adapter="none")



@pytest.fixture(scope="module")
def demo(profile):
    with gr.Blocks() as blocks:
        with gr.Tabs() as tabs:
            with gr.Tab("Ask your data", id="ask"):
                picker = gr.Dropdown(adapter_choices(profile), value="base", label="Adapter")
            with gr.Tab("Train", id="train"):
                build_train_tab(profile, picker, tabs)
    return blocks


def handler(demo: gr.Blocks, name: str):
    matches = [f.fn for f in demo.fns.values() if f.name == name]
    assert len(matches) == 1, name
    return matches[0]


@pytest.fixture(scope="module")
def trained_adapter(demo, profile, count_jsonl):
    """A run through the tab's Start handler: every streamed update, and the adapter folder it ends with."""
    updates = list(handler(demo, "start_training")(profile.sql_model, str(count_jsonl), None, "CPU quick", "tab-run",
                                                   False, *FIELDS, progress=no_progress))
    return updates


def test_preset_fills_the_hyperparameters(demo):
    values = handler(demo, "preset_values")("seed recipe")
    assert values[:2] == [0, 3.0] and values[5] == 2048 and values[6:9] == [32, 64, 0.1]
    assert handler(demo, "preset_values")("CPU quick")[5] == 768


def test_training_streams_status_loss_and_log_then_names_the_adapter(trained_adapter):
    status, frame, log, adapter_dir = trained_adapter[-1]
    assert status.startswith("**Done:** 3 steps") and "model card" in status
    assert list(frame["step"]) == [1, 2, 3] and (frame["loss"] > 0).all()
    assert "training: 3 optimizer steps" in log and "adapter saved to" in log
    assert adapter_dir.endswith("tab-run")
    assert len(trained_adapter) > 1  # streamed while it ran, not only at the end


def test_live_status_shows_step_loss_and_eta():
    from pipelines.training.sql_sft import TrainProgress

    job = train_tab.Job("training run", lambda job: None)  # not started: a view of its reports only
    job.events += [TrainProgress("train", "training: 40 optimizer steps", 0, 40),
                   TrainProgress("train", "step 10/40 loss 0.5", 10, 40, 0.25, loss=0.5, elapsed_s=65, eta_s=195)]
    assert train_tab.training_status(job) == "**Step 10/40** (25 %) · loss 0.5000 · elapsed 1m05s · ETA 3m15s"
    job.cancel.set()
    assert train_tab.training_status(job).endswith("cancelling after this micro-batch…")
    assert list(train_tab.loss_frame(job.events)["loss"]) == [0.5]


def test_cancel_keeps_a_checkpoint_and_only_one_job_runs(demo, profile, count_jsonl):
    start = handler(demo, "start_training")
    fields = [200, 1, 1e-3, 1, 4, *FIELDS[5:]]  # far more steps than it will run: cancel lands mid-run
    stream = start(profile.sql_model, str(count_jsonl), None, "CPU quick", "tab-cancel", False, *fields, progress=no_progress)
    for status, frame, *_ in stream:
        if len(frame):  # a first step is done
            break
    busy = list(start(profile.sql_model, str(count_jsonl), None, "CPU quick", "other", False, *FIELDS, progress=no_progress))
    assert "already running" in busy[0][0]
    assert handler(demo, "cancel_job")().startswith("Cancelling")
    status = list(stream)[-1][0]
    assert status.startswith("**Cancelled** at step") and "Resume" in status
    assert list((train_tab.adapters_root() / "tab-cancel" / "checkpoints").glob("checkpoint-*"))


def test_evaluate_before_after_on_a_dev_sample(demo, trained_adapter, tmp_path):
    adapter_dir = trained_adapter[-1][3]
    spider = build_tiny_spider(tmp_path / "spider")
    updates = list(handler(demo, "start_evaluation")(adapter_dir, str(spider), 1, 0, progress=no_progress))
    final = updates[-1]
    assert "| base model |" in final and "| with the adapter |" in final and "seeded sample of 1" in final
    assert "model card" in final


def test_load_into_ask_selects_the_adapter_and_switches_tab(demo, profile, trained_adapter):
    from pipelines.engine import get_engine

    adapter_dir = trained_adapter[-1][3]
    picker, tabs, message = handler(demo, "load_into_ask")(adapter_dir)
    assert isinstance(tabs, gr.Tabs) and tabs.selected == "ask"
    assert picker.value == "tab-run" and ("tab-run (tab-run)", "tab-run") in picker.choices
    assert get_engine(profile.sql_model, profile.sql_adapter).info.adapters["tab-run"] == adapter_dir
    assert "tab-run" in message
    again, *_ = handler(demo, "load_into_ask")(adapter_dir)  # loading twice reuses the loaded one
    assert again.value == "tab-run"


def test_adapter_of_another_base_model_is_refused(demo, tmp_path):
    folder = tmp_path / "foreign"
    folder.mkdir()
    config = {"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    picker, tabs, message = handler(demo, "load_into_ask")(str(folder))
    assert not isinstance(picker, gr.Dropdown) and not isinstance(tabs, gr.Tabs)
    assert "trained on embedded:smollm2" in message
    assert "adapter_config.json" in handler(demo, "load_into_ask")(str(tmp_path))[2]
