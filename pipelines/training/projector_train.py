"""`train-projector`: the projector of the project's small Ultravox (Whisper tiny.en -> SmolLM2 + the SQL LoRA).

Ultravox's recipe: the Whisper encoder and the language model stay frozen; only the projector learns, by
knowledge distillation. The teacher is the same language model (with the shipped SQL adapter merged in) reading
the *typed* question; the student reads the *spoken* one, the projector's rows in the question's place. The loss
is the KL divergence from the teacher's next-token distribution to the student's on the answer's tokens (the gold
SQL, rendered in DuckDB), so the projector learns to make audio mean to the SQL model what the typed words do.

Two things make this fit a CPU:
- The prompt's long part, the schema, comes before the question and is the same for teacher and student: its
  key/value cache is computed once per database and every batch (one database each) runs only the question, the
  chat's closing tokens and the answer on top of it.
- A warm-up (`ctc_steps`, our addition to the recipe) first trains the projector with a CTC loss against the
  question's tokens, scoring each row against the LM's own (tied) embedding matrix: the rows start near the
  embeddings of the words said, which the KD phase then refines. It needs no LM pass, and scoring only the tokens
  the questions use makes a step of 32 clips take under a second (`Distiller.read_back` shows what the rows
  say). Without it KD starts from rows the LM has never seen anything like; with it alone the LM cannot use them
  yet (blank rows, norms it never saw). Running it to convergence did not help the answers after KD.

Spoken questions come from `make-spoken-questions` (Spider train questions, the train voices). The prompt's value
hints are those that do not depend on the question (the spoken question is not text), and inference shows the
model the same ones.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pipelines.errors import BadInput
from pipelines.training.sql_sft import ProgressCallback, TrainProgress, format_duration

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
TRAINING_FILE = "training.json"
# Schema caches kept at once. Spider train's 140 databases all fit (tens of MB each); with fewer kept, most KD
# batches would recompute theirs (seconds each), batches of one database coming in random order.
MAX_CACHED_PREFIXES = 160
BLANK_TOKEN_ID = 0  # SmolLM2's <|endoftext|>, which never appears in a question: the CTC blank


@dataclass
class ProjectorTrainConfig:
    """Every hyperparameter of a projector run, in one place (the CLI flags and the Train tab are made from it)."""

    data: str  # train.jsonl of make-spoken-questions
    output_dir: str
    spider_dir: str | None = None  # where the questions' databases are (default: the bundled Spider)
    audio_model: str = "embedded:whisper-tiny.en"
    text_model: str = "embedded:smollm2"
    sql_adapter: str | None = None  # default: the cpu profile's shipped SQL adapter
    hidden_size: int = 1024  # linear_1's width (SwiGLU halves it)
    init_projector: str | None = None  # an Ultravox folder whose projector this run continues (else a new one)
    # The shipped projector's recipe. A CTC phase run to convergence (800 steps of 32 at 2e-3) measured worse
    # after KD (README, "Ask by voice").
    ctc_steps: int = 400
    ctc_batch_size: int = 8
    ctc_learning_rate: float = 1e-3
    kd_steps: int = 450
    batch_size: int = 8  # KD's
    learning_rate: float = 1e-3  # KD's
    warmup_steps: int = 20
    max_clips: int | None = None  # a seeded sample of the data, for quick runs
    seed: int = 0
    save_steps: int = 50
    resume: bool = False
    overwrite: bool = False
    threads: int | None = None

    @property
    def max_steps(self) -> int:
        return self.ctc_steps + self.kd_steps

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SpokenExample:
    audio: str
    question: str
    db_id: str
    answer: str  # the gold SQL in DuckDB


# -- data -----------------------------------------------------------------------------------------------------------
def load_examples(config: ProjectorTrainConfig) -> tuple[list[SpokenExample], dict, dict]:
    """(examples, {db_id: prompt schema text}, summary). Spider gold SQL is rendered in DuckDB as train-sql does;
    a question whose rendering does not give the gold rows is skipped."""
    from pipelines.speech.spoken_questions import load_spoken_questions
    from pipelines.spider.data import load_schemas
    from pipelines.sql.values import schema_with_values
    from pipelines.training.sql_data import _spider_databases, default_spider_dir, duckdb_target, tidy_sql

    spider_dir = Path(config.spider_dir) if config.spider_dir else default_spider_dir()
    if spider_dir is None:
        raise BadInput("no Spider folder found for the questions' databases: pass --spider-dir")
    rows = load_spoken_questions(config.data)
    if config.max_clips and config.max_clips < len(rows):
        rows = random.Random(config.seed).sample(rows, config.max_clips)
    schemas, databases, schema_texts = load_schemas(spider_dir), {}, {}
    examples, skipped = [], 0
    for row in rows:
        if row["db_id"] not in schemas:
            skipped += 1
            continue
        if row["db_id"] not in databases:
            databases[row["db_id"]] = _spider_databases(spider_dir, row["db_id"], schemas[row["db_id"]], "duckdb")
            schema_texts[row["db_id"]] = schema_with_values(databases[row["db_id"]][0], "")
        answer = tidy_sql(row["gold"])
        if row.get("gold_dialect", "sqlite") == "sqlite":
            answer = duckdb_target(answer, *databases[row["db_id"]])
        if answer is None:
            skipped += 1
            continue
        examples.append(SpokenExample(row["audio"], row["question"], row["db_id"], answer))
    if not examples:
        raise BadInput(f"no usable spoken questions in {config.data}")
    summary = {"source": config.data, "clips": len(rows), "examples": len(examples), "skipped": skipped,
               "databases": len(schema_texts)}
    return examples, schema_texts, summary


def batches(examples: list[SpokenExample], size: int, rng: random.Random, *,
            one_database: bool = True) -> list[list[SpokenExample]]:
    """Shuffled batches; for KD of one database each (they share the schema's cached prefix)."""
    if not one_database:
        shuffled = examples[:]
        rng.shuffle(shuffled)
        return [shuffled[i:i + size] for i in range(0, len(shuffled), size)]
    by_db: dict[str, list[SpokenExample]] = {}
    for example in examples:
        by_db.setdefault(example.db_id, []).append(example)
    result = []
    for group in by_db.values():
        rng.shuffle(group)
        result += [group[i:i + size] for i in range(0, len(group), size)]
    rng.shuffle(result)
    return result


# -- the model pieces -----------------------------------------------------------------------------------------------
class Distiller:
    """The frozen LM (adapter merged), the frozen encoder, the trainable projector, and both losses."""

    def __init__(self, config: ProjectorTrainConfig, folder: Path, schema_texts: dict[str, str], questions: list[str]):
        import torch

        from pipelines.engine.loading import load_adapter, load_causal_lm
        from pipelines.speech.ultravox import UltravoxAudio

        self.audio = UltravoxAudio(folder, projector_weights=False)
        self.audio.projector.float().train()
        model, self.tokenizer = load_causal_lm(config.text_model, device="cpu", dtype=torch.float32)
        if config.sql_adapter:
            model = load_adapter(model, config.sql_adapter, "default").merge_and_unload()
        self.lm = model.eval().requires_grad_(False)
        self.embed = self.lm.get_input_embeddings()
        self.schema_texts = schema_texts
        self._prefixes: dict[str, tuple] = {}  # db_id -> (per-layer (keys, values), prefix length, suffix ids)
        self._frames: dict[str, object] = {}  # audio path -> the encoder's frames (fp16), computed once
        # CTC scores rows only against the tokens the questions use (a few thousand of the LM's 49,152), blank
        # first: the vocabulary product is nearly all of a CTC step's time, and other tokens are never targets.
        used = {int(t) for question in questions for t in self.ids(" " + question.strip())}
        self.ctc_vocabulary = torch.tensor([BLANK_TOKEN_ID] + sorted(used - {BLANK_TOKEN_ID}))

    def frames(self, audio: str):
        import torch

        from pipelines.training.tags_train import read_clip

        if audio not in self._frames:
            self._frames[audio] = self.audio.frames(read_clip(audio))[0].to(torch.float16)
        return self._frames[audio].float()

    def ids(self, text: str):
        return self.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]

    def prefix(self, db_id: str):
        """The schema part of the prompt, run once: its key/value cache, its length, and the tokens after the
        question (the chat template split where `<|audio|>` goes, exactly as `splice_audio` splits it)."""
        import torch

        from pipelines.speech.ultravox import AUDIO_MARKER
        from pipelines.sql.prompt import build_messages

        if db_id not in self._prefixes:
            if len(self._prefixes) >= MAX_CACHED_PREFIXES:
                self._prefixes.pop(next(iter(self._prefixes)))
            messages = build_messages(AUDIO_MARKER, self.schema_texts[db_id], "duckdb")
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            before, after = text.split(AUDIO_MARKER)
            before_ids = self.ids(before)
            with torch.no_grad():
                cache = self.lm(input_ids=before_ids[None], use_cache=True).past_key_values
            layers = [(layer.keys, layer.values) for layer in cache.layers]
            self._prefixes[db_id] = (layers, len(before_ids), self.ids(after))
        return self._prefixes[db_id]

    def projected(self, batch: list[SpokenExample]):
        """Projector rows per clip (a padded batch through the projector, cut to each clip's length)."""
        import torch

        frames = [self.frames(example.audio) for example in batch]
        padded = torch.nn.utils.rnn.pad_sequence(frames, batch_first=True)
        rows = self.audio.projector(padded)
        lengths = [math.ceil(len(f) / self.audio.projector.stack_factor) for f in frames]
        return rows, lengths

    def ctc_logits(self, rows):
        """[..., ctc vocabulary] scores of projector rows against the LM's (tied) input embeddings."""
        return rows @ self.embed.weight[self.ctc_vocabulary].T

    def ctc_targets(self, question: str):
        import torch

        return torch.searchsorted(self.ctc_vocabulary[1:], self.ids(" " + question.strip())) + 1

    def ctc_loss(self, batch: list[SpokenExample]):
        import torch

        rows, lengths = self.projected(batch)
        log_probs = torch.log_softmax(self.ctc_logits(rows), dim=-1)
        targets = [self.ctc_targets(example.question) for example in batch]
        return torch.nn.functional.ctc_loss(
            log_probs.transpose(0, 1), torch.cat(targets), torch.tensor(lengths),
            torch.tensor([len(t) for t in targets]), blank=0, zero_infinity=True)

    def read_back(self, audio: str) -> str:
        """What the projector's rows say when each is read as its nearest token (greedy CTC: repeats merged,
        blanks dropped): a cheap check that the rows carry the words, not only the gist."""
        import torch

        with torch.no_grad():
            rows = self.audio.projector(self.frames(audio)[None])[0]
            best = self.ctc_logits(rows).argmax(-1).tolist()
        kept = [t for i, t in enumerate(best) if t != 0 and (i == 0 or t != best[i - 1])]
        return self.tokenizer.decode(self.ctc_vocabulary[kept].tolist() if kept else []).strip()

    def _run(self, layers, prefix_length: int, embeds, mask):
        import torch
        from transformers import DynamicCache

        rows = embeds.shape[0]
        cache = DynamicCache(ddp_cache_data=[(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1))
                                             for k, v in layers])
        full_mask = torch.cat([torch.ones(rows, prefix_length, dtype=mask.dtype), mask], dim=1)
        return self.lm.model(inputs_embeds=embeds, attention_mask=full_mask, past_key_values=cache,
                             use_cache=True).last_hidden_state

    def kd_loss(self, batch: list[SpokenExample]):
        """KL(teacher || student) per answer token, teacher on the typed question, student on the audio."""
        import torch

        layers, prefix_length, after_ids = self.prefix(batch[0].db_id)
        rows, lengths = self.projected(batch)
        answers = [self.ids(example.answer + self.tokenizer.eos_token) for example in batch]
        students, teachers, starts = [], [], []
        for number, example in enumerate(batch):
            tail = torch.cat([after_ids, answers[number]])
            students.append(torch.cat([rows[number, :lengths[number]], self.embed(tail)]))
            question = self.ids(example.question.strip())
            teachers.append(self.embed(torch.cat([question, tail])))
            starts.append((lengths[number] + len(after_ids), len(question) + len(after_ids)))
        student_hidden = self._run(layers, prefix_length, *_right_padded(students))
        with torch.no_grad():
            teacher_hidden = self._run(layers, prefix_length, *_right_padded(teachers))
        # position p predicts token p + 1: the answer's tokens are predicted from one position before them
        student_at = torch.cat([student_hidden[i, s - 1:s - 1 + len(a)] for i, ((s, _), a) in
                                enumerate(zip(starts, answers))])
        teacher_at = torch.cat([teacher_hidden[i, t - 1:t - 1 + len(a)] for i, ((_, t), a) in
                                enumerate(zip(starts, answers))])
        student_log = torch.log_softmax(self.lm.lm_head(student_at), dim=-1)
        with torch.no_grad():
            teacher_log = torch.log_softmax(self.lm.lm_head(teacher_at), dim=-1)
        return torch.nn.functional.kl_div(student_log, teacher_log, log_target=True, reduction="batchmean")


