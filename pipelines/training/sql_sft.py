"""`train-sql`: LoRA (or QLoRA) SFT of the text-to-SQL adapter with TRL's SFTTrainer.

Read top to bottom: the config and its presets, the hardware choices, then `train_sql`, which is thin glue:
examples -> prompt/completion dataset -> SFTTrainer (completion-only loss, packing, NEFTune, cosine schedule,
gradient accumulation) -> the adapter, its training.json and its model card.

    output_dir/                     the finished adapter (adapter_config.json, adapter_model.safetensors),
                                    training.json, README.md (the model card), eval-*.json once evaluated
    output_dir/checkpoints/         checkpoint-N folders and run.json while training; removed when it finishes
                                    (unless keep_checkpoints); a cancelled run keeps them, `resume` continues

Cancelling (the `cancel` event, Ctrl-C or SIGTERM in the CLI) stops after the current micro-batch and saves a
checkpoint at the last completed optimizer step, so no finished step is lost.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipelines.errors import BadInput

log = logging.getLogger(__name__)

SEED_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CHECKPOINTS = "checkpoints"
RUN_FILE = "run.json"  # the config of the run in progress, so `resume` needs only the output folder
TRAINING_FILE = "training.json"  # what the model card is written from


@dataclass
class TrainConfig:
    data: str  # a Spider-layout folder (train split) or a JSONL file
    output_dir: str
    model: str = "embedded:smollm2"  # a model spec, as the profiles take it (Hub id, folder, embedded:...)
    schemas_dir: str | None = None  # Spider folder with the tables.json that JSONL rows with a db_id refer to
    preset: str = "cpu-quick"  # the preset the values below started from (recorded in the card)
    # LoRA
    lora_r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.1
    target_modules: tuple[str, ...] = SEED_TARGET_MODULES
    # data
    max_length: int = 768  # tokens per packed block; longer examples are dropped (and counted)
    packing: bool = True
    max_examples: int | None = None  # a seeded sample of the data, for quick runs
    value_hints: bool = False  # the prompt lists values of the text columns, as the app's does (Spider data)
    target_dialect: str = "sqlite"  # the SQL the adapter learns to write: Spider's SQLite, or rendered in DuckDB
    synthetic_examples: int = 0  # generated analytics examples added to the data (DuckDB SQL)
    init_adapter: str | None = None  # continue training this adapter's weights instead of a fresh LoRA
    # optimisation
    epochs: float = 1.0
    max_steps: int = -1  # optimizer steps; > 0 overrides epochs
    batch_size: int = 1  # per device; with packing each item is a block of up to max_length tokens
    grad_accum: int = 8
    learning_rate: float = 3e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    neftune_alpha: float | None = 5.0  # NEFTune noise on the input embeddings; None switches it off
    optimizer: str = "auto"  # auto: paged_adamw_8bit with QLoRA, else adamw_torch
    quantization: str = "auto"  # auto: nf4 (QLoRA) when CUDA and bitsandbytes are present, else none (LoRA)
    precision: str = "auto"  # auto: bf16 on a CUDA GPU that has it, fp16 on an older one, fp32 on CPU
    gradient_checkpointing: bool = False
    seed: int = 0
    # checkpoints and logging
    save_steps: int = 50
    save_total_limit: int = 2
    resume: bool = False  # continue from the last checkpoint in output_dir/checkpoints, with its saved config
    overwrite: bool = False  # replace an adapter or unfinished run already in output_dir
    keep_checkpoints: bool = False
    save_dtype: str = "fp32"  # the adapter file's weights: fp32, or fp16/bf16 for half the size (to ship it)
    threads: int | None = None  # torch CPU threads (default: torch's choice)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        if "target_modules" in values:
            values["target_modules"] = tuple(values["target_modules"])
        return cls(**values)


# Presets are plain values; anything can be overridden after choosing one.
PRESETS: dict[str, dict] = {
    # The seed adapter's recipe (pyloxsystems/sql-spider-llama-3.1-8b-lora's card): NF4 QLoRA with bf16 compute
    # and double quantization, r=32, alpha=64, dropout 0.1 on every projection, 3 epochs, cosine to 2e-4,
    # 2,048-token packed sequences, NEFTune alpha 5, paged 8-bit AdamW, gradient accumulation 16. Meant for a GPU.
    "seed": dict(
        lora_r=32, lora_alpha=64, lora_dropout=0.1, target_modules=SEED_TARGET_MODULES,
        max_length=2048, packing=True, epochs=3.0, max_steps=-1, batch_size=1, grad_accum=16,
        learning_rate=2e-4, lr_scheduler="cosine", warmup_ratio=0.03, neftune_alpha=5.0,
        optimizer="auto", quantization="auto", precision="auto", gradient_checkpointing=True, save_steps=100,
    ),
    # The same LoRA on a laptop CPU: 768-token blocks (every Spider dev prompt fits; about 2 % of train is
    # longer and dropped), no gradient checkpointing (activations of a 135M model fit easily, and recomputing
    # them costs a third more time), a shorter run with a higher peak learning rate, fp32.
    "cpu-quick": dict(
        lora_r=32, lora_alpha=64, lora_dropout=0.1, target_modules=SEED_TARGET_MODULES,
        max_length=768, packing=True, epochs=1.0, max_steps=-1, batch_size=1, grad_accum=8,
        learning_rate=3e-4, lr_scheduler="cosine", warmup_ratio=0.03, neftune_alpha=5.0,
        optimizer="auto", quantization="auto", precision="auto", gradient_checkpointing=False, save_steps=25,
    ),
}
PRESET_LABELS = {"seed": "seed recipe", "cpu-quick": "CPU quick"}


def config_from_preset(preset: str, data: str, output_dir: str, **overrides) -> TrainConfig:
    """The preset's values, then `overrides` (None values are ignored)."""
    preset = {label: key for key, label in PRESET_LABELS.items()}.get(preset, preset)
    if preset not in PRESETS:
        raise BadInput(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig(data=str(data), output_dir=str(output_dir), preset=preset, **values)


# -- hardware -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hardware:
    device: str  # "cuda" or "cpu"
    quantization: str  # "nf4" or "none"
    precision: str  # "bf16", "fp16" or "fp32"
    optimizer: str


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def bitsandbytes_available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def choose_hardware(config: TrainConfig) -> Hardware:
    """Resolve the "auto" settings: QLoRA only with CUDA and bitsandbytes, plain LoRA otherwise."""
    import torch

    cuda = cuda_available()
    qlora_possible = cuda and bitsandbytes_available()
    quantization = config.quantization
    if quantization == "auto":
        quantization = "nf4" if qlora_possible else "none"
    elif quantization == "nf4" and not qlora_possible:
        raise BadInput("QLoRA (nf4) needs a CUDA GPU and the bitsandbytes package; "
                       "use quantization none on this machine")
    elif quantization not in {"nf4", "none"}:
        raise BadInput(f"unknown quantization {quantization!r}: use auto, nf4 or none")
    precision = config.precision
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    elif precision not in {"bf16", "fp16", "fp32"}:
        raise BadInput(f"unknown precision {precision!r}: use auto, bf16, fp16 or fp32")
    if config.save_dtype not in {"fp32", "fp16", "bf16"}:
        raise BadInput(f"unknown save dtype {config.save_dtype!r}: use fp32, fp16 or bf16")
    if precision == "fp16" and not cuda:
        raise BadInput("fp16 training needs a CUDA GPU; use fp32 or bf16 on CPU")
    if quantization == "nf4" and precision == "fp32":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"  # QLoRA computes in 16 bits
    optimizer = config.optimizer
    if optimizer == "auto":
        optimizer = "paged_adamw_8bit" if quantization == "nf4" else "adamw_torch"
    return Hardware("cuda" if cuda else "cpu", quantization, precision, optimizer)


def quantization_config(hardware: Hardware):
    """NF4 with double quantization and 16-bit compute (QLoRA), or None for plain LoRA."""
    if hardware.quantization != "nf4":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if hardware.precision == "bf16" else torch.float16,
    )


