"""CLI: `transcribe` (a file -> tagged transcript JSON), `tag-metrics`, `eval-tags`, `bench-listen` and
`make-tag-data` (a synthetic expressive-speech corpus, in `tag_data`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path



def _top_k(value: str) -> int:
    k = int(value)
    if k < 0:
        raise argparse.ArgumentTypeError("--top-k must be 0 (keep all) or more")
    return k


def add_speech_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", choices=["cpu", "gpu"], help="model profile (default: gpu with CUDA, else cpu)")
    parser.add_argument("--asr-model",
                        help="Voxtral Realtime id/path or a CTranslate2 Whisper folder (or VOXQL_ASR_MODEL)")
    parser.add_argument("--tag-adapter", help="tag LoRA id/path, or 'none' (or VOXQL_TAG_ADAPTER)")
    parser.add_argument("--no-tags", action="store_true", help="switch the tag channel off")
    parser.add_argument("--top-k", type=_top_k, default=2, help="distinct tags kept, best scores first (0: all)")


def _profile(args: argparse.Namespace):
    from pipelines.profiles import resolve_profile

    return resolve_profile(args.profile, asr_model=args.asr_model, tag_adapter=args.tag_adapter)


def cmd_transcribe(args: argparse.Namespace) -> int:
    from pipelines.speech.transcribe import transcribe_file

    transcript = transcribe_file(args.audio, _profile(args), tags=not args.no_tags, top_k=args.top_k)
    print(json.dumps(transcript.to_dict(), ensure_ascii=False))
    return 0


def cmd_tag_metrics(args: argparse.Namespace) -> int:
    from pipelines.speech.metrics import score

    print(json.dumps(score(args.ref, args.hyp).to_dict()))
    return 0


def read_eval_rows(path: Path) -> list[dict]:
    """JSONL rows {"audio": path (relative to the file's folder), "reference" or "tagged_text": reference}."""
    from pipelines.speech.tag_data import load_tag_examples

    return [{"audio": e.audio, "tagged_text": e.reference} for e in load_tag_examples(path)]


def cmd_eval_tags(args: argparse.Namespace) -> int:
    if args.sft or args.raft:
        from pipelines.training.tags_cli import compare_tags

        return compare_tags(args)
    from tqdm import tqdm

    from pipelines.errors import VoxQLError
    from pipelines.speech.metrics import TagMetrics, mean_metrics, score
    from pipelines.speech.audio import load_audio, validate
    from pipelines.speech.transcribe import get_speech_engine, transcribe_audio

    data = Path(args.data)
    rows = read_eval_rows(data)
    out = Path(args.out) if args.out else Path("runs") / f"eval-tags-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    engine = get_speech_engine(_profile(args))
    scored: list[TagMetrics] = []
    failed = 0
    with out.open("w", encoding="utf-8") as sink:
        for row in tqdm(rows, desc="eval-tags", unit="clip", file=sys.stderr):
            record = {"audio": row["audio"], "reference": row["tagged_text"]}
            try:
                transcript = transcribe_audio(validate(load_audio(row["audio"])), engine,
                                              tags=not args.no_tags, top_k=args.top_k)
            except VoxQLError as error:  # one bad clip is reported in its row, not fatal to the run
                failed += 1
                record["error"] = str(error)
            else:
                metrics = score(row["tagged_text"], transcript.merged)
                scored.append(metrics)
                record.update(hypothesis=transcript.merged, **metrics.to_dict())
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
    summary = {**mean_metrics(scored), "n": len(scored), "failed": failed, "rows": str(out),
               "asr_model": engine.asr_model, "tag_adapter": engine.tag_adapter, "tag_channel":
               "off" if args.no_tags else ("on" if engine.has_tags else engine.tag_note)}
    print(json.dumps(summary))
    return 0 if scored else 1


def register(subparsers) -> None:
    transcribe = subparsers.add_parser("transcribe", help="transcribe an audio file with expressive tags (JSON)")
    transcribe.add_argument("--audio", required=True, help="wav, flac, ogg or mp3 file")
    add_speech_arguments(transcribe)
    transcribe.set_defaults(func=cmd_transcribe)

    metrics = subparsers.add_parser("tag-metrics", help="tag P/R/F1, hallucination rate and WER of one pair")
    metrics.add_argument("--ref", required=True, help="reference tagged text")
    metrics.add_argument("--hyp", required=True, help="predicted tagged text")
    metrics.set_defaults(func=cmd_tag_metrics)

    evaluate = subparsers.add_parser("eval-tags", help="transcribe a JSONL set and score it against references")
    evaluate.add_argument("--data", required=True, help='JSONL lines {"audio": path, "reference" (or "tagged_text")}')
    evaluate.add_argument("--out", help="per-utterance rows (JSONL; default runs/eval-tags-<time>.jsonl); with "
                                        "--sft/--raft the whole report (JSON)")
    table = evaluate.add_argument_group("the seed's table: Base / SFT / RAFT raw / RAFT + top-k "
                                        "(Whisper tags adapters)")
    table.add_argument("--sft", help="SFT tags adapter folder")
    table.add_argument("--raft", help="RAFT tags adapter folder")
    table.add_argument("--limit", type=int, help="a seeded sample of N clips")
    table.add_argument("--write-card", action="store_true", help="put the table into the (RAFT, else SFT) adapter's "
                                                                 "model card")
    table.add_argument("--seed", type=int, default=0)
    add_speech_arguments(evaluate)
    evaluate.set_defaults(func=cmd_eval_tags)

    from pipelines.speech import bench, tag_data

    bench.register(subparsers)
    tag_data.register(subparsers)
