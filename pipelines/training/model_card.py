"""What a trained adapter says about itself: training.json, eval-*.json and the README.md model card.

    training.json      the TrainResult (config, data, hardware, loss history, wall time) and library versions
    eval-base.json     Spider dev execution accuracy of the base model (EvalReport.to_dict())
    eval-adapter.json  the same for the adapter, on the same sample
    README.md          the model card, rendered from the three files above (re-rendered when they change)
"""

from __future__ import annotations

import datetime as dt
import json
import platform
from pathlib import Path

from pipelines.errors import BadInput
from pipelines.sql.prompt import DIALECT_NAMES
from pipelines.training.sql_sft import format_duration

TRAINING_FILE = "training.json"
EVAL_FILES = {"base": "eval-base.json", "adapter": "eval-adapter.json"}

# Embedded models' upstream Hub ids: written into adapter_config.json so that PEFT users outside VoxQL find the base.
EMBEDDED_HUB_IDS = {"embedded:smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct", "embedded:whisper-tiny.en": "openai/whisper-tiny.en"}


# -- metadata files ---------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def set_adapter_base_model(adapter_dir: str | Path, model_spec: str) -> None:
    """Record a portable base model in adapter_config.json (not the cache folder the weights were read from)."""
    path = Path(adapter_dir) / "adapter_config.json"
    config = _read_json(path) or {}
    config["base_model_name_or_path"] = EMBEDDED_HUB_IDS.get(model_spec, model_spec)
    path.write_text(json.dumps(config, indent=2, sort_keys=True))


def versions() -> dict:
    import peft
    import torch
    import transformers
    import trl

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "trl": trl.__version__}