def _right_padded(sequences):
    """[length, width] tensors -> ([batch, longest, width], mask)."""
    import torch

    embeds = torch.nn.utils.rnn.pad_sequence(sequences, batch_first=True)
    mask = torch.zeros(embeds.shape[:2], dtype=torch.long)
    for row, sequence in enumerate(sequences):
        mask[row, :len(sequence)] = 1
    return embeds, mask


# -- the run --------------------------------------------------------------------------------------------------------
def learning_rate_at(step: int, config: ProjectorTrainConfig) -> float:
    """Warm-up then cosine decay, restarted for the KD phase (a new loss, a new landscape)."""
    if step < config.ctc_steps:
        peak, into, phase_steps = config.ctc_learning_rate, step, config.ctc_steps
    else:
        peak, into, phase_steps = config.learning_rate, step - config.ctc_steps, config.kd_steps
    if into < config.warmup_steps:
        return peak * (into + 1) / config.warmup_steps
    return peak * 0.5 * (1 + math.cos(math.pi * (into - config.warmup_steps) /
                                      max(1, phase_steps - config.warmup_steps)))


def train_projector(config: ProjectorTrainConfig, progress: ProgressCallback | None = None,
                    cancel: threading.Event | None = None, *, command: str | None = None) -> dict:
    """Train the projector into `config.output_dir` (an Ultravox folder: config.json + model.safetensors; a
    cancelled run writes its projector so far, and a checkpoint that `resume` continues).
    Returns the run record written to training.json."""
    import torch

    from pipelines.profiles import CPU_SQL_ADAPTER_DIR
    from pipelines.speech.ultravox import UltravoxConfig, checkpoint_folder, read_projector, save_ultravox

    started = time.perf_counter()
    report = progress or (lambda event: log.info("%s", event.message))
    out = Path(config.output_dir).expanduser()
    checkpoint_path = out / CHECKPOINT_FILE
    saved = None
    if config.resume:
        if not checkpoint_path.is_file():
            raise BadInput(f"nothing to resume in {out}: no {CHECKPOINT_FILE}")
        saved = torch.load(checkpoint_path, weights_only=False)
        if "config" in saved:  # the run's own settings: resuming needs only the folder
            config = ProjectorTrainConfig(**{**saved["config"], "output_dir": config.output_dir, "resume": True,
                                             "threads": config.threads})
    elif out.exists() and any(out.iterdir()) and not config.overwrite:
        raise BadInput(f"{out} is not empty: pass --overwrite to replace it, or --resume to continue")
    if config.sql_adapter is None:
        config = dataclasses.replace(config, sql_adapter=str(CPU_SQL_ADAPTER_DIR))
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    out.mkdir(parents=True, exist_ok=True)

    report(TrainProgress("data", f"reading spoken questions from {config.data}"))
    examples, schema_texts, data = load_examples(config)
    report(TrainProgress("data", f"{data['examples']} spoken questions over {data['databases']} databases "
                                 f"({data['skipped']} skipped: no DuckDB rendering of the gold)"))
    if config.init_projector and not config.resume:  # the projector's shape comes with its weights
        config = dataclasses.replace(config, hidden_size=UltravoxConfig.read(
            checkpoint_folder(config.init_projector)).hidden_size)
    model_config = UltravoxConfig(audio_model_id=config.audio_model, text_model_id=config.text_model,
                                  hidden_size=config.hidden_size)
    model_config.write(out)
    report(TrainProgress("model", f"loading {config.audio_model} and {config.text_model} + {config.sql_adapter}"))
    distiller = Distiller(config, out, schema_texts, [example.question for example in examples])
    optimizer = torch.optim.AdamW(distiller.audio.projector.parameters(), lr=config.learning_rate,
                                  weight_decay=0.0)
    step, history, previous_wall = 0, [], 0.0
    if saved is not None:
        distiller.audio.projector.load_state_dict(saved["projector"])
        optimizer.load_state_dict(saved["optimizer"])
        step, history, previous_wall = saved["step"], saved["history"], saved["wall_time_s"]
    elif config.init_projector:
        report(TrainProgress("model", f"continuing the projector of {config.init_projector}"))
        distiller.audio.projector.load_state_dict(read_projector(checkpoint_folder(config.init_projector)))

    def save_checkpoint() -> None:
        torch.save({"projector": distiller.audio.projector.state_dict(), "optimizer": optimizer.state_dict(),
                    "step": step, "history": history, "config": config.to_dict(),
                    "wall_time_s": previous_wall + time.perf_counter() - started}, checkpoint_path)

    rng = random.Random(config.seed)
    queues: dict[str, list] = {"ctc": [], "kd": []}

    def next_batch(phase: str) -> list[SpokenExample]:
        if not queues[phase]:
            queues[phase] = (batches(examples, config.ctc_batch_size, rng, one_database=False) if phase == "ctc"
                             else batches(examples, config.batch_size, rng))
        return queues[phase].pop()

    def phase_at(at: int) -> str:
        return "ctc" if at < config.ctc_steps else "kd"

    clock, first_step, status = time.perf_counter(), step, "completed"
    for replayed in range(step):  # on resume, replay the batch order so the run sees what it would have seen
        next_batch(phase_at(replayed))
    while step < config.max_steps:
        if cancel is not None and cancel.is_set():
            status = "cancelled"
            break
        phase = phase_at(step)
        batch = next_batch(phase)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, config)
        loss = distiller.ctc_loss(batch) if phase == "ctc" else distiller.kd_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(distiller.audio.projector.parameters(), 1.0)
        optimizer.step()
        step += 1
        loss = loss.item()
        history.append({"step": step, "phase": phase, "loss": round(loss, 5),
                        "learning_rate": optimizer.param_groups[0]["lr"]})
        rate = (step - first_step) / (time.perf_counter() - clock)
        eta = (config.max_steps - step) / rate
        report(TrainProgress("train", f"{phase.upper()} step {step}/{config.max_steps}: loss {loss:.4f}, "
                             f"{rate * len(batch):.1f} clips/s, eta {format_duration(eta)}",
                             step=step, max_steps=config.max_steps, fraction=step / config.max_steps,
                             loss=loss, learning_rate=optimizer.param_groups[0]["lr"],
                             elapsed_s=time.perf_counter() - started, eta_s=eta))
        if step % config.save_steps == 0:
            save_checkpoint()
    save_checkpoint()
    wall = previous_wall + time.perf_counter() - started
    record = {"status": status, "command": command, "steps": step, "max_steps": config.max_steps,
              "wall_time_s": round(wall, 1), "data": data, "config": config.to_dict(), "history": history}
    if step > 0:  # a cancelled run's projector so far is usable as it is (training.json says it was cancelled)
        report(TrainProgress("save", f"saving the projector to {out}"))
        save_ultravox(out, model_config, distiller.audio.projector)
    (out / TRAINING_FILE).write_text(json.dumps(record, indent=2) + "\n")
    report(TrainProgress("done" if status == "completed" else "cancelled",
                         f"{status} after {step} steps in {format_duration(wall)}", step=step,
                         max_steps=config.max_steps, fraction=step / config.max_steps, elapsed_s=wall))
    return record


