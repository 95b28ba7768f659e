"""`make-spoken-questions`: Spider and demo questions synthesized to speech, for the speech-in SQL model.

Each question is said by one voice of `make-tag-data`'s sets (espeak-ng variants and the Piper voice), rendered
the same way as an untagged clip of that corpus (level, a low noise floor) at a tempo drawn from 0.9-1.15:

- `train.jsonl`: Spider train questions, the train voices (the projector learns from these);
- `dev.jsonl`: Spider dev questions, the dev voices;
- `test.jsonl`: other Spider dev questions, the held-out test voices;
- `demo.jsonl`: every bundled example question of the demo databases, said by each test voice (what a user asks
  in the app; their gold SQL is in `assets/databases/examples.json`).

Rows: {"audio", "question", "db_id", "gold", "gold_dialect", "source", "voice", "duration_s"}. The speech is
synthetic: it says nothing about accents, noise rooms or microphones of real users.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

from pipelines.errors import BadInput
from pipelines.speech.tag_data import (PIPER_VOICE, SAMPLE_RATE, VOICES, Renderer, _write_wav, check_tools,
                                       load_piper, make_plan)

SPLITS = ("train", "dev", "test", "demo")
DEFAULT_COUNTS = {"train": 3000, "dev": 100, "test": 200}
RECIPE_FILE = "recipe.json"
TEMPO_RANGE = (0.9, 1.15)


def _spider_rows(spider_dir: Path, split: str, count: int, seed: int, skip: set[int] = frozenset()) -> list[dict]:
    from pipelines.spider.data import database_path, load_split

    rows = [row for row in load_split(spider_dir, split) if row.index not in skip
            and database_path(spider_dir, row.db_id) is not None]
    chosen = sorted(random.Random(seed).sample(range(len(rows)), min(count, len(rows))))
    file = "train_spider.json" if split == "train" else "dev.json"
    return [{"question": rows[i].question.strip(), "db_id": rows[i].db_id, "gold": rows[i].query,
             "gold_dialect": "sqlite", "source": f"{file}#{rows[i].index}"} for i in chosen]


def _demo_rows() -> list[dict]:
    from pipelines.sql.examples import load_examples

    return [{"question": example.question, "db_id": database, "gold": example.gold_sql, "gold_dialect": "duckdb",
             "source": f"examples.json:{database}#{number}"}
            for database, examples in load_examples().items() for number, example in enumerate(examples)]


def plan_questions(spider_dir: Path, seed: int, counts: dict[str, int]) -> dict[str, list[dict]]:
    """{split: rows without audio}: which question each clip says and in which voice."""
    dev = _spider_rows(spider_dir, "dev", counts["dev"], seed)
    test = _spider_rows(spider_dir, "dev", counts["test"], seed + 1, skip={int(r["source"].split("#")[1]) for r in dev})
    plans = {"train": _spider_rows(spider_dir, "train", counts["train"], seed), "dev": dev, "test": test,
             "demo": [dict(row) for row in _demo_rows() for _ in VOICES["test"]]}
    for split, rows in plans.items():
        voices = VOICES["test" if split == "demo" else split]
        rng = random.Random(f"{seed}-{split}")
        for number, row in enumerate(rows):
            voice = voices[number % len(voices)] if split == "demo" else rng.choice(voices)
            row.update(voice=voice.name, tempo=round(rng.uniform(*TEMPO_RANGE), 3))
    return plans


def generate(out: Path, spider_dir: Path, seed: int = 0, counts: dict[str, int] | None = None,
             use_piper: bool = True, progress=None, command: str | None = None) -> dict:
    check_tools()
    counts = {**DEFAULT_COUNTS, **(counts or {})}
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / RECIPE_FILE).is_file():
        raise BadInput(f"{out} is not empty and holds no {RECIPE_FILE}; pick an empty or new --out folder")
    (out / "audio").mkdir(parents=True, exist_ok=True)
    piper, piper_note = load_piper(seed) if use_piper else (None, "skipped: --no-piper")
    voices = {voice.name: voice for split in VOICES.values() for voice in split}
    plans = plan_questions(spider_dir, seed, counts)
    renderer = Renderer(piper)
    total, done, durations = sum(len(rows) for rows in plans.values()), 0, {}
    for split, rows in plans.items():
        for number, row in enumerate(rows):
            voice = voices[row["voice"]]
            if voice == PIPER_VOICE and piper is None:  # no Piper here: its share goes to the first espeak voice
                voice = VOICES[split if split != "demo" else "test"][0]
                row["voice"] = voice.name
            rng = np.random.default_rng([seed, SPLITS.index(split), number])
            audio = renderer.render(make_plan(rng, row["question"], ()), voice, rng, row.pop("tempo"))
            row["audio"] = f"audio/{split}-{number:05d}.wav"
            row["duration_s"] = round(len(audio) / SAMPLE_RATE, 3)
            _write_wav(out / row["audio"], audio)
            done += 1
            if progress:
                progress(done, total)
        durations[split] = round(sum(row["duration_s"] for row in rows), 1)
        (out / f"{split}.jsonl").write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
                                            encoding="utf-8")
    recipe = {"command": command, "seed": seed, "counts": {split: len(rows) for split, rows in plans.items()},
              "seconds": durations, "piper": piper_note,
              "voices": {split: sorted({row["voice"] for row in rows}) for split, rows in plans.items()},
              "synthetic": "espeak-ng and Piper voices; not real speakers, rooms or microphones"}
    (out / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")
    return recipe


def load_spoken_questions(path: str | Path, limit: int | None = None) -> list[dict]:
    """Rows of a split file, with `audio` made absolute."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BadInput(f"no such file: {path} (make one with `python -m pipelines make-spoken-questions`)")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
                row["audio"] = str(path.parent / row["audio"])
                row["question"], row["db_id"]  # noqa: B018 - required fields
            except (json.JSONDecodeError, KeyError, TypeError):
                raise BadInput(f"{path.name}:{number}: expected a row of make-spoken-questions") from None
            rows.append(row)
    return rows[:limit] if limit else rows


def cmd_make_spoken_questions(args: argparse.Namespace) -> int:
    from pipelines.training.sql_data import default_spider_dir

    spider_dir = Path(args.spider_dir) if args.spider_dir else default_spider_dir()
    if spider_dir is None:
        raise BadInput("no Spider folder found: pass --spider-dir")
    started = time.monotonic()

    def progress(done: int, total: int) -> None:
        if done % 200 == 0 or done == total:
            print(f"make-spoken-questions: {done}/{total} clips", file=sys.stderr)

    recipe = generate(Path(args.out), spider_dir, seed=args.seed,
                      counts={"train": args.train, "dev": args.dev, "test": args.test},
                      use_piper=not args.no_piper, progress=progress,
                      command=args.command_line)
    print(json.dumps({**recipe, "out": args.out, "elapsed_s": round(time.monotonic() - started, 1)}, indent=2))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("make-spoken-questions",
                                   help="Spider and demo questions synthesized to speech (train-projector's data)")
    parser.add_argument("--out", required=True, help="output folder (train/dev/test/demo.jsonl, audio/)")
    parser.add_argument("--spider-dir", help="the Spider folder (default: the bundled one)")
    parser.add_argument("--seed", type=int, default=0)
    for split in ("train", "dev", "test"):
        parser.add_argument(f"--{split}", type=int, default=DEFAULT_COUNTS[split],
                            help=f"{split} clips (default {DEFAULT_COUNTS[split]})")
    parser.add_argument("--no-piper", action="store_true", help="espeak-ng voices only")
    parser.set_defaults(func=cmd_make_spoken_questions)