def write_training_info(adapter_dir: str | Path, result, command: str | None = None) -> Path:
    path = Path(adapter_dir) / TRAINING_FILE
    info = {**result.to_dict(), "command": command, "versions": versions(), "machine": platform.machine(),
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    path.write_text(json.dumps(info, indent=2))
    return path


def read_training_info(adapter_dir: str | Path) -> dict | None:
    return _read_json(Path(adapter_dir) / TRAINING_FILE)


def write_evaluation(adapter_dir: str | Path, kind: str, report: dict) -> Path:
    path = Path(adapter_dir) / EVAL_FILES[kind]
    path.write_text(json.dumps(report, indent=2, default=str))
    return path


def read_evaluations(adapter_dir: str | Path) -> dict[str, dict]:
    found = {kind: _read_json(Path(adapter_dir) / name) for kind, name in EVAL_FILES.items()}
    return {kind: data for kind, data in found.items() if data}


# -- which base model -------------------------------------------------------------------------------------------------
def adapter_base_model(adapter_dir: str | Path) -> str | None:
    """The model spec the adapter was trained on: training.json's, else adapter_config.json's base model."""
    info = read_training_info(adapter_dir)
    if info and info.get("config", {}).get("model"):
        return info["config"]["model"]
    config = _read_json(Path(adapter_dir) / "adapter_config.json") or {}
    base = config.get("base_model_name_or_path")
    return {hub: spec for spec, hub in EMBEDDED_HUB_IDS.items()}.get(base, base)


def same_model(a: str, b: str) -> bool:
    """Whether two model specs name the same weights (equal specs, or folders that resolve to the same place)."""
    if a == b or EMBEDDED_HUB_IDS.get(a, a) == EMBEDDED_HUB_IDS.get(b, b):
        return True
    from pipelines.engine.loading import resolve_model_path

    try:
        paths = [Path(resolve_model_path(spec)).expanduser() for spec in (a, b)]
    except Exception:  # an embedded model that is not installed: the specs differ, so the models do
        return False
    return all(p.exists() for p in paths) and paths[0].resolve() == paths[1].resolve()


def check_base_model(adapter_dir: str | Path, model_spec: str) -> None:
    """Refuse an adapter trained on another base model (its weights would not fit, or mean nothing)."""
    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise BadInput(f"{adapter_dir} holds no adapter (adapter_config.json is missing)")
    base = adapter_base_model(adapter_dir)
    if base is not None and not same_model(base, model_spec):
        raise BadInput(f"this adapter was trained on {base}, but the app's SQL model is {model_spec}: "
                       "start the app with that model (--model) to use it")


# -- the card ----------------------------------------------------------------------------------------------------------
def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"




def _evaluation_section(evaluations: dict[str, dict]) -> list[str]:
    if not evaluations:
        return ["Not evaluated yet: `python -m pipelines eval-adapter --adapter THIS_FOLDER --spider-dir SPIDER` "
                "(or **Evaluate** in the app's Train tab) scores base and adapter on Spider dev and fills this in."]
    lines = [
        "Spider dev; execution accuracy (EX) over the questions that can be scored "
        "(`pipelines.spider.evaluate`: the app's own prompt, greedy decoding and SQL extraction, no "
        "self-correction retries, the official execution match in SQLite).", "",
        "| | questions | EX | scored | correct | easy | medium | hard | extra | s/question |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in ("base", "adapter"):
        report = evaluations.get(kind)
        if not report:
            continue
        # Base and adapter may have been scored on different samples (the base is slow on a CPU): say which.
        sample = ("all" if report.get("limit") is None
                  else f"seeded sample of {report.get('limit')} (seed {report.get('seed')})")
        hardness = report.get("by_hardness", {})
        cells = [_pct(hardness.get(level, {}).get("execution_accuracy"))
                 for level in ("easy", "medium", "hard", "extra")]
        lines.append(f"| {'base model' if kind == 'base' else 'with this adapter'} | {sample} | "
                     f"**{_pct(report.get('execution_accuracy'))}** | {report.get('scored')} | "
                     f"{report.get('correct')} | "
                     f"{' | '.join(cells)} | {report.get('seconds_per_question')} |")
    widest = max(evaluations.values(), key=lambda report: report.get("questions") or 0)
    skipped = widest.get("skipped") or 0
    if skipped:
        databases = ", ".join(f"{db} ({n})" for db, n in (widest.get("skipped_databases") or {}).items())
        lines += ["", f"{skipped} questions were not scored: their database file is missing ({databases})."]
    lines += ["", "Reports: " + ", ".join(f"`{EVAL_FILES[k]}`" for k in evaluations) + "."]
    return lines


def render_model_card(info: dict, evaluations: dict[str, dict]) -> str:
    config, data, hardware = info.get("config", {}), info.get("data", {}), info.get("hardware", {})
    model = config.get("model", "?")
    base_id = EMBEDDED_HUB_IDS.get(model, model)
    tokens = data.get("tokens", {})
    spider = data.get("kind") == "spider" or config.get("schemas_dir")
    front = ["---", f"base_model: {base_id}", "library_name: peft", "pipeline_tag: text-generation",
             "tags:", "- text-to-sql", "- lora", "- voxql"]
    if spider:
        front += ["datasets:", "- xlangai/spider", "license: cc-by-sa-4.0"]
    front.append("---")
    quant = ("QLoRA: NF4 base with double quantization" if hardware.get("quantization") == "nf4"
             else "LoRA (full-precision base)")
    packed = ", packed (best-fit decreasing)" if config.get("packing") else ""
    epochs = f", {config.get('epochs')} epoch(s)" if config.get("max_steps", -1) <= 0 else ""
    train_only = " (train split only; dev is never trained on)" if data.get("kind") == "spider" else ""
    recipe = [
        ("method", f"{quant}, {hardware.get('precision')} on {hardware.get('device')}, TRL SFTTrainer"),
        ("preset", config.get("preset")),
        ("LoRA", f"r={config.get('lora_r')}, alpha={config.get('lora_alpha')}, dropout {config.get('lora_dropout')}, "
                 f"on {', '.join(config.get('target_modules', []))}"),
        ("loss", "completion only (the SQL and the end-of-turn token)"),
        ("sequence", f"max {config.get('max_length')} tokens{packed}"),
        ("steps", f"{info.get('steps')} optimizer steps of {config.get('batch_size')} × {config.get('grad_accum')} "
                  f"(batch × gradient accumulation){epochs}"),
        ("learning rate", f"{config.get('learning_rate')}, {config.get('lr_scheduler')} schedule, warmup "
                          f"{_warmup(config.get('warmup_ratio'))}, weight decay {config.get('weight_decay')}"),
        ("NEFTune", f"alpha {config.get('neftune_alpha')}" if config.get("neftune_alpha") else "off"),
        ("optimizer", hardware.get("optimizer")),
        ("adapter weights", f"saved as {config.get('save_dtype', 'fp32')}"),
        ("seed", config.get("seed")),
    ]
    if config.get("init_adapter"):
        recipe.insert(1, ("started from", f"the adapter `{config['init_adapter']}` (continued training)"))
    skipped = "; ".join(f"{n} {reason}" for reason, n in (data.get("skipped") or {}).items() if n) or "none"
    lines = [
        *front, "",
        f"# Text-to-SQL LoRA for {base_id}", "",
        "Trained by VoxQL (`python -m pipelines train-sql`): the schema as `CREATE TABLE` statements in the system "
        "prompt, the question as the user turn, the SQL as the assistant's reply, in the prompt format the app "
        "uses (`pipelines/sql/prompt.py`).", "",
        "Use it in VoxQL: `VOXQL_SQL_ADAPTER=THIS_FOLDER python app.py` (or `--adapter`), or load it from the Train "
        "tab; with PEFT: `PeftModel.from_pretrained(base, THIS_FOLDER)`.", "",
        "## Data", "",
        f"- source: {data.get('kind')} `{data.get('source')}`{train_only}",
        f"- examples used: {tokens.get('examples', data.get('examples'))} of {data.get('rows')} read; "
        f"skipped: {skipped}",
        f"- prompt: the schema{' with value hints' if config.get('value_hints') else ''}; the model writes "
        f"{DIALECT_NAMES.get(config.get('target_dialect') or 'sqlite')}"
        + (" (Spider's gold SQL rendered in DuckDB, kept where it gives the gold rows)"
           if config.get("target_dialect") == "duckdb" and data.get("kind") == "spider" else ""),
        *([f"- synthetic analytics examples: {data['synthetic']} (`pipelines/training/synthetic_sql.py`: invented "
           "schemas; date windows, per-month totals, top-N, joins, HAVING, DISTINCT)"] if data.get("synthetic") else []),
        f"- tokens per example: p50 {tokens.get('p50')}, p95 {tokens.get('p95')}, max {tokens.get('max')}; "
        f"{tokens.get('tokens')} in all", "",
        "## Recipe", "", "| | |", "|---|---|", *[f"| {name} | {value} |" for name, value in recipe], "",
        "## Training", "",
        f"- wall time: {format_duration(info.get('wall_time_s'))} ({info.get('wall_time_s')} s, resumes included)",
        f"- loss: mean {_round(info.get('train_loss'))}, last step {_round(info.get('final_loss'))}",
        f"- machine: {info.get('machine')}, {hardware.get('device')}; " +
        ", ".join(f"{k} {v}" for k, v in (info.get("versions") or {}).items()),
    ]
    if info.get("command"):
        lines.append(f"- command: `{info['command']}`")
    lines += ["", "## Evaluation", "", *_evaluation_section(evaluations), ""]
    if info.get("notes"):  # what the numbers mean, written by whoever ran the evaluations (training.json "notes")
        lines += ["## Notes", "", info["notes"], ""]
    return "\n".join(lines)


def _warmup(value) -> str:
    if value is None:
        return "?"
    return f"{value:.0%} of the steps" if value < 1 else f"{int(value)} steps"


def _round(value) -> str:
    return "?" if value is None else f"{value:.4f}"


def write_model_card(adapter_dir: str | Path) -> Path:
    adapter_dir = Path(adapter_dir)
    info = read_training_info(adapter_dir)
    if info is None:
        raise BadInput(f"{adapter_dir} has no {TRAINING_FILE}: it was not trained by VoxQL")
    path = adapter_dir / "README.md"
    path.write_text(render_model_card(info, read_evaluations(adapter_dir)), encoding="utf-8")
    return path
