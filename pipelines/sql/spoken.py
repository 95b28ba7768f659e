"""A spoken question -> SQL, two ways: the cascade (transcript, then the text model) and end to end (the
speech-in model, Ultravox, hears the question itself). Both end in the same Answer, checked and run like any
other, with `spoken` saying which way and, for the cascade, what was heard."""

from __future__ import annotations

from pipelines.errors import ModelNotAvailable
from pipelines.profiles import Profile
from pipelines.speech.audio import Audio, validate
from pipelines.sql.databases import Database
from pipelines.sql.pipeline import Answer, ask

VOICE_PATHS = ("cascade", "end-to-end")


def spoken_label(audio: Audio) -> str:
    return f"(spoken, {audio.seconds:.1f} s)"


def ask_cascade(audio: Audio, database: Database, engine, profile: Profile, **ask_kwargs) -> Answer:
    from pipelines.speech.transcribe import get_speech_engine, transcribe_audio

    transcript = transcribe_audio(audio, get_speech_engine(profile), tags=False)
    answer = ask(transcript.text, database, engine, **ask_kwargs)
    answer.spoken = {"voice": "cascade", "transcript": transcript.text, "audio_s": round(audio.seconds, 3),
                     "transcription_ms": round(transcript.timings["total_ms"], 1)}
    answer.timings.total_ms += transcript.timings["total_ms"]
    return answer


def ask_end_to_end(audio: Audio, database: Database, speech_engine, **ask_kwargs) -> Answer:
    validate(audio)
    answer = ask(spoken_label(audio), database, speech_engine, audio=audio.samples, **ask_kwargs)
    answer.spoken = {"voice": "end-to-end", "transcript": None, "audio_s": round(audio.seconds, 3),
                     "transcription_ms": None}
    return answer


def speech_sql_engine(profile: Profile, *, engine: str | None = None, url: str | None = None):
    """The profile's speech-in model with its SQL adapter, or a clear reason why there is none."""
    from pipelines.engine import get_engine

    if not profile.speech_sql_model:
        raise ModelNotAvailable(f"the {profile.name} profile has no speech-in SQL model (its projector is not "
                                "shipped): train one with `python -m pipelines train-projector`, or use the cascade")
    return get_engine(profile.speech_sql_model, profile.sql_adapter, engine=engine, url=url)


# -- evaluation: typed vs cascade vs end to end ---------------------------------------------------------------------
class SpokenScorer:
    """The database a spoken question is about, and whether an answer to it is right, by execution match.

    Demo rows (`demo.jsonl`, DuckDB gold) run on the bundled demo databases. Spider rows (`dev`/`test.jsonl`,
    SQLite gold) run as the Spider evaluation's `--path duckdb` does: the gold in SQLite, the answer checked and
    run on the app's DuckDB copy of the database."""

    def __init__(self, spider_dir: str | None = None):
        self.spider_dir = spider_dir
        self.databases: dict[str, Database] = {}

    def database(self, row: dict) -> Database:
        if row["db_id"] not in self.databases:
            if row.get("gold_dialect") == "sqlite":
                from pipelines.spider.duckdb_path import open_duckdb_database

                database = open_duckdb_database(self._sqlite_path(row), model_dialect="duckdb")
            else:
                from pipelines.sql.databases import DuckDBDatabase
                from pipelines.sql.demo_data import ensure_demo_databases

                database = DuckDBDatabase(ensure_demo_databases()[row["db_id"]].path, name=row["db_id"])
            self.databases[row["db_id"]] = database
        return self.databases[row["db_id"]]

    def _sqlite_path(self, row: dict):
        from pathlib import Path

        from pipelines.training.sql_data import default_spider_dir

        spider = Path(self.spider_dir) if self.spider_dir else default_spider_dir()
        if spider is None:
            raise ModelNotAvailable("Spider rows need the Spider folder: pass --spider-dir")
        return spider / "database" / row["db_id"] / f"{row['db_id']}.sqlite"

    def is_right(self, row: dict, answer: Answer) -> bool:
        if row.get("gold_dialect") == "sqlite":
            from pipelines.spider.duckdb_path import duckdb_exec_match

            return duckdb_exec_match(self.database(row), self._sqlite_path(row), answer.sql, row["gold"]).correct
        from pipelines.sql.examples import rows_match
        from pipelines.sql.pipeline import run_sql

        gold = run_sql(row["gold"], self.database(row))
        return bool(answer.executed and answer.ok and not answer.truncated and
                    rows_match(gold.rows, answer.rows, row["gold"]))


EVAL_WAYS = ("typed", *VOICE_PATHS)


