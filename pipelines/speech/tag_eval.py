"""Tag adapters side by side, in the seed's table layout: Base / SFT / RAFT raw / RAFT + top-k.

Every system hears the same clips and shows the same words (the ASR channel, decoded once per clip); only the
tag channel differs. Each row scores the merged transcript, as the Listen tab shows it, with the project's tag
metrics (`pipelines/speech/metrics.py`) and both RAFT rewards.
"""

from __future__ import annotations

import datetime as dt
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

from pipelines.speech.metrics import REWARDS, mean_metrics, raft_reward, score


@dataclass(frozen=True)
class TagSystem:
    name: str  # as the table says it: "Base", "SFT", "RAFT raw", "RAFT + top-k"
    adapter: str | None  # None: Whisper alone (no tag channel)
    top_k: int | None  # None: every taxonomy tag the channel wrote


def seed_table_systems(sft: str | None, raft: str | None, top_k: int = 2) -> list[TagSystem]:
    systems = [TagSystem("Base", None, None)]
    if sft:
        systems.append(TagSystem("SFT", sft, None))
    if raft:
        systems += [TagSystem("RAFT raw", raft, None), TagSystem(f"RAFT + top-{top_k}", raft, top_k)]
    return systems


def evaluate_tag_systems(rows: list[dict], systems: list[TagSystem],
                         progress: Callable[[int, int], None] | None = None) -> dict:
    """rows: {"audio": path, "reference": tagged text}. Returns per-system means and per-clip hypotheses."""
    from pipelines.speech.audio import load_audio, validate
    from pipelines.speech.transcribe import SpeechEngine, build_transcript
    from pipelines.speech.whisper_asr import EMBEDDED_WHISPER, WHISPER_DISPLAY_NAME, get_whisper
    from pipelines.speech.whisper_tags import get_whisper_tag_channel

    whisper = get_whisper(EMBEDDED_WHISPER)
    engines = {
        system.name: SpeechEngine("whisper", whisper, WHISPER_DISPLAY_NAME, system.adapter, whisper.device,
                                  None if system.adapter else "no tag adapter",
                                  tag_channel=get_whisper_tag_channel(system.adapter) if system.adapter else None)
        for system in systems
    }
    clips = []
    started = time.perf_counter()
    for index, row in enumerate(rows):
        samples = validate(load_audio(row["audio"])).samples
        words = whisper.channel(samples)
        tag_outputs: dict[str, object] = {}  # one tag decode per adapter, whatever the top-k
        record = {"audio": row["audio"], "reference": row["reference"], "systems": {}}
        for system in systems:
            engine = engines[system.name]
            if system.adapter and system.adapter not in tag_outputs:
                tag_outputs[system.adapter] = engine.tag_channel.channel(samples, words.words)
            transcript = build_transcript(engine, words, tag_outputs.get(system.adapter), tags=True,
                                          top_k=system.top_k)
            metrics = score(row["reference"], transcript.merged)
            record["systems"][system.name] = {
                "hypothesis": transcript.merged, **metrics.to_dict(),
                **{f"reward_{variant}": raft_reward(row["reference"], transcript.merged, variant)
                   for variant in REWARDS}}
        clips.append(record)
        if progress:
            progress(index + 1, len(rows))
    table = {}
    for system in systems:
        results = [clip["systems"][system.name] for clip in clips]
        means = mean_metrics([score(clip["reference"], r["hypothesis"]) for clip, r in zip(clips, results)])
        table[system.name] = {
            "adapter": system.adapter, "top_k": system.top_k, **{k: round(v, 4) for k, v in means.items()},
            **{f"reward_{variant}": round(sum(r[f"reward_{variant}"] for r in results) / max(1, len(results)), 4)
               for variant in REWARDS}}
    return {"n": len(clips), "table": table, "clips": clips, "seconds": round(time.perf_counter() - started, 1)}


def provenance(command: str) -> dict:
    import peft
    import torch
    import transformers

    return {"command": command, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.machine(), "versions": {"python": platform.python_version(), "torch": torch.__version__,
                                                        "transformers": transformers.__version__,
                                                        "peft": peft.__version__}}


def markdown_table(table: dict) -> str:
    lines = ["| System | Tag F1 | Recall | Precision | Hallucination | WER | Reward (seed) | Reward (over-emit) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in table.items():
        lines.append(f"| {name} | {row['f1']:.3f} | {row['recall']:.3f} | {row['precision']:.3f} | "
                     f"{row['hallucination_rate']:.3f} | {row['wer']:.3f} | {row['reward_seed']:.3f} | "
                     f"{row['reward_over-emit']:.3f} |")
    return "\n".join(lines)
