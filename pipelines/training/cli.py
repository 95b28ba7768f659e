"""CLI: `train-sql` (LoRA/QLoRA SFT of the SQL adapter), `eval-adapter` (its before/after Spider score) and
`eval-analytics` (generated analytics questions).

    python -m pipelines train-sql --data ../shared/spider --output adapters/mine --preset cpu-quick
    python -m pipelines train-sql --output adapters/mine --resume      # continue a cancelled run
    python -m pipelines eval-adapter --adapter adapters/mine --spider-dir ../shared/spider --limit 100
    python -m pipelines eval-analytics --adapter adapters/mine --limit 60   # held-out synthetic analytics

Ctrl-C (or SIGTERM, e.g. `kill PID` of a background run) stops after the current micro-batch and keeps a
checkpoint; a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import threading
from pathlib import Path

from pipelines.errors import BadInput


def _install_cancel_handlers(cancel: threading.Event) -> dict:
    """First SIGINT/SIGTERM: graceful stop with a checkpoint. Second SIGINT: abort."""

    def handle(signum, frame):
        if cancel.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        cancel.set()
        print("cancelling: finishing the current micro-batch, then saving a checkpoint "
              "(Ctrl-C again to abort without one)", file=sys.stderr, flush=True)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handle)
    return previous


def _restore_handlers(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _config_from_args(args: argparse.Namespace):
    from pipelines.training.sql_sft import TrainConfig, config_from_preset

    if args.resume:
        # Everything else comes from the run being resumed (checkpoints/run.json).
        return TrainConfig(data="", output_dir=args.output, resume=True, threads=args.threads)
    if not args.data:
        raise BadInput("--data is required (a Spider folder or a JSONL file), unless you --resume")
    model = args.model
    if model is None:
        from pipelines.profiles import resolve_profile

        model = resolve_profile(args.profile).sql_model
    neftune = None if args.neftune_alpha is not None and args.neftune_alpha <= 0 else args.neftune_alpha
    overrides = dict(
        model=model, schemas_dir=args.schemas, max_steps=args.max_steps, epochs=args.epochs, learning_rate=args.lr,
        batch_size=args.batch_size, grad_accum=args.grad_accum, max_length=args.max_length, lora_r=args.lora_r,
        lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, warmup_ratio=args.warmup,
        max_examples=args.max_examples, seed=args.seed, save_steps=args.save_steps, quantization=args.quantization,
        precision=args.precision, optimizer=args.optimizer, gradient_checkpointing=args.gradient_checkpointing,
        packing=args.packing, save_dtype=args.save_dtype, overwrite=args.overwrite,
        keep_checkpoints=args.keep_checkpoints, threads=args.threads, value_hints=args.value_hints,
        target_dialect=args.target_dialect, synthetic_examples=args.synthetic, init_adapter=args.init_adapter,
    )
    config = config_from_preset(args.preset, args.data, args.output, **overrides)
    if args.neftune_alpha is not None:
        config.neftune_alpha = neftune
    return config


def _spider_dir_for_eval(args: argparse.Namespace, config) -> str:
    for candidate in (args.spider_dir, config.data, config.schemas_dir):
        if candidate and Path(candidate).is_dir() and (Path(candidate) / "dev.json").is_file():
            return str(candidate)
    raise BadInput("--eval needs the Spider folder with dev.json: give --spider-dir")


def _parse_eval(value: str | None) -> int | None | bool:
    """--eval N or --eval all -> N or None (all); not given -> False (no evaluation)."""
    if value is None:
        return False
    if value == "all":
        return None
    try:
        limit = int(value)
    except ValueError:
        raise BadInput("--eval takes a number of dev questions or 'all'") from None
    if limit < 1:
        raise BadInput("--eval takes a positive number of dev questions or 'all'")
    return limit


def cmd_train_sql(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pipelines.training.sql_sft import TrainProgress, train_sql

    eval_limit = _parse_eval(args.eval)
    config = _config_from_args(args)
    cancel = threading.Event()
    bar = tqdm(total=None, desc="train-sql", unit="step", file=sys.stderr, dynamic_ncols=True, disable=None)

    def progress(event: TrainProgress) -> None:
        if event.max_steps and bar.total != event.max_steps:
            bar.total = event.max_steps
            bar.refresh()
        if event.step > bar.n:
            bar.update(event.step - bar.n)
        if event.loss is not None:
            bar.set_postfix(loss=f"{event.loss:.4f}", refresh=False)
        is_micro_batch = event.stage == "train" and event.loss is None and "micro-batch" in event.message
        if not is_micro_batch:
            tqdm.write(f"[{event.elapsed_s:7.0f}s] {event.message}", file=sys.stderr)
            sys.stderr.flush()

    previous = _install_cancel_handlers(cancel)
    try:
        result = train_sql(config, progress, cancel, command=args.command_line)
    finally:
        bar.close()
        _restore_handlers(previous)
    summary = {key: value for key, value in result.to_dict().items() if key not in {"loss_history", "config"}}
    if not result.completed:
        print(json.dumps(summary, default=str))
        print(f"cancelled: resume with `python -m pipelines train-sql --output {shlex.quote(result.output_dir)} "
              "--resume`", file=sys.stderr)
        return 130
    if eval_limit is not False:
        reports = _evaluate(result.adapter_dir, _spider_dir_for_eval(args, config), eval_limit, args.eval_seed,
                            ("base", "adapter"), command=args.command_line)
        summary["evaluation"] = {kind: report.execution_accuracy for kind, report in reports.items()}
    print(json.dumps(summary, default=str))
    return 0


def _evaluate(adapter_dir: str, spider_dir: str, limit: int | None, seed: int, which: tuple[str, ...],
              predictions_dir: str | None = None, *, command: str) -> dict:
    from tqdm import tqdm

    from pipelines.training.sql_sft import evaluate_adapter

    cancel = threading.Event()
    bars: dict[str, tqdm] = {}

    def progress(kind: str, done: int, total: int) -> None:
        if kind not in bars:
            for bar in bars.values():
                bar.close()
            bars[kind] = tqdm(total=total, desc=f"eval {kind}", unit="q", file=sys.stderr, dynamic_ncols=True)
        bars[kind].update(done - bars[kind].n)

    previous = _install_cancel_handlers(cancel)
    try:
        reports = evaluate_adapter(adapter_dir, spider_dir, limit=limit, seed=seed, which=which, progress=progress,
                                   cancel=cancel, predictions_dir=predictions_dir, command=command)
    finally:
        for bar in bars.values():
            bar.close()
        _restore_handlers(previous)
    for kind, report in reports.items():
        accuracy = "n/a" if report.execution_accuracy is None else f"{100 * report.execution_accuracy:.1f}%"
        print(f"{kind}: execution accuracy {accuracy} ({report.correct}/{report.scored} scored)"
              + (" (cancelled: not recorded)" if report.cancelled else ""), file=sys.stderr)
    return reports


def cmd_eval_adapter(args: argparse.Namespace) -> int:
    if not Path(args.spider_dir).is_dir():
        raise BadInput(f"no Spider folder at {args.spider_dir}")
    which = ("base", "adapter") if args.only is None else (args.only,)
    if args.predictions_dir:
        Path(args.predictions_dir).mkdir(parents=True, exist_ok=True)
    reports = _evaluate(args.adapter, args.spider_dir, args.limit, args.seed, which, args.predictions_dir,
                        command=args.command_line)
    print(json.dumps({kind: {"execution_accuracy": r.execution_accuracy, "scored": r.scored, "correct": r.correct,
                             "cancelled": r.cancelled} for kind, r in reports.items()}))
    return 130 if any(r.cancelled for r in reports.values()) else 0


def cmd_eval_analytics(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pipelines.profiles import cache_dir
    from pipelines.spider.evaluate import run_metadata
    from pipelines.sql.cli import profile_from_args, sql_engine_from_args
    from pipelines.training.synthetic_sql import evaluate_analytics

    profile = profile_from_args(args)
    recorded = None
    if args.revote:  # no model: the recorded candidates, checked, run and chosen among again
        earlier = json.loads(Path(args.revote).read_text(encoding="utf-8"))
        recorded, engine = earlier["records"], None
        model, adapter, constrained = f"candidates recorded in {args.revote}", earlier.get("adapter"), None
    else:
        engine = sql_engine_from_args(args)
        model, adapter, constrained = engine.info.model, profile.sql_adapter, not args.no_constrain
    bar = tqdm(total=args.limit, desc="analytics", unit="q", file=sys.stderr)
    report = evaluate_analytics(engine, args.limit, seed=args.seed, folder=cache_dir() / "synthetic-sql-eval",
                                dialect=profile.sql_dialect, ask_options={"constrain": not args.no_constrain},
                                progress=lambda done, total: bar.update(done - bar.n), recorded=recorded)
    bar.close()
    report = {"model": model, "adapter": adapter, "dialect": profile.sql_dialect, "constrained": constrained,
              **report, **run_metadata(args.command_line)}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({k: report[k] for k in ("questions", "correct", "execution_accuracy", "adapter")}))
    return 0


def register(subparsers) -> None:
    from pipelines.sql.cli import add_model_arguments
    from pipelines.training.sql_sft import PRESETS
    from pipelines.training.synthetic_sql import HELD_OUT_SEED

    parser = subparsers.add_parser(
        "train-sql", help="train a text-to-SQL LoRA adapter (QLoRA on CUDA with bitsandbytes) with TRL's SFTTrainer",
        description="Train a text-to-SQL LoRA adapter. Presets: 'seed' (the seed adapter's recipe, for a GPU) and "
                    "'cpu-quick'; any flag below overrides the preset.")
    parser.add_argument("--data", help="a Spider folder (train split is used) or a JSONL of "
                                       "{question, query, db_id | schema[, dialect]}")
    parser.add_argument("--output", required=True, help="folder for the adapter (checkpoints go in OUTPUT/checkpoints)")
    parser.add_argument("--preset", default="cpu-quick", choices=list(PRESETS), help="default: cpu-quick")
    parser.add_argument("--profile", choices=["cpu", "gpu"], help="take the base model from this profile")
    parser.add_argument("--model", help="base model id, folder or embedded:smollm2 (default: the profile's SQL model)")
    parser.add_argument("--schemas", help="Spider folder whose tables.json has the schemas of JSONL rows with a db_id")
    group = parser.add_argument_group("hyperparameters (default: the preset's)")
    group.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    group.add_argument("--epochs", type=float)
    group.add_argument("--lr", type=float, help="peak learning rate (cosine schedule)")
    group.add_argument("--warmup", type=float, help="warmup, as a fraction of the steps")
    group.add_argument("--batch-size", type=int, help="per device (packed blocks with packing)")
    group.add_argument("--grad-accum", type=int, help="gradient accumulation steps")
    group.add_argument("--max-length", type=int, help="tokens per (packed) sequence; longer examples are dropped")
    group.add_argument("--lora-r", type=int)
    group.add_argument("--lora-alpha", type=int)
    group.add_argument("--lora-dropout", type=float)
    group.add_argument("--neftune-alpha", type=float, help="NEFTune noise (0 switches it off)")
    group.add_argument("--packing", action=argparse.BooleanOptionalAction, default=None)
    group.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    group.add_argument("--quantization", choices=["auto", "nf4", "none"],
                       help="auto: nf4 (QLoRA) with CUDA and bitsandbytes, else none")
    group.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"])
    group.add_argument("--optimizer", help="a transformers optim name (default: paged_adamw_8bit with QLoRA, "
                                           "else adamw_torch)")
    group.add_argument("--max-examples", type=int, help="train on a seeded sample of N examples")
    group.add_argument("--value-hints", action=argparse.BooleanOptionalAction, default=None,
                       help="Spider data: prompts list values of the text columns, as the app's do")
    group.add_argument("--target-dialect", choices=["sqlite", "duckdb"],
                       help="Spider data: learn the gold SQL as written (sqlite) or rendered in DuckDB")
    group.add_argument("--synthetic", type=int, metavar="N",
                       help="add N generated analytics examples (date windows, per month, top-N...; DuckDB SQL)")
    group.add_argument("--init-adapter", metavar="FOLDER", help="continue training this adapter instead of a new one")
    group.add_argument("--seed", type=int)
    group.add_argument("--save-steps", type=int, help="checkpoint every N optimizer steps")
    parser.add_argument("--resume", action="store_true",
                        help="continue the unfinished run in --output, with its saved settings")
    parser.add_argument("--overwrite", action="store_true", help="replace an adapter or unfinished run in --output")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep OUTPUT/checkpoints after finishing")
    parser.add_argument("--save-dtype", choices=["fp32", "fp16", "bf16"],
                        help="the adapter file's weights (default fp32; fp16 halves the size, e.g. to ship it)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--eval", metavar="N|all", help="afterwards, score base and adapter on N Spider dev questions "
                                                        "(seeded sample) or all, into the model card")
    parser.add_argument("--eval-seed", type=int, default=0)
    parser.add_argument("--spider-dir", help="Spider folder for --eval (default: --data when it is one)")
    parser.set_defaults(func=cmd_train_sql)

    parser = subparsers.add_parser(
        "eval-adapter", help="score a trained adapter and its base model on Spider dev; writes eval-*.json and "
                             "the model card in the adapter folder")
    parser.add_argument("--adapter", required=True, help="adapter folder trained by train-sql")
    parser.add_argument("--spider-dir", required=True, help="Spider folder (dev.json, tables.json, database/)")
    parser.add_argument("--limit", type=int, help="a seeded sample of N dev questions (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["base", "adapter"], help="score only one of the two")
    parser.add_argument("--predictions-dir", help="also write predictions-base.jsonl / predictions-adapter.jsonl "
                        "(one line per question, as eval-spider's --predictions-out) into this folder")
    parser.set_defaults(func=cmd_eval_adapter)

    parser = subparsers.add_parser(
        "eval-analytics", help="score the SQL model on generated analytics questions over invented databases",
        description="Execution accuracy on held-out synthetic analytics questions (date windows, per month, top-N, "
                    "joins, HAVING, DISTINCT) over databases no training run has seen, asked as the app asks them.")
    add_model_arguments(parser)
    parser.add_argument("--limit", type=int, default=60, help="questions (default 60)")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="generator seed (default: the held-out one)")
    parser.add_argument("--no-constrain", action="store_true", help="decode freely, without the SQL grammar")
    parser.add_argument("--out", help="write the report (with every question) to this JSON file")
    parser.add_argument("--revote", metavar="REPORT", help="ask no model: choose again among the candidates an "
                        "earlier --out report recorded (same --seed and --limit), with today's guard and vote")
    parser.set_defaults(func=cmd_eval_analytics)