def evaluate_spoken(rows: list[dict], profile: Profile, *, text_engine, speech_engine, progress=None,
                    spider_dir: str | None = None, ways: tuple[str, ...] = EVAL_WAYS, **ask_kwargs) -> dict:
    """Each spoken question (rows of make-spoken-questions' demo, dev or test split) asked `ways`: typed, cascade
    and end to end by default, each scored by execution match against its gold SQL (see SpokenScorer)."""
    from pipelines.speech.audio import load_audio

    scorer = SpokenScorer(spider_dir)
    typed, records = {}, []
    for number, row in enumerate(rows):
        database = scorer.database(row)
        audio = load_audio(row["audio"])

        def score(answer: Answer) -> dict:
            return {"correct": scorer.is_right(row, answer), "sql": answer.sql, "error": answer.error,
                    "seconds": round(answer.timings.total_ms / 1000, 2),
                    "transcript": (answer.spoken or {}).get("transcript")}

        record = {"db": row["db_id"], "question": row["question"], "voice": row["voice"], "audio_s": row["duration_s"]}
        if "typed" in ways:  # the same text whatever the voice: asked once
            if row["question"] not in typed:
                typed[row["question"]] = score(ask(row["question"], database, text_engine, **ask_kwargs))
            record["typed"] = typed[row["question"]]
        if "cascade" in ways:
            record["cascade"] = score(ask_cascade(audio, database, text_engine, profile, **ask_kwargs))
        if "end-to-end" in ways:
            record["end-to-end"] = score(ask_end_to_end(audio, database, speech_engine, **ask_kwargs))
        records.append(record)
        if progress:
            progress(number + 1, len(rows), record)
    summary = {}
    for way in ways:
        scores = [r[way] for r in records]
        summary[way] = {"correct": sum(s["correct"] for s in scores), "total": len(scores),
                        "median_s": sorted(s["seconds"] for s in scores)[len(scores) // 2]}
    if {"typed", "end-to-end"} <= set(ways) and summary["typed"]["correct"]:
        summary["end_to_end_vs_typed"] = round(summary["end-to-end"]["correct"] / summary["typed"]["correct"], 3)
    return {"summary": summary, "records": records}


def cmd_eval_spoken(args) -> int:
    import json
    import sys
    from pathlib import Path

    from pipelines.engine import get_engine
    from pipelines.profiles import resolve_profile
    from pipelines.speech.spoken_questions import load_spoken_questions
    from pipelines.spider.evaluate import run_metadata

    asked = {way.strip() for way in args.ways.split(",") if way.strip()}
    if not asked or asked - set(EVAL_WAYS):
        print(f"error: --ways takes one or more of {', '.join(EVAL_WAYS)}, comma-separated", file=sys.stderr)
        return 2
    ways = tuple(way for way in EVAL_WAYS if way in asked)
    profile = resolve_profile(args.profile, speech_sql_model=args.speech_model)
    rows = load_spoken_questions(args.data)
    if args.sample:  # spread over the file (its rows come grouped by database)
        rows = rows[::max(1, len(rows) // args.sample)][:args.sample]
    # one voice per question by default (voices rotate over the questions), all of them with --all-voices
    if not args.all_voices:
        by_question: dict[str, list[dict]] = {}
        for row in rows:
            by_question.setdefault(row["question"], []).append(row)
        rows = [clips[number % len(clips)] for number, clips in enumerate(by_question.values())]

    def progress(done, total, record):
        marks = " ".join(f"{way}={'right' if record[way]['correct'] else 'wrong'}" for way in ways)
        print(f"eval-spoken {done}/{total}: {marks}  {record['question']}", file=sys.stderr)

    needs_text = {"typed", "cascade"} & set(ways)
    result = evaluate_spoken(rows, profile, progress=progress, spider_dir=args.spider_dir, ways=ways,
                             text_engine=get_engine(profile.sql_model, profile.sql_adapter) if needs_text else None,
                             speech_engine=speech_sql_engine(profile) if "end-to-end" in ways else None,
                             max_retries=args.retries, dialect=profile.sql_dialect, candidates=args.candidates)
    result = {"profile": profile.name, "data": args.data, "speech_sql_model": profile.speech_sql_model,
              "sql_model": profile.sql_model, "sql_adapter": profile.sql_adapter, "asr_model": profile.asr_model,
              "max_retries": args.retries, "candidates": args.candidates, **result,
              **run_metadata(args.command_line)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(json.dumps({**result["summary"], "out": args.out}))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval-spoken", help="spoken questions: typed vs cascade vs end to end")
    parser.add_argument("--data", required=True, help="demo.jsonl (or dev/test.jsonl: Spider) of make-spoken-questions")
    parser.add_argument("--sample", type=int, help="N rows spread evenly over the file (default: all)")
    parser.add_argument("--spider-dir", help="Spider's folder, for dev/test rows (default: the bundled one)")
    parser.add_argument("--out", default="results/spoken-demo-cpu.json")
    parser.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--speech-model", help="an Ultravox folder (default: the profile's)")
    parser.add_argument("--retries", type=int, default=0, help="self-corrections (default 0: the first try)")
    parser.add_argument("--candidates", type=int, help="vote over N replies on every way (default: each engine's "
                        "own, as the app: 8 on llamacpp, 1 on the in-process Ultravox)")
    parser.add_argument("--all-voices", action="store_true", help="every clip, not one voice per question")
    parser.add_argument("--ways", default=",".join(EVAL_WAYS),
                        help="which ways to ask, comma-separated (default: typed,cascade,end-to-end; e.g. "
                             "end-to-end alone to compare two projectors on the same clips)")
    parser.set_defaults(func=cmd_eval_spoken)