# -- the command ----------------------------------------------------------------------------------------------------
def cmd_train_projector(args) -> int:
    import sys

    from pipelines.training.cli import _install_cancel_handlers, _restore_handlers

    if not args.data and not args.resume:
        print("error: --data is required (train.jsonl of make-spoken-questions), unless you --resume",
              file=sys.stderr)
        return 2
    args.data = args.data or ""
    fields = {f.name for f in dataclasses.fields(ProjectorTrainConfig)}
    config = ProjectorTrainConfig(**{name: value for name, value in vars(args).items()
                                     if name in fields and value is not None})
    cancel = threading.Event()
    previous = _install_cancel_handlers(cancel)  # Ctrl-C stops after the step and keeps the checkpoint
    try:
        record = train_projector(config, lambda event: print(event.message, file=sys.stderr), cancel,
                                 command=args.command_line)
    finally:
        _restore_handlers(previous)
    print(json.dumps({key: record[key] for key in ("status", "steps", "max_steps", "wall_time_s")}
                     | {"output_dir": config.output_dir}))
    return 0 if record["status"] == "completed" else 1


def register(subparsers) -> None:
    parser = subparsers.add_parser("train-projector", help="train the small Ultravox's projector (KD, CPU-sized)")
    parser.add_argument("--data", help="train.jsonl of make-spoken-questions (not needed with --resume)")
    parser.add_argument("--output-dir", "--output", required=True, help="the Ultravox folder to write")
    defaults = ProjectorTrainConfig(data="", output_dir="")
    for field in dataclasses.fields(ProjectorTrainConfig):
        if field.name in ("data", "output_dir"):
            continue
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true")
        else:
            kind = int if field.name in ("max_clips", "threads") or isinstance(default, int) else \
                float if isinstance(default, float) else str
            parser.add_argument(flag, type=kind, help=f"default {default}")
    parser.set_defaults(func=cmd_train_projector)