# -- progress and results -------------------------------------------------------------------------------------------
@dataclass
class TrainProgress:
    """One report from a running job: a stage and a message, and during training the step, loss and ETA."""

    stage: str  # "data", "model", "train", "save", "done", "cancelled"
    message: str
    step: int = 0
    max_steps: int = 0
    fraction: float = 0.0  # of the training steps, counting micro-batches of the current step
    loss: float | None = None  # set on the report right after an optimizer step
    learning_rate: float | None = None
    epoch: float | None = None
    elapsed_s: float = 0.0  # since the job (this session of it) started
    eta_s: float | None = None


ProgressCallback = Callable[[TrainProgress], None]


@dataclass
class TrainResult:
    status: str  # "completed" or "cancelled"
    output_dir: str
    adapter_dir: str | None  # the finished adapter (None when cancelled)
    checkpoint: str | None  # the last checkpoint (kept when cancelled; resume continues from it)
    steps: int
    max_steps: int
    wall_time_s: float  # over every session of the run, resumes included
    train_loss: float | None  # mean over the run (Trainer's train_loss)
    final_loss: float | None  # the last logged step's loss
    loss_history: list[dict] = field(default_factory=list)  # [{"step", "loss", "learning_rate", "epoch"}]
    data: dict = field(default_factory=dict)  # TrainingData.summary() plus token statistics
    config: dict = field(default_factory=dict)
    hardware: dict = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    def to_dict(self) -> dict:
        return asdict(self)


