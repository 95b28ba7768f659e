"""The vLLM engine: a vLLM server this process starts and supervises (or one at a URL), spoken to over HTTP.

vLLM lives in its own venv (`bash scripts/install-vllm.sh`): its wheels pin their own torch and an older
transformers than the app's. The server serves the base model and the profile's adapter by name (LoRA), takes
more adapters while it runs (the Train tab's), follows grammars (llguidance), and batches concurrent requests.
It is stopped with the app: at exit, and by itself if the app dies (vllm_site/sitecustomize.py).

    VOXQL_VLLM_VENV   the venv (default ~/.cache/voxql/vllm-venv, where the install script puts it)
    VOXQL_VLLM_PORT   the port of the local server (default: a free one)
    VOXQL_VLLM_MODEL  serve this model instead of the profile's (e.g. an NVFP4 checkpoint)
    VOXQL_VLLM_ARGS   more server arguments, appended last (so they override ours)
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import os
import shlex
import socket
import subprocess
import time
from pathlib import Path

import httpx

from pipelines.engine.base import SamplingParams
from pipelines.engine.grammar import MAX_ITEMS_IN_ROW, STEP_MAX_ITEMS
from pipelines.engine.loading import cpu_has_bf16, resolve_model_path
from pipelines.engine.openai_engine import DEFAULT_ADAPTER_NAME, OpenAIEngine
from pipelines.errors import ModelNotAvailable
from pipelines.profiles import cache_dir

log = logging.getLogger(__name__)

SITE_DIR = Path(__file__).resolve().parent / "vllm_site"
READY_TIMEOUT_S = 600  # on 2 busy CPU cores a server is ready in 70-100 s; an 8B model on a GPU downloads first
MIN_LORA_RANK = 32  # adapters trained in the Train tab (rank 32 by default) load at run time
GPU_SPECULATORS = {"meta-llama/Llama-3.1-8B-Instruct": "RedHatAI/Llama-3.1-8B-Instruct-speculator.eagle3"}
NVFP4_BASES = {"meta-llama/Llama-3.1-8B-Instruct": "nvidia/Llama-3.1-8B-Instruct-FP4"}


def vllm_venv() -> Path:
    # Not under VOXQL_CACHE: a cache moved elsewhere (as the tests do) should not lose a 3.5 GB install.
    return Path(os.environ.get("VOXQL_VLLM_VENV") or Path.home() / ".cache" / "voxql" / "vllm-venv")


def vllm_python() -> Path:
    """The venv's interpreter, or a clear error saying how to install it."""
    python = vllm_venv() / "bin" / "python"
    if not (vllm_venv() / ".voxql-installed").is_file() or not python.exists():
        raise ModelNotAvailable(f"vLLM is not installed in {vllm_venv()}: run `bash scripts/install-vllm.sh` "
                                "(or give --engine-url of a running server)")
    return python


