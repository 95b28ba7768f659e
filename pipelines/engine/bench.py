"""`python -m pipelines bench-engine`: how fast each engine generates, against what memory bandwidth allows.

For each engine, on the same model, adapter and prompts (the app's own SQL prompts for the bundled example
questions: schema, value hints):
- single-user decode tokens/s (greedy, streamed, after the first token) and time to first token p50/p95;
- batch-8 throughput: 8 conversations in one `generate` call, completion tokens over wall time (the 8 prompts'
  prefill included), and its decode part alone, as the single-user figure is (the same call with one new token
  each times the prefill, which is taken off);
- end-to-end p50 of the app's answer path (`ask`: prompt, constrained decoding, guard, sandbox);
- this machine's read bandwidth (a large tensor summed), the bytes of weights one token reads in bf16, and so
  each decode figure as a share of the bandwidth limit (bandwidth / bytes per token).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[2] / "results"
BATCH = 8


def read_bandwidth_gbs(megabytes: int = 512, repeats: int = 5) -> float:
    """Best of `repeats` sums of a tensor far larger than the caches: what one pass over the weights can get."""
    import torch

    data = torch.ones(megabytes * 1024 * 1024 // 4)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return data.numel() * 4 / best / 1e9


def weight_count(model_spec: str) -> int:
    """Parameters in the model's safetensors files (the same for every engine that serves it)."""
    from safetensors import safe_open

    from pipelines.engine.loading import resolve_model_path

    total = 0
    for path in Path(resolve_model_path(model_spec)).glob("*.safetensors"):
        with safe_open(path, "np") as weights:
            for name in weights.keys():
                shape = weights.get_slice(name).get_shape()
                total += int(__import__("math").prod(shape))
    return total


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bench_prompts(count: int):
    """(question, database, messages) for the first `count` bundled example questions, as the app builds them."""
    from pipelines.sql.databases import DuckDBDatabase
    from pipelines.sql.demo_data import ensure_demo_databases
    from pipelines.sql.pipeline import question_messages

    questions = [(demo, question) for demo in ensure_demo_databases().values() for question in demo.examples]
    # Round-robin over the databases, so every schema size is in the sample.
    by_db: dict[str, list] = {}
    for demo, question in questions:
        by_db.setdefault(demo.name, []).append((demo, question))
    ordered = [item for group in zip(*by_db.values()) for item in group]
    prompts = []
    for demo, question in ordered[:count]:
        database = DuckDBDatabase(demo.path, name=demo.name)
        prompts.append((question, database, question_messages(question, database)))
    return prompts