def make_reporter(report: ProgressCallback, cancel: threading.Event | None, started: float,
                   on_checkpoint: Callable[[], None] = lambda: None):
    """A TrainerCallback that reports progress, loss and ETA, and turns `cancel` into stop-and-checkpoint."""
    from transformers import TrainerCallback

    class Reporter(TrainerCallback):
        def __init__(self):
            self.cancelled = False
            self.first_step = 0
            self.clock = time.perf_counter()
            self.substeps = 0

        def _fraction(self, args, state) -> float:
            partial = self.substeps / max(1, args.gradient_accumulation_steps)
            return min(1.0, (state.global_step + partial) / max(1, state.max_steps))

        def _eta(self, args, state) -> float | None:
            done = state.global_step - self.first_step + self.substeps / max(1, args.gradient_accumulation_steps)
            if done <= 0:
                return None
            seconds_per_step = (time.perf_counter() - self.clock) / done
            left = state.max_steps - state.global_step - self.substeps / args.gradient_accumulation_steps
            return seconds_per_step * left

        def _check_cancel(self, control):
            if cancel is not None and cancel.is_set() and not self.cancelled:
                self.cancelled = True
                control.should_training_stop = True
                control.should_save = True  # the last completed step, as a checkpoint to resume from

        def on_train_begin(self, args, state, control, **kwargs):
            self.first_step = state.global_step
            self.clock = time.perf_counter()
            resumed = f", resuming at step {state.global_step}" if state.global_step else ""
            report(TrainProgress("train", f"training: {state.max_steps} optimizer steps{resumed}",
                                 state.global_step, state.max_steps, self._fraction(args, state),
                                 elapsed_s=time.perf_counter() - started))
            self._check_cancel(control)

        def on_substep_end(self, args, state, control, **kwargs):
            self.substeps += 1
            report(TrainProgress("train", f"step {state.global_step + 1}/{state.max_steps}: micro-batch "
                                 f"{self.substeps}/{args.gradient_accumulation_steps}", state.global_step,
                                 state.max_steps, self._fraction(args, state), epoch=state.epoch,
                                 elapsed_s=time.perf_counter() - started, eta_s=self._eta(args, state)))
            self._check_cancel(control)

        def on_step_end(self, args, state, control, **kwargs):
            self.substeps = 0
            self._check_cancel(control)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            eta = self._eta(args, state)
            report(TrainProgress(
                "train", f"step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f} "
                f"lr {logs.get('learning_rate', 0):.2e}" + (f" eta {format_duration(eta)}" if eta is not None else ""),
                state.global_step, state.max_steps, self._fraction(args, state), loss=float(logs["loss"]),
                learning_rate=logs.get("learning_rate"), epoch=state.epoch,
                elapsed_s=time.perf_counter() - started, eta_s=eta))

        def on_save(self, args, state, control, **kwargs):
            on_checkpoint()
            report(TrainProgress("save", f"checkpoint saved at step {state.global_step}", state.global_step,
                                 state.max_steps, self._fraction(args, state), elapsed_s=time.perf_counter() - started))

    return Reporter()


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


# -- the output folder ------------------------------------------------------------------------------------------------
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "README.md",
                 TRAINING_FILE)


