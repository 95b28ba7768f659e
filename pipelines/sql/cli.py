"""CLI: `sql` (ask a database a question) and `build-demo-dbs`."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path



def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--profile/--model/--adapter, shared by every command that generates SQL."""
    parser.add_argument("--profile", choices=["cpu", "gpu"], help="model profile (default: gpu with CUDA, else cpu)")
    parser.add_argument("--model", help="model id or local path (overrides the profile and VOXQL_SQL_MODEL)")
    parser.add_argument("--adapter", help="LoRA adapter id or path, or 'none' for the base model")
    parser.add_argument("--engine", help="generation engine: llamacpp, transformers, vllm or openai (or VOXQL_ENGINE; "
                                         "default: llamacpp for the embedded model where it is built, else "
                                         "transformers); see the README's Engines table")
    parser.add_argument("--engine-url", help="an OpenAI-compatible server to use, e.g. http://host:8000/v1 "
                                             "(or VOXQL_ENGINE_URL); alone it means --engine openai")


def profile_from_args(args: argparse.Namespace):
    from pipelines.profiles import resolve_profile

    return resolve_profile(args.profile, sql_model=args.model, sql_adapter=args.adapter)


def sql_engine_from_args(args: argparse.Namespace):
    from pipelines.engine import get_engine

    profile = profile_from_args(args)
    return get_engine(profile.sql_model, profile.sql_adapter, engine=args.engine, url=args.engine_url)


def json_default(value):
    """Dates, decimals and the like become strings in JSON output."""
    return str(value)


def cmd_sql(args: argparse.Namespace) -> int:
    from pipelines.sql.databases import database_from_args, open_database
    from pipelines.sql.pipeline import ask

    with tempfile.TemporaryDirectory(prefix="voxql-cli-") as workdir:
        # --schema is the UI's pasted-schema mode: the SQL is generated and checked, never run.
        database = database_from_args(None, args.schema) if args.schema else open_database(args.db, Path(workdir))
        options = dict(max_retries=args.max_retries, dialect=profile_from_args(args).sql_dialect,
                       constrain=not args.no_constrain, candidates=args.candidates)
        if args.audio:
            answer = _ask_spoken(args, database, options)
        else:
            answer = ask(args.question, database, sql_engine_from_args(args), **options)
    print(json.dumps(answer.to_dict(), default=json_default))
    return 0 if answer.ok and (answer.executed or not database.can_execute) else 1


def _ask_spoken(args: argparse.Namespace, database, options: dict):
    from pipelines.speech.audio import load_audio
    from pipelines.sql.spoken import ask_cascade, ask_end_to_end, speech_sql_engine

    audio = load_audio(args.audio)
    profile = profile_from_args(args)
    if args.voice == "cascade":
        return ask_cascade(audio, database, sql_engine_from_args(args), profile, **options)
    engine = speech_sql_engine(profile, engine=args.engine, url=args.engine_url)
    return ask_end_to_end(audio, database, engine, **options)


def cmd_build_demo_dbs(args: argparse.Namespace) -> int:
    from pipelines.sql.demo_data import ensure_demo_databases

    for demo in ensure_demo_databases(Path(args.out) if args.out else None).values():
        print(f"{demo.name}\t{demo.path}", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    from pipelines.sql.spoken import VOICE_PATHS

    parser = subparsers.add_parser("sql", help="answer a question about a database with generated SQL")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--db", help="DuckDB, SQLite, CSV or Parquet file")
    target.add_argument("--schema", metavar="FILE.sql", help="CREATE TABLE statements only (the UI's pasted-schema "
                                                             "mode): the SQL is generated and checked, not run")
    question = parser.add_mutually_exclusive_group(required=True)
    question.add_argument("--question")
    question.add_argument("--audio", metavar="FILE", help="a spoken question (WAV, FLAC, ...; at most 30 s)")
    parser.add_argument("--voice", choices=VOICE_PATHS, default="end-to-end",
                        help="a spoken question through the transcript, or straight into the speech-in model "
                             "(Ultravox; default)")
    parser.add_argument("--max-retries", type=int, default=2, help="self-corrections after an error (default 2)")
    parser.add_argument("--no-constrain", action="store_true",
                        help="decode freely instead of following the schema-scoped SQL grammar")
    parser.add_argument("--candidates", type=int,
                        help="vote by execution over N replies (default: 8 on engines where samples are cheap, "
                             "such as llamacpp, else 1; 1 = the greedy reply alone)")
    add_model_arguments(parser)
    parser.set_defaults(func=cmd_sql)

    parser = subparsers.add_parser("build-demo-dbs", help="build the bundled demo databases into the cache")
    parser.add_argument("--out", help="folder (default: $VOXQL_CACHE/databases)")
    parser.set_defaults(func=cmd_build_demo_dbs)
