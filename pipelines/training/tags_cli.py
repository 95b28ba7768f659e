"""CLI: `train-tags` (SFT or RAFT of the Whisper tags LoRA, RAFT of a Voxtral one); `eval-tags --sft/--raft`
prints the seed's table.

    python -m pipelines make-tag-data --out data/tags
    python -m pipelines train-tags --method sft --data data/tags/train.jsonl --output adapters/tags-sft
    python -m pipelines train-tags --method raft --data data/tags/train.jsonl --from adapters/tags-sft \\
        --output adapters/tags-raft --samples 4 --temperature 0.7 --top-p 0.9
    python -m pipelines eval-tags --data data/tags/test.jsonl --sft adapters/tags-sft --raft adapters/tags-raft
    python -m pipelines train-tags --method raft --base-model mistralai/Voxtral-Mini-4B-Realtime-2602 \
        --from YongkangZOU/evoxtral-realtime-sft --data data/tags/train.jsonl --output adapters/evoxtral-raft

The hyperparameter flags are made from `TagTrainConfig`'s fields, so the CLI and the config never disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import threading
from pathlib import Path

from pipelines.training.cli import _install_cancel_handlers, _restore_handlers

# Fields with their own flags (or none): the rest become --kebab-case flags.
OWN_FLAGS = {"method", "data", "output_dir", "init_adapter", "resume", "overwrite"}


def _hyperparameter_fields():
    from pipelines.training.tags_train import TagTrainConfig

    return [f for f in dataclasses.fields(TagTrainConfig) if f.name not in OWN_FLAGS]


def cmd_train_tags(args: argparse.Namespace) -> int:
    from pipelines.training.tags_train import TagTrainConfig, tag_config, train_tags

    if args.resume:
        config = TagTrainConfig(method="sft", data="", output_dir=args.output, resume=True)
    else:
        if not args.data:
            print("error: --data is required (a JSONL from make-tag-data), unless you --resume", file=sys.stderr)
            return 2
        overrides = {f.name: getattr(args, f.name) for f in _hyperparameter_fields()}
        config = tag_config(args.method, args.data, args.output, init_adapter=args.init_adapter,
                            overwrite=args.overwrite, **overrides)
    cancel = threading.Event()

    def progress(event) -> None:
        if event.stage != "train" or event.loss is not None:
            print(f"[{event.elapsed_s:7.0f}s] {event.message}", file=sys.stderr, flush=True)

    previous = _install_cancel_handlers(cancel)
    try:
        result = train_tags(config, progress, cancel, command=args.command_line)
    finally:
        _restore_handlers(previous)
    summary = {key: value for key, value in result.to_dict().items() if key not in {"loss_history"}}
    print(json.dumps(summary, default=str))
    if not result.completed:
        print(f"cancelled: resume with `python -m pipelines train-tags --output {shlex.quote(result.output_dir)} "
              "--resume`", file=sys.stderr)
        return 130
    return 0


def compare_tags(args: argparse.Namespace) -> int:
    """`eval-tags` with --sft/--raft: Base / SFT / RAFT raw / RAFT + top-k on the same clips."""
    from tqdm import tqdm

    from pipelines.speech.tag_eval import evaluate_tag_systems, markdown_table, provenance, seed_table_systems
    from pipelines.speech.tag_data import load_tag_examples

    rows = [{"audio": e.audio, "reference": e.reference}
            for e in load_tag_examples(args.data, args.limit, args.seed)]
    systems = seed_table_systems(args.sft, args.raft, args.top_k)
    bar = tqdm(total=len(rows), desc="eval-tags", unit="clip", file=sys.stderr, disable=None)
    report = evaluate_tag_systems(rows, systems, lambda done, total: bar.update(done - bar.n))
    bar.close()
    report = {**provenance(args.command_line), "data": str(Path(args.data)), **report}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2, ensure_ascii=False))
    if args.write_card:
        from pipelines.training.tags_train import write_tag_card

        write_tag_card(args.raft or args.sft, report)
    print(markdown_table(report["table"]), file=sys.stderr)
    print(json.dumps({key: value for key, value in report.items() if key != "clips"}))
    return 0


def register(subparsers) -> None:
    from pipelines.training.tags_train import METHODS

    parser = subparsers.add_parser(
        "train-tags", help="train a tags LoRA: SFT or RAFT on Whisper tiny.en; RAFT on Voxtral Realtime (--base-model)",
        description="SFT: learn the tagged references. RAFT: sample N transcripts per clip from --from, keep the "
                    "best by reward, drop the bottom 10%%, fine-tune one epoch at a low learning rate.")
    parser.add_argument("--method", choices=METHODS, default="sft")
    parser.add_argument("--data", help="JSONL {audio, reference} (python -m pipelines make-tag-data)")
    parser.add_argument("--output", required=True, help="folder for the adapter")
    parser.add_argument("--from", dest="init_adapter", metavar="ADAPTER",
                        help="start from this tags adapter (required for RAFT)")
    group = parser.add_argument_group("hyperparameters (default: the method's; see TagTrainConfig)")
    for field in _hyperparameter_fields():
        kind = type(field.default) if field.default is not None else int
        group.add_argument("--" + field.name.replace("_", "-"), dest=field.name, type=kind, default=None,
                           help=f"default {field.default}")
    parser.add_argument("--resume", action="store_true", help="continue the unfinished run in --output")
    parser.add_argument("--overwrite", action="store_true", help="replace an adapter or unfinished run in --output")
    parser.set_defaults(func=cmd_train_tags)