def last_checkpoint(output_dir: str | Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    folder = Path(output_dir) / CHECKPOINTS
    if not folder.is_dir():
        return None
    found = get_last_checkpoint(str(folder))
    return Path(found) if found else None


def prepare_output(config):
    """Check the output folder against the request; on resume, return the saved config (and saved state)."""
    out = Path(config.output_dir).expanduser()
    checkpoints = out / CHECKPOINTS
    has_adapter = (out / "adapter_config.json").exists()
    checkpoint = last_checkpoint(out)
    if config.resume:
        if checkpoint is None or not (checkpoints / RUN_FILE).is_file():
            raise BadInput(f"nothing to resume in {out}: it has no checkpoint of an unfinished run")
        saved = json.loads((checkpoints / RUN_FILE).read_text())
        resumed = type(config).from_dict({**saved["config"], "resume": True, "overwrite": False,
                                         "threads": config.threads or saved["config"].get("threads")})
        return resumed, saved
    ours = has_adapter or checkpoints.is_dir()
    if out.is_dir() and any(out.iterdir()) and not ours:
        # Never write a README.md (the card) or adapter files over someone else's files.
        raise BadInput(f"{out} is not empty and holds no adapter: choose a new or empty folder")
    if config.overwrite:
        shutil.rmtree(checkpoints, ignore_errors=True)
        for name in ADAPTER_FILES:
            (out / name).unlink(missing_ok=True)
        for path in out.glob("eval-*.json"):
            path.unlink()
    elif has_adapter:
        raise BadInput(f"{out} already holds an adapter: choose another folder, or overwrite it")
    elif checkpoint is not None:
        raise BadInput(f"{out} has checkpoints of an unfinished run (last: {checkpoint.name}): resume it, "
                       "or overwrite it to start over")
    checkpoints.mkdir(parents=True, exist_ok=True)
    return config, {}


def save_run(config, wall_time_s: float, extra: dict) -> None:
    path = Path(config.output_dir).expanduser() / CHECKPOINTS / RUN_FILE
    path.write_text(json.dumps({"config": {**config.to_dict(), "resume": False}, "wall_time_s": wall_time_s,
                                **extra}, indent=2))


# -- training ---------------------------------------------------------------------------------------------------
def build_trainer(config: TrainConfig, hardware: Hardware, dataset, tokenizer, model_path: str, callbacks=()):
    """The SFTTrainer for `config`: the whole recipe in one place."""
    import torch
    from peft import LoraConfig
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    # CPU bf16 is autocast over fp32 weights; on CUDA the weights load in the compute dtype.
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(hardware.precision, torch.float32)
    args = SFTConfig(
        output_dir=str(Path(config.output_dir).expanduser() / CHECKPOINTS),
        # data: conversational prompt/completion records, so the loss covers the completion (the SQL) only
        completion_only_loss=True, max_length=config.max_length, packing=config.packing, packing_strategy="bfd",
        shuffle_dataset=True, dataset_num_proc=None,
        # optimisation
        num_train_epochs=config.epochs, max_steps=config.max_steps, per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler, warmup_steps=config.warmup_ratio,  # < 1: a fraction of the steps
        weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm,
        neftune_noise_alpha=config.neftune_alpha, optim=hardware.optimizer,
        activation_checkpointing=config.gradient_checkpointing,
        bf16=hardware.precision == "bf16", fp16=hardware.precision == "fp16", use_cpu=hardware.device == "cpu",
        seed=config.seed, data_seed=config.seed,
        model_init_kwargs={"dtype": torch.float32 if hardware.device == "cpu" else dtype},
        # checkpoints and logging
        save_strategy="steps", save_steps=config.save_steps, save_total_limit=config.save_total_limit,
        logging_strategy="steps", logging_steps=1, report_to="none", disable_tqdm=True, dataloader_num_workers=0,
    )
    if config.init_adapter:  # continued training: the adapter's own LoRA shape, its weights trainable
        model, lora = _model_with_adapter(model_path, config.init_adapter, hardware, dtype), None
    else:
        model = model_path
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=list(config.target_modules), bias="none", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora, quantization_config=quantization_config(hardware), callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)  # the reporter says it; stdout stays for the CLI's JSON
    return trainer


def _model_with_adapter(model_path: str, adapter: str, hardware: Hardware, dtype):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if hardware.quantization == "nf4":
        raise BadInput("continuing an adapter (init_adapter) is supported for LoRA, not QLoRA: use --quantization none")
    if not (Path(adapter).expanduser() / "adapter_config.json").is_file():
        raise BadInput(f"{adapter} is not a PEFT adapter folder (no adapter_config.json)")
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32 if hardware.device == "cpu" else dtype)
    model = PeftModel.from_pretrained(base, str(Path(adapter).expanduser()), is_trainable=True)
    for parameter in model.parameters():  # saved as fp16 to ship: train in fp32
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
    return model


