"""PEFT LoRA adapters as GGUF LoRA files, for llama.cpp.

A PEFT adapter stores, per projection, `lora_A` (rank x in) and `lora_B` (out x rank) in Hugging Face's weight
layout. llama.cpp reads the same two matrices from a GGUF file of type "adapter", named after the base model's
tensors (`blk.N.attn_q.weight.lora_a` ...), with the adapter's alpha (it scales by alpha / rank, as PEFT does).
One difference in layout: the GGUF converter reorders the rows of the Llama query and key projections (rotary
halves interleaved per head), so `lora_B` of q_proj and k_proj gets the same reordering, or the adapter would
add its update to the wrong rows.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from pipelines.errors import ModelNotAvailable
from pipelines.profiles import cache_dir

# Hugging Face Llama module -> GGUF tensor name (llama.cpp's tensor map for the llama architecture)
GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_PEFT_KEY = re.compile(r"layers\.(\d+)\.(\w+\.\w+)\.lora_([AB])(?:\.\w+)?\.weight$")


def rotary_permute(rows: np.ndarray, heads: int) -> np.ndarray:
    """The GGUF converter's row order for a q/k projection: per head, the two rotary halves interleaved."""
    return rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def convert_adapter(adapter_dir: str | Path, out_path: str | Path, *, heads: int, kv_heads: int) -> Path:
    """Write the PEFT adapter in `adapter_dir` as a GGUF LoRA file for a Llama base with these head counts."""
    import gguf
    from safetensors.numpy import load_file

    adapter_dir, out_path = Path(adapter_dir), Path(out_path)
    config_path, weights_path = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise ModelNotAvailable(f"{adapter_dir} is not a PEFT LoRA adapter (adapter_config.json and "
                                "adapter_model.safetensors are needed)")
    config = json.loads(config_path.read_text())
    if config.get("use_dora") or config.get("use_rslora") or config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ModelNotAvailable(f"{adapter_dir.name}: DoRA, rsLoRA and per-module ranks have no llama.cpp form; "
                                "use --engine transformers")
    tensors = {}
    for key, array in load_file(weights_path).items():
        match = _PEFT_KEY.search(key)
        if match is None or match.group(2) not in GGUF_NAMES:
            raise ModelNotAvailable(f"{adapter_dir.name}: {key} has no llama.cpp counterpart; use --engine transformers")
        layer, module, which = match.groups()
        array = array.astype(np.float32)
        if which == "B" and module in ("self_attn.q_proj", "self_attn.k_proj"):
            array = rotary_permute(array, heads if module == "self_attn.q_proj" else kv_heads)
        tensors[f"blk.{layer}.{GGUF_NAMES[module]}.weight.lora_{which.lower()}"] = array.astype(np.float16)
    partial = out_path.with_suffix(".partial")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(partial), arch="llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
    for name, array in sorted(tensors.items()):
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.rename(out_path)  # a crash mid-way never leaves a half-written file under the final name
    return out_path


def cached_gguf_adapter(adapter_dir: str | Path, *, heads: int, kv_heads: int) -> Path:
    """The GGUF form of an adapter folder, converted once per version of its weights (cached by content)."""
    adapter_dir = Path(adapter_dir)
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        path = adapter_dir / name
        if path.is_file():
            digest.update(path.read_bytes())
    out = cache_dir() / "gguf-lora" / f"{adapter_dir.name}-{digest.hexdigest()[:16]}.gguf"
    return out if out.is_file() else convert_adapter(adapter_dir, out, heads=heads, kv_heads=kv_heads)


def merge_into_gguf(base_gguf: str | Path, adapter_gguf: str | Path, out_path: str | Path) -> Path:
    """A copy of the base GGUF with a GGUF LoRA added into its weights: W + alpha/r * B @ A for every projection
    the adapter has, stored as F16; every other tensor and all metadata are copied as they are.

    Why F16: the base's 4-bit grid would round the adapter's small changes away, and Q8_0 still lost answers
    (21 right of 94 on the seeded Spider-dev sample, against 27 through transformers); F16 keeps them and, with
    llama.cpp's F16 kernels, prefills faster than either quantised form on this CPU."""
    import gguf

    base, adapter = gguf.GGUFReader(str(base_gguf)), gguf.GGUFReader(str(adapter_gguf))
    alpha = float(adapter.fields[gguf.Keys.Adapter.LORA_ALPHA].contents())
    lora = {t.name: t for t in adapter.tensors}
    out_path = Path(out_path)
    partial = out_path.with_suffix(".partial")
    writer = gguf.GGUFWriter(str(partial), arch=base.fields["general.architecture"].contents())
    for name, field in base.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), field.types[0], sub_type=sub_type)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for tensor in base.tensors:
        shape = tuple(int(n) for n in reversed(tensor.shape))  # (out, in), as numpy orders it
        a, b = lora.get(f"{tensor.name}.lora_a"), lora.get(f"{tensor.name}.lora_b")
        if a is None:
            writer.add_tensor(tensor.name, tensor.data, raw_shape=tensor.data.shape, raw_dtype=tensor.tensor_type)
            continue
        lora_a = np.asarray(a.data, dtype=np.float32).reshape(tuple(int(n) for n in reversed(a.shape)))
        lora_b = np.asarray(b.data, dtype=np.float32).reshape(tuple(int(n) for n in reversed(b.shape)))
        weights = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape)
        weights = weights + (alpha / lora_a.shape[0]) * (lora_b @ lora_a)
        writer.add_tensor(tensor.name, weights.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.rename(out_path)
    return out_path
