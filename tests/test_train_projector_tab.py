"""The Train tab's projector section, through its handlers: bad settings are refused with a reason, and a tiny
run on the real embedded models finishes with its loss plotted and says how to use the result."""

from __future__ import annotations

import json
import shutil

import pytest

from components import train_projector
from tests.conftest import SPIDER_DIR


def field_values(**changes) -> list:
    values = {key: getattr(train_projector.DEFAULTS, key) or 0 for key, _ in train_projector.FIELDS}
    values.update(changes)
    return [values[key] for key, _ in train_projector.FIELDS]


def test_bad_settings_are_refused_with_a_reason(tmp_path):
    (status, *_), = train_projector.start_training(str(tmp_path / "missing.jsonl"), "x", *field_values())
    assert "no training data" in status
    data = tmp_path / "train.jsonl"
    data.write_text('{"audio": "a.wav", "question": "q", "db_id": "x", "gold": "SELECT 1"}\n')
    (status, *_), = train_projector.start_training(str(data), "../up", *field_values())
    assert "name the projector" in status
    (status, *_), = train_projector.start_training(str(data), "ok", *field_values(batch_size=0))
    assert "at least 1" in status
    assert train_projector.cancel_job() == "Nothing is running."


@pytest.mark.skipif(shutil.which("espeak-ng") is None or not (SPIDER_DIR / "train_spider.json").is_file(),
                    reason="needs espeak-ng and Spider")
def test_a_tiny_run_makes_its_corpus_trains_and_says_how_to_use_it(voxql_cache):
    *_, (corpus_status, data) = train_projector.make_corpus(4)
    assert corpus_status.startswith("**Corpus ready:** 4 train") and data.endswith("train.jsonl")
    views = list(train_projector.start_training(data, "tab-projector", *field_values(ctc_steps=1, kd_steps=1,
                                                                                      batch_size=2)))
    status, log_text, frame = views[-1]
    folder = voxql_cache / "ultravox" / "tab-projector"
    assert status.startswith("**Done:** 2 steps") and f"VOXQL_SPEECH_SQL_MODEL={folder}" in status
    assert "KD step 2/2" in log_text and len(frame.value["data"]) == 2
    assert json.loads((folder / "config.json").read_text())["model_type"] == "ultravox"


def test_a_cancelled_run_says_where_its_projector_is_and_how_to_resume(tmp_path):
    record = {"status": "cancelled", "steps": 3, "max_steps": 10, "config": {"output_dir": str(tmp_path / "uv")}}
    status = train_projector.finished_training(record)
    assert status.startswith("**Cancelled** at step 3/10") and f"projector so far is in `{tmp_path / 'uv'}`" in status
    assert f"train-projector --output-dir {tmp_path / 'uv'} --resume" in status
