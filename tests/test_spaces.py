"""Hugging Face Spaces: the README's front matter follows the Spaces schema and matches what the app runs;
GPU work is wrapped in `@spaces.GPU` on ZeroGPU only, and `spaces` is imported nowhere else."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import gradio as gr
import yaml

from pipelines import spaces as voxql_spaces

REPO_ROOT = Path(__file__).resolve().parents[1]
# From the Spaces configuration reference (huggingface.co/docs/hub/spaces-config-reference).
COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
HARDWARE = {"cpu-basic", "cpu-upgrade", "t4-small", "t4-medium", "l4x1", "l4x4", "a10g-small", "a10g-large",
            "a10g-largex2", "a10g-largex4", "a100-large", "l40sx1", "l40sx4", "l40sx8", "h100", "h100x8", "zero-a10g"}


def front_matter() -> dict:
    text = (REPO_ROOT / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_readme_front_matter_is_a_valid_spaces_config():
    config = front_matter()
    assert config["sdk"] == "gradio" and config["sdk_version"] == gr.__version__
    assert (REPO_ROOT / config["app_file"]).is_file()
    assert config["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert config["colorFrom"] in COLORS and config["colorTo"] in COLORS
    assert config["suggested_hardware"] in HARDWARE
    assert len(config["short_description"]) <= 60
    assert all("/" in model for model in config["models"])


def test_gpu_work_is_wrapped_only_on_zero_gpu(monkeypatch):
    def handler(question):
        return question

    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delitem(sys.modules, "spaces", raising=False)
    assert voxql_spaces.gpu_task(handler) is handler
    assert "spaces" not in sys.modules  # never imported off Spaces

    monkeypatch.setenv("SPACE_ID", "someone/voxql")
    monkeypatch.setenv("SPACES_ZERO_GPU", "false")  # a CPU Space or a dedicated GPU: nothing to wrap
    assert voxql_spaces.gpu_task(handler) is handler

    calls = []
    fake = types.ModuleType("spaces")
    fake.GPU = lambda duration: (lambda fn: calls.append(duration) or (lambda *a: ("on gpu", fn(*a))))
    monkeypatch.setitem(sys.modules, "spaces", fake)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    wrapped = voxql_spaces.gpu_task(handler, duration=120)
    assert wrapped("q") == ("on gpu", "q") and calls == [120]


def test_embedded_packages_are_left_alone_off_spaces(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.setattr(voxql_spaces.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError(a)))
    voxql_spaces.ensure_embedded_packages()  # no pip run
