"""Tag metrics and WER: every edge case of the definition, and the `tag-metrics` command."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines.__main__ import main
from pipelines.speech.metrics import extract_tags, hallucination_rate, normalize_words, score, tag_prf, wer


def test_tags_are_lowercased_stripped_multiset():
    assert extract_tags("[ Laughs ] hi [laughs] [PAUSE] [not a tag]") == {"laughs": 2, "pause": 1, "not a tag": 1}


def test_both_empty_is_perfect():
    assert tag_prf("hello", "hello") == (1.0, 1.0, 1.0)
    assert score("", "").to_dict() == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "hallucination_rate": 0.0,
                                       "wer": 0.0}


def test_only_reference_empty():
    assert tag_prf("hello", "[sighs] hello") == (0.0, 1.0, 0.0)


def test_only_prediction_empty():
    assert tag_prf("[sighs] hello", "hello") == (1.0, 0.0, 0.0)


def test_multiset_intersection_counts_repeats():
    # reference: laughs x2, pause; prediction: laughs x1, pause x2, sighs -> matched = 1 + 1 = 2
    precision, recall, f1 = tag_prf("[laughs] a [laughs] [pause]", "[laughs] [pause] b [pause] [sighs]")
    assert precision == pytest.approx(2 / 4)
    assert recall == pytest.approx(2 / 3)
    assert f1 == pytest.approx(2 * (0.5 * 2 / 3) / (0.5 + 2 / 3))


def test_no_match_gives_zero_f1():
    assert tag_prf("[sad] x", "[excited] x") == (0.0, 0.0, 0.0)


def test_hallucination_rate():
    assert hallucination_rate("[laughs] x", "x") == 0.0  # nothing predicted
    assert hallucination_rate("[laughs] x", "[laughs] [laughs] [sighs] [gasps]") == pytest.approx(2 / 4)
    # name-based: a repeated reference tag is not a hallucination even beyond the reference count
    assert hallucination_rate("[laughs]", "[laughs] [laughs] [laughs]") == 0.0
    assert hallucination_rate("", "[laughs]") == 1.0


def test_word_normalisation():
    assert normalize_words("[whispers] Don't STOP—now, 3 times!") == ["don't", "stop", "now", "3", "times"]


def test_wer_ignores_tags_case_and_punctuation():
    assert wer("[sad] Hello, world.", "hello world [laughs]") == 0.0
    assert wer("the cat sat", "the cat sat down") == pytest.approx(1 / 3)
    assert wer("the cat sat", "a cat") == pytest.approx(2 / 3)
    assert wer("", "") == 0.0
    assert wer("[pause]", "[laughs]") == 0.0  # no words on either side
    assert wer("hello there", "") == 1.0
    assert wer("", "two words") == 2.0  # distance over max(1, reference words)


@given(st.lists(st.sampled_from(["laughs", "sighs", "pause", "calm", "x y"]), max_size=6),
       st.lists(st.sampled_from(["laughs", "sighs", "pause", "calm", "x y"]), max_size=6))
def test_metric_ranges(ref_tags, hyp_tags):
    ref = " ".join(f"[{t}] word" for t in ref_tags)
    hyp = " ".join(f"[{t}] word" for t in hyp_tags)
    metrics = score(ref, hyp)
    for value in (metrics.precision, metrics.recall, metrics.f1, metrics.hallucination_rate):
        assert 0.0 <= value <= 1.0
    assert metrics.f1 <= max(metrics.precision, metrics.recall) + 1e-12
    assert score(hyp, hyp).f1 == 1.0


def test_tag_metrics_command(capsys):
    assert main(["tag-metrics", "--ref", "[whispers] Hello there", "--hyp", "[whispers] [pause] hello there"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert list(printed) == ["precision", "recall", "f1", "hallucination_rate", "wer"]
    assert printed["precision"] == 0.5 and printed["recall"] == 1.0 and printed["wer"] == 0.0
    assert printed["hallucination_rate"] == 0.5
