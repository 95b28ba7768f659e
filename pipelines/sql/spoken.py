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
def evaluate_spoken(rows: list[dict], profile: Profile, *, text_engine, speech_engine, progress=None,
                    **ask_kwargs) -> dict:
    """Each spoken demo question (rows of make-spoken-questions' demo.jsonl) asked three ways over its demo
    database: typed, cascade and end to end, each scored by execution match against its gold SQL."""
    from pipelines.speech.audio import load_audio
    from pipelines.sql.databases import DuckDBDatabase
    from pipelines.sql.demo_data import ensure_demo_databases
    from pipelines.sql.examples import rows_match
    from pipelines.sql.pipeline import run_sql

    demos = ensure_demo_databases()
    databases, typed, records = {}, {}, []
    for number, row in enumerate(rows):
        database = databases.setdefault(row["db_id"], DuckDBDatabase(demos[row["db_id"]].path, name=row["db_id"]))
        gold = run_sql(row["gold"], database)
        audio = load_audio(row["audio"])

        def score(answer: Answer) -> dict:
            right = answer.executed and answer.ok and not answer.truncated and \
                rows_match(gold.rows, answer.rows, row["gold"])
            return {"correct": bool(right), "sql": answer.sql, "error": answer.error,
                    "seconds": round(answer.timings.total_ms / 1000, 2),
                    "transcript": (answer.spoken or {}).get("transcript")}

        if row["question"] not in typed:
            typed[row["question"]] = score(ask(row["question"], database, text_engine, **ask_kwargs))
        record = {"db": row["db_id"], "question": row["question"], "voice": row["voice"], "audio_s": row["duration_s"],
                  "typed": typed[row["question"]],
                  "cascade": score(ask_cascade(audio, database, text_engine, profile, **ask_kwargs)),
                  "end-to-end": score(ask_end_to_end(audio, database, speech_engine, **ask_kwargs))}
        records.append(record)
        if progress:
            progress(number + 1, len(rows), record)
    summary = {}
    for way in ("typed", "cascade", "end-to-end"):
        scores = [r[way] for r in records]
        summary[way] = {"correct": sum(s["correct"] for s in scores), "total": len(scores),
                        "median_s": sorted(s["seconds"] for s in scores)[len(scores) // 2]}
    typed_right = summary["typed"]["correct"]
    summary["end_to_end_vs_typed"] = round(summary["end-to-end"]["correct"] / typed_right, 3) if typed_right else None
    return {"summary": summary, "records": records}


def cmd_eval_spoken(args) -> int:
    import json
    import shlex
    import sys
    from pathlib import Path

    from pipelines.engine import get_engine
    from pipelines.profiles import resolve_profile
    from pipelines.speech.spoken_questions import load_spoken_questions
    from pipelines.spider.evaluate import run_metadata

    profile = resolve_profile(args.profile, speech_sql_model=args.speech_model)
    rows = load_spoken_questions(args.data)
    # one voice per question by default (voices rotate over the questions), all of them with --all-voices
    if not args.all_voices:
        by_question: dict[str, list[dict]] = {}
        for row in rows:
            by_question.setdefault(row["question"], []).append(row)
        rows = [clips[number % len(clips)] for number, clips in enumerate(by_question.values())]

    def progress(done, total, record):
        marks = " ".join(f"{way}={'right' if record[way]['correct'] else 'wrong'}"
                         for way in ("typed", "cascade", "end-to-end"))
        print(f"eval-spoken {done}/{total}: {marks}  {record['question']}", file=sys.stderr)

    result = evaluate_spoken(rows, profile, text_engine=get_engine(profile.sql_model, profile.sql_adapter),
                             speech_engine=speech_sql_engine(profile), progress=progress,
                             max_retries=args.retries, dialect=profile.sql_dialect)
    result = {"profile": profile.name, "data": args.data, "speech_sql_model": profile.speech_sql_model,
              "sql_model": profile.sql_model, "sql_adapter": profile.sql_adapter, "asr_model": profile.asr_model,
              "max_retries": args.retries, **result,
              **run_metadata("python -m pipelines " + shlex.join(sys.argv[1:]))}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(json.dumps({**result["summary"], "out": args.out}))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval-spoken", help="spoken demo questions: typed vs cascade vs end to end")
    parser.add_argument("--data", required=True, help="demo.jsonl of make-spoken-questions")
    parser.add_argument("--out", default="results/spoken-demo-cpu.json")
    parser.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--speech-model", help="an Ultravox folder (default: the profile's)")
    parser.add_argument("--retries", type=int, default=0, help="self-corrections (default 0: the first try)")
    parser.add_argument("--all-voices", action="store_true", help="every clip, not one voice per question")
    parser.set_defaults(func=cmd_eval_spoken)