def bench_engine(engine, prompts, *, max_new_tokens: int, dialect: str | None) -> dict:
    from pipelines.engine import SamplingParams
    from pipelines.sql.pipeline import ask

    free = SamplingParams(max_new_tokens=max_new_tokens)
    engine.generate([prompts[0][2]], SamplingParams(max_new_tokens=4))  # warm-up: first-call costs are not speed
    prompt_cache = getattr(engine, "prompt_cache", None)  # the transformers engine's schema-prefix cache
    if prompt_cache is not None:
        prompt_cache.clear()  # the warm-up's prompt must not count as a database seen before
    ttfts, decode_tokens, decode_s = [], 0, 0.0
    seen_before: dict[bool, list[float]] = {False: [], True: []}  # TTFT by: an earlier question on this database?
    databases: set[str] = set()
    for _, database, messages in prompts:
        stream = engine.stream(messages, free)
        for _ in stream:
            pass
        ttfts.append(stream.ttft_ms)
        seen_before[database.name in databases].append(stream.ttft_ms)
        databases.add(database.name)
        if stream.generation.completion_tokens > 1:
            decode_tokens += stream.generation.completion_tokens - 1
            decode_s += stream.finished_at - stream.first_token_at
    batch = [messages for _, _, messages in (prompts * BATCH)[:BATCH]]
    started = time.perf_counter()
    generations = engine.generate(batch, free)
    batch_s = time.perf_counter() - started
    batch_tokens = sum(g[0].completion_tokens for g in generations)
    started = time.perf_counter()
    engine.generate(batch, SamplingParams(max_new_tokens=1))
    prefill_s = time.perf_counter() - started
    batch_decode_s = batch_s - prefill_s
    answers_s = []
    for question, database, _ in prompts:
        started = time.perf_counter()
        ask(question, database, engine, max_retries=0, dialect=dialect)
        answers_s.append(time.perf_counter() - started)
    return {
        "engine": engine.info.engine, "device": engine.info.device, "dtype": engine.info.dtype,
        "capabilities": engine.capabilities.as_dict(),
        "single_tokens_per_s": round(decode_tokens / decode_s, 1) if decode_s else None,
        "single_decode_tokens": decode_tokens,
        "batch8_tokens_per_s": round(batch_tokens / batch_s, 1),
        "batch8_tokens": batch_tokens,
        "batch8_decode_tokens_per_s": round((batch_tokens - BATCH) / batch_decode_s, 1) if batch_decode_s > 0 else None,
        "batch8_rows_tokens": [g[0].completion_tokens for g in generations],  # rows that stop early thin the batch
        "ttft_ms_p50": round(statistics.median(ttfts)), "ttft_ms_p95": round(_percentile(ttfts, 0.95)),
        # the bundled questions go round the databases, so the second half asks about a database seen before
        "ttft_ms_p50_first_question_on_db": round(statistics.median(seen_before[False])),
        "ttft_ms_p50_later_question_on_db": round(statistics.median(seen_before[True])) if seen_before[True] else None,
        "prompt_cache": None if prompt_cache is None else {
            "hits": prompt_cache.hits, "misses": prompt_cache.misses, "reused_tokens": prompt_cache.reused_tokens},
        "answer_s_p50": round(statistics.median(answers_s), 2),
        "answer_path": "ask(): constrained decoding where the engine supports it, value hints, guard, sandbox",
    }


def cmd_bench_engine(args: argparse.Namespace) -> int:
    from pipelines.engine import get_engine
    from pipelines.spider.evaluate import run_metadata
    from pipelines.sql.cli import profile_from_args

    profile = profile_from_args(args)
    prompts = bench_prompts(args.prompts)
    bandwidth = read_bandwidth_gbs()
    weights = weight_count(profile.sql_model)
    bf16_bytes_per_token = weights * 2  # every weight is read once per decoded token (tied embeddings counted once)
    limit = bandwidth * 1e9 / bf16_bytes_per_token
    report = {
        "model": profile.sql_model, "adapter": profile.sql_adapter, "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "read_bandwidth_gbs": round(bandwidth, 1), "weights": weights,
        "bf16_limit_tokens_per_s": round(limit, 1),
        "engines": {},
        **run_metadata(args.command_line),
    }
    for name in args.engines.split(","):
        print(f"benchmarking {name}...", file=sys.stderr)
        engine = get_engine(profile.sql_model, profile.sql_adapter, engine=name,
                            url=args.engine_url if name != "transformers" else None)
        figures = bench_engine(engine, prompts, max_new_tokens=args.max_new_tokens, dialect=profile.sql_dialect)
        single = figures["single_tokens_per_s"]
        for key in ("single_tokens_per_s", "batch8_tokens_per_s", "batch8_decode_tokens_per_s"):
            if figures[key]:
                figures[key.replace("tokens_per_s", "share_of_bf16_limit")] = round(figures[key] / limit, 3)
                if key != "single_tokens_per_s" and single:
                    figures[key.replace("tokens_per_s", "over_single")] = round(figures[key] / single, 2)
        report["engines"][name] = figures
        print(json.dumps({name: figures}), file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return 0


def register(subparsers) -> None:
    from pipelines.sql.cli import add_model_arguments

    parser = subparsers.add_parser("bench-engine", help="decode speed of each engine against the memory-bandwidth limit")
    add_model_arguments(parser)
    parser.add_argument("--engines", default="transformers", help="comma-separated engine names (default transformers)")
    parser.add_argument("--prompts", type=int, default=8, help="bundled example questions to time (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", default=str(RESULTS_DIR / "bench-engine.json"))
    parser.set_defaults(func=cmd_bench_engine)