def train_sql(config: TrainConfig, progress: ProgressCallback | None = None,
              cancel: threading.Event | None = None, *, command: str | None = None) -> TrainResult:
    """Train a LoRA adapter for text-to-SQL; see the module docstring for the folder layout.

    `progress` receives TrainProgress reports; setting `cancel` stops at the next micro-batch and keeps a
    checkpoint. `command` (the CLI line) is recorded in training.json and the card.
    """
    import torch
    from transformers import AutoTokenizer

    from pipelines.engine.loading import resolve_model_path
    from pipelines.training import model_card
    from pipelines.training.sql_data import build_dataset, load_training_data

    started = time.perf_counter()
    report = progress or (lambda event: log.info("%s", event.message))
    config, saved = prepare_output(config)
    previous_wall = float(saved.get("wall_time_s", 0.0))
    out = Path(config.output_dir).expanduser()
    checkpoints = out / CHECKPOINTS
    hardware = choose_hardware(config)
    if config.threads:
        torch.set_num_threads(config.threads)

    def elapsed() -> float:
        return time.perf_counter() - started

    report(TrainProgress("data", f"reading {config.data}", elapsed_s=elapsed()))
    data = load_training_data(config.data, schemas_dir=config.schemas_dir, max_examples=config.max_examples,
                              seed=config.seed, value_hints=config.value_hints, target_dialect=config.target_dialect,
                              synthetic=config.synthetic_examples)
    model_path = resolve_model_path(config.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dataset, tokens = build_dataset(data, tokenizer, config.max_length)
    data_summary = {**data.summary(), "tokens": tokens.to_dict(), "description": data.describe()}
    report(TrainProgress("data", f"{data.describe()}; {tokens.tokens} tokens (p50 {tokens.p50}, p95 {tokens.p95}, "
                         f"max {tokens.max} per example)", elapsed_s=elapsed()))
    save_run(config, previous_wall, {"data": data_summary})

    def cancelled_before_training() -> TrainResult:
        report(TrainProgress("cancelled", "cancelled before training started", elapsed_s=elapsed()))
        return TrainResult("cancelled", str(out), None, _str(last_checkpoint(out)), 0, 0, previous_wall + elapsed(),
                           None, None, data=data_summary, config=config.to_dict(), hardware=asdict(hardware))

    if cancel is not None and cancel.is_set():
        return cancelled_before_training()

    method = "QLoRA (nf4)" if hardware.quantization == "nf4" else "LoRA"
    report(TrainProgress("model", f"loading {config.model} for {method} training on {hardware.device} "
                         f"({hardware.precision})", elapsed_s=elapsed()))
    # run.json keeps the wall time up to the last checkpoint, so a resumed run reports its whole time
    reporter = make_reporter(
        report, cancel, started,
        on_checkpoint=lambda: save_run(config, previous_wall + elapsed(), {"data": data_summary}))
    trainer = build_trainer(config, hardware, dataset, tokenizer, model_path, callbacks=[reporter])
    if cancel is not None and cancel.is_set():
        return cancelled_before_training()

    resume_from = last_checkpoint(out) if config.resume else None
    output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    wall = previous_wall + elapsed()
    history = [{"step": entry["step"], "loss": entry["loss"], "learning_rate": entry.get("learning_rate"),
                "epoch": entry.get("epoch")} for entry in trainer.state.log_history if "loss" in entry]
    # A cancel that arrives during the very last step changes nothing: the run is complete.
    cancelled = reporter.cancelled and trainer.state.global_step < trainer.state.max_steps
    result = TrainResult(
        status="cancelled" if cancelled else "completed", output_dir=str(out), adapter_dir=None,
        checkpoint=None, steps=trainer.state.global_step, max_steps=trainer.state.max_steps, wall_time_s=round(wall, 1),
        train_loss=output.training_loss if history and not cancelled else None,
        final_loss=history[-1]["loss"] if history else None,
        loss_history=history, data=data_summary, config=config.to_dict(), hardware=asdict(hardware),
    )
    if cancelled:
        result.checkpoint = _str(last_checkpoint(out))
        report(TrainProgress("cancelled", f"cancelled at step {result.steps}/{result.max_steps}; checkpoint kept: "
                             f"{result.checkpoint} (resume to continue)", result.steps, result.max_steps,
                             result.steps / max(1, result.max_steps), elapsed_s=elapsed()))
        return result

    report(TrainProgress("save", f"saving the adapter to {out}", result.steps, result.max_steps, 1.0,
                         elapsed_s=elapsed()))
    save_adapter(trainer.model, out, config.save_dtype)
    model_card.set_adapter_base_model(out, config.model)
    result.adapter_dir = str(out)
    model_card.write_training_info(out, result, command)
    model_card.write_model_card(out)
    if config.keep_checkpoints:
        result.checkpoint = _str(last_checkpoint(out))
    else:
        shutil.rmtree(checkpoints, ignore_errors=True)
    report(TrainProgress("done", f"adapter saved to {out} after {result.steps} steps in {format_duration(wall)}",
                         result.steps, result.max_steps, 1.0, loss=result.final_loss, elapsed_s=elapsed()))
    return result


def save_adapter(model, folder: Path, dtype: str = "fp32") -> None:
    """The adapter's weights (PEFT layout), optionally in 16 bits; they load into a model of any dtype."""
    import torch

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if dtype not in dtypes:
        raise BadInput(f"unknown save dtype {dtype!r}: use fp32, fp16 or bf16")
    state = {name: tensor.detach().to(dtypes[dtype]) for name, tensor in model.state_dict().items()
             if "lora_" in name}
    # save_embedding_layers=False: the embeddings are not trained, and checking would look the base up online
    model.save_pretrained(str(folder), state_dict=state, save_embedding_layers=False)


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


# -- evaluation before/after ------------------------------------------------------------------------------------
EvalProgress = Callable[[str, int, int], None]  # (which: "base" | "adapter", done, total)


def evaluate_adapter(
    adapter_dir: str | Path,
    spider_dir: str | Path,
    *,
    engine=None,
    adapter_name: str = "default",
    limit: int | None = None,
    seed: int = 0,
    which: tuple[str, ...] = ("base", "adapter"),
    progress: EvalProgress | None = None,
    cancel: threading.Event | None = None,
    predictions_dir: str | Path | None = None,
    command: str | None = None,
) -> dict:
    """Spider dev execution accuracy of the base model and of the adapter, on the same seeded sample.

    Uses `pipelines.spider.evaluate.evaluate_spider` (the app's own SQL pipeline and the official match). `engine`
    is an engine of the adapter's base model in which the adapter is loaded as `adapter_name` (the app passes its
    shared one); without it one is loaded here. The reports are written next to the adapter (eval-base.json,
    eval-adapter.json) and into its model card, unless cancelled; `predictions_dir` also gets one JSONL of predictions
    per model (predictions-base.jsonl, predictions-adapter.jsonl). Returns {"base": EvalReport, "adapter": ...}.
    """
    from pipelines.spider.evaluate import evaluate_spider, run_metadata
    from pipelines.training import model_card

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise BadInput(f"{adapter_dir} holds no adapter (adapter_config.json is missing)")
    if engine is None:
        from pipelines.engine import get_engine

        base_model = model_card.adapter_base_model(adapter_dir)
        if base_model is None:
            raise BadInput(f"{adapter_dir} does not say which base model it was trained on (no training.json)")
        engine = get_engine(base_model, str(adapter_dir))
        adapter_name = "default"
    reports = {}
    for kind in which:
        if kind not in {"base", "adapter"}:
            raise BadInput(f"evaluate 'base' and/or 'adapter', not {kind!r}")
        report = evaluate_spider(
            spider_dir, engine, split="dev", limit=limit, seed=seed,
            adapter=None if kind == "base" else adapter_name, cancel=cancel,
            progress=(lambda done, total, kind=kind: progress(kind, done, total)) if progress else None,
            predictions_out=Path(predictions_dir) / f"predictions-{kind}.jsonl" if predictions_dir else None,
        )
        reports[kind] = report
        if report.cancelled:
            return reports
    for kind, report in reports.items():
        model_card.write_evaluation(adapter_dir, kind, {**report.to_dict(), "metadata": run_metadata(command)})
    model_card.write_model_card(adapter_dir)
    return reports