def free_port() -> int:
    """A TCP port nothing on this host listens on now (for a server this process starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _lora_rank(adapter_path: str | None) -> int:
    rank = MIN_LORA_RANK
    if adapter_path and (Path(adapter_path) / "adapter_config.json").is_file():
        rank = max(rank, int(json.loads((Path(adapter_path) / "adapter_config.json").read_text()).get("r", rank)))
    return 1 << (rank - 1).bit_length()  # vLLM takes powers of two


def _on_hub_or_cached(repo: str) -> bool:
    """Whether vLLM can get `repo`: always online; offline only from the local Hugging Face cache."""
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        return True
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, "config.json"), str)


def _cuda_capability() -> tuple[int, int] | None:
    import torch

    return torch.cuda.get_device_capability() if torch.cuda.is_available() else None


def server_arguments(model_spec: str, adapter_path: str | None, port: int) -> list[str]:
    """The server's command-line arguments: the seed card's launch on GPUs, a small-memory one on CPUs."""
    capability = _cuda_capability()
    model = os.environ.get("VOXQL_VLLM_MODEL")
    if not model:
        # NVFP4 weights need Blackwell (compute capability 10+); elsewhere the bf16 base.
        model = NVFP4_BASES.get(model_spec) if capability and capability >= (10, 0) else None
        model = model or resolve_model_path(model_spec)
    args = ["--model", model, "--served-model-name", model_spec, "--host", "127.0.0.1", "--port", str(port),
            "--enable-lora", "--max-loras", "4", "--max-lora-rank", str(_lora_rank(adapter_path)),
            # llguidance reads the Lark grammars of constrained SQL (xgrammar would want GBNF)
            "--structured-outputs-config", json.dumps({"backend": "guidance"})]
    if adapter_path:
        args += ["--lora-modules", f"{DEFAULT_ADAPTER_NAME}={adapter_path}"]
    if capability is None:
        # bf16 where the CPU has bf16 instructions; a small fixed KV cache instead of a share of all memory
        dtype = "bfloat16" if cpu_has_bf16() else "float32"
        args += ["--dtype", dtype, "--max-model-len", "4096", "--kv-cache-memory-bytes", str(512 * 1024 ** 2)]
    elif model_spec in GPU_SPECULATORS and _on_hub_or_cached(GPU_SPECULATORS[model_spec]):
        speculator = {"method": "eagle3", "model": GPU_SPECULATORS[model_spec], "num_speculative_tokens": 3}
        args += ["--speculative-config", json.dumps(speculator)]
    return args + shlex.split(os.environ.get("VOXQL_VLLM_ARGS", ""))


class VLLMServer:
    """One local vLLM server process: started, waited for, stopped."""

    def __init__(self, model_spec: str, adapter_path: str | None):
        self.port = int(os.environ.get("VOXQL_VLLM_PORT") or free_port())
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = cache_dir() / "vllm" / f"server-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        arguments = server_arguments(model_spec, adapter_path, self.port)
        command = [str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server", *arguments]
        self.device = "cuda" if _cuda_capability() else "cpu"
        self.dtype = arguments[arguments.index("--dtype") + 1] if "--dtype" in arguments else "auto"
        env = {**os.environ, "PYTHONPATH": str(SITE_DIR), "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1",
               "VOXQL_APP_PID": str(os.getpid()),  # vllm_site/sitecustomize.py: end with the app
               "VOXQL_LLGUIDANCE_MAX_ITEMS_IN_ROW": str(MAX_ITEMS_IN_ROW),
               "VOXQL_LLGUIDANCE_STEP_MAX_ITEMS": str(STEP_MAX_ITEMS)}
        log.info("starting vLLM: %s (log: %s)", shlex.join(command), self.log_path)
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                            stdin=subprocess.DEVNULL)
        atexit.register(self.stop)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ModelNotAvailable(f"the vLLM server exited (code {self.process.returncode}) before it was "
                                        f"ready:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise ModelNotAvailable(f"the vLLM server was not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:]) + f"\n(full log: {self.log_path})"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


class VLLMEngine(OpenAIEngine):
    """`url`: use the vLLM server there; otherwise start one for `model_spec` with `adapter_spec` served as
    "default"."""

    def __init__(self, model_spec: str, adapter_spec: str | None = None, *, url: str | None = None,
                 audio_input: bool = False):
        self.server = None
        if url is None:
            adapter_path = str(Path(adapter_spec).expanduser().resolve()) if adapter_spec and \
                Path(adapter_spec).expanduser().exists() else adapter_spec
            self.server = VLLMServer(model_spec, adapter_path)
            self.server.wait_ready()
            url = self.server.url
        try:
            super().__init__(model_spec, adapter_spec, url=url, audio_input=audio_input)
        except BaseException:
            if self.server:
                self.server.stop()
            raise
        if self.server:  # a server of ours: say where it runs, as the transformers engine does
            self.info = dataclasses.replace(self.info, device=self.server.device, dtype=self.server.dtype)
            # The first request of a fresh server pays for its warm-up (about 15 s on 2 CPU cores): here, at
            # start, rather than in the first user's answer.
            self.generate([[{"role": "user", "content": "Hello"}]], SamplingParams(max_new_tokens=1))

    def close(self) -> None:
        if self.server:
            self.server.stop()
