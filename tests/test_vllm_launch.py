"""The vLLM server's launch arguments per machine: the seed card's on GPUs, a small-memory one on CPUs."""

import json

import pytest

from pipelines.engine import vllm_engine

GPU_MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def arguments(monkeypatch, capability, model=GPU_MODEL, adapter="/adapters/sql", **env):
    monkeypatch.setattr(vllm_engine, "_cuda_capability", lambda: capability)
    for name in ("VOXQL_VLLM_MODEL", "VOXQL_VLLM_ARGS", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = vllm_engine.server_arguments(model, adapter, 8123)
    return {args[i]: args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else True
            for i in range(len(args)) if args[i].startswith("--")}


def test_hopper_serves_the_bf16_base_with_the_adapter_and_eagle3(monkeypatch):
    args = arguments(monkeypatch, (9, 0))
    assert args["--model"] == GPU_MODEL and args["--served-model-name"] == GPU_MODEL
    assert args["--lora-modules"] == "default=/adapters/sql" and args["--enable-lora"] is True
    assert json.loads(args["--speculative-config"])["model"] == "RedHatAI/Llama-3.1-8B-Instruct-speculator.eagle3"
    assert json.loads(args["--structured-outputs-config"]) == {"backend": "guidance"}
    assert "--kv-cache-memory-bytes" not in args


def test_blackwell_serves_nvfp4_weights(monkeypatch):
    assert arguments(monkeypatch, (10, 0))["--model"] == "nvidia/Llama-3.1-8B-Instruct-FP4"


def test_overrides_win(monkeypatch):
    args = arguments(monkeypatch, (9, 0), VOXQL_VLLM_MODEL="/weights/llama", HF_HUB_OFFLINE="1",
                     VOXQL_VLLM_ARGS="--max-model-len 2048")
    assert args["--model"] == "/weights/llama" and args["--max-model-len"] == "2048"
    assert "--speculative-config" not in args  # offline, and the speculator is not in the local cache


def test_cpu_gets_a_fixed_kv_cache_and_no_speculator(monkeypatch, embedded_model_dir):
    args = arguments(monkeypatch, None, model="embedded:smollm2", adapter=None)
    assert args["--model"] == str(embedded_model_dir) and "--lora-modules" not in args
    assert args["--dtype"] in {"bfloat16", "float32"} and int(args["--kv-cache-memory-bytes"]) == 512 * 1024 ** 2
    assert "--speculative-config" not in args


@pytest.mark.parametrize("rank, expected", [(8, 32), (32, 32), (48, 64)])
def test_lora_rank_room_is_a_power_of_two(tmp_path, rank, expected):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": rank}))
    assert vllm_engine._lora_rank(str(tmp_path)) == expected
