"""The Train tab's tags section, through its handlers: bad settings are refused with a reason, a tiny SFT run
finishes and appears in the pickers, and the evaluation returns the seed's table."""

from __future__ import annotations

import pytest

from components import train_tags


def drain(generator) -> list:
    return list(generator)


def field_values(**changes) -> list:
    values = {key: 0 if key in train_tags.RAFT_DEFAULT_OVERRIDES | {"max_steps", "max_clips"}
              else train_tags.DEFAULTS[key] for key, _ in train_tags.FIELDS}
    values.update(changes)
    return [values[key] for key, _ in train_tags.FIELDS]


def test_bad_settings_are_refused_with_a_reason(tmp_path):
    (status, *_), = drain(train_tags.start_training("SFT", str(tmp_path / "missing.jsonl"), None, "x", *field_values()))
    assert "no training data" in status
    data = tmp_path / "train.jsonl"
    data.write_text('{"audio": "a.wav", "reference": "hi"}\n')
    (status, *_), = drain(train_tags.start_training("RAFT", str(data), None, "x", *field_values()))
    assert "--from" in status
    (status, *_), = drain(train_tags.start_training("SFT", str(data), None, "../up", *field_values()))
    assert "name the adapter" in status
    assert train_tags.cancel_job() in ("Nothing is running.",) or "Cancelling" in train_tags.cancel_job()


def test_a_tiny_sft_run_trains_lists_and_evaluates(tag_clips, voxql_cache):
    views = drain(train_tags.start_training("SFT", str(tag_clips), None, "tab-sft",
                                            *field_values(max_steps=3, batch_size=4)))
    status, log_text, frame, *pickers = views[-1]
    assert status.startswith("**Done:** 3 steps") and "tab-sft" in status and "/" not in status
    assert "step 3/3" in log_text and list(frame.value["data"]) and len(frame.value["data"]) == 3
    assert all("tab-sft" in picker.constructor_args["choices"] for picker in pickers)
    assert train_tags.adapter_path("tab-sft").startswith(str(voxql_cache))

    *_, (eval_status, table) = drain(train_tags.evaluate(str(tag_clips), "tab-sft", None, 0))
    assert "Evaluated" in eval_status and list(table["system"]) == ["Base", "SFT"]
    assert table.loc[0, "recall"] == pytest.approx(0.5)
