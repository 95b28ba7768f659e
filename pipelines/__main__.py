"""`python -m pipelines <command>`: the headless face of VoxQL.

Each command lives in the module that owns its work; that module's `register(subparsers)` adds the
subcommand and sets `func`, which returns the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys

from pipelines.errors import VoxQLError

# Modules that define commands, imported lazily so `--help` stays fast and a missing optional
# dependency only breaks its own command.
COMMAND_MODULES = [
    "pipelines.sql.cli",
    "pipelines.spider.cli",
    "pipelines.sql.safety_cli",
    "pipelines.sql.examples",
    "pipelines.speech.cli",
    "pipelines.speech.spoken_questions",
    "pipelines.sql.spoken",
    "pipelines.training.projector_train",
    "pipelines.training.cli",
    "pipelines.training.tags_cli",
    "pipelines.engine.bench",
    "pipelines.bench_space",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = "python -m pipelines " + shlex.join(argv)  # recorded in reports and model cards
    try:
        return args.func(args)
    except VoxQLError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
