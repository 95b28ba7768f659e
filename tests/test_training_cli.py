"""`train-sql` and `eval-adapter` arguments: flags override the preset; --resume needs only the folder."""

from __future__ import annotations

import pytest

from pipelines.__main__ import build_parser
from pipelines.errors import BadInput
from pipelines.training.cli import _config_from_args, _parse_eval
from pipelines.training.sql_sft import PRESETS


def parse(*argv):
    return build_parser().parse_args(["train-sql", *argv])


def test_flags_override_the_preset():
    config = _config_from_args(parse("--data", "d.jsonl", "--output", "out", "--model", "m", "--preset", "seed",
                                     "--max-steps", "7", "--lr", "1e-3", "--no-packing", "--neftune-alpha", "0",
                                     "--threads", "2"))
    assert config.preset == "seed" and config.model == "m" and config.data == "d.jsonl"
    assert config.max_steps == 7 and config.learning_rate == 1e-3 and not config.packing
    assert config.neftune_alpha is None and config.threads == 2
    assert config.max_length == PRESETS["seed"]["max_length"] and config.grad_accum == PRESETS["seed"]["grad_accum"]


def test_default_model_comes_from_the_profile(monkeypatch):
    monkeypatch.delenv("VOXQL_SQL_MODEL", raising=False)
    config = _config_from_args(parse("--data", "d", "--output", "o", "--profile", "cpu"))
    assert config.model == "embedded:smollm2" and config.preset == "cpu-quick"


def test_resume_needs_only_the_output_folder():
    config = _config_from_args(parse("--output", "o", "--resume"))
    assert config.resume and config.output_dir == "o"
    with pytest.raises(BadInput, match="--data is required"):
        _config_from_args(parse("--output", "o"))


def test_eval_argument():
    assert _parse_eval(None) is False and _parse_eval("all") is None and _parse_eval("50") == 50
    with pytest.raises(BadInput):
        _parse_eval("0")
    args = build_parser().parse_args(["eval-adapter", "--adapter", "a", "--spider-dir", "s", "--limit", "5"])
    assert args.limit == 5 and args.only is None
