"""Taxonomy, tag parsing, the top-k filter, the merge and token-stream decoding."""

from __future__ import annotations

import pytest

from pipelines.speech.channels import TokenStream, channel_from_stream, decode_stream
from pipelines.speech.merge import Word, merge, words_with_times
from pipelines.speech.tags import TAGS, TAXONOMY, TagMention, parse_tags, select_top_k, strip_tags


def mention(name: str, logprobs=(), time=None, start=0) -> TagMention:
    return TagMention(name, start, start + len(name) + 2, time, list(logprobs))


def test_taxonomy_has_the_15_tags():
    assert len(TAGS) == 15
    assert set(TAXONOMY) == {"emotion", "nonverbal", "delivery", "pause"}
    assert {"clears throat", "whispers", "pause", "frustrated", "crying"} <= TAGS


def test_parse_and_strip():
    found = parse_tags("[Whispers] [pause] Listen, [clears throat] I know [made up]")
    assert [m.name for m in found] == ["whispers", "pause", "clears throat", "made up"]
    assert [m.in_taxonomy for m in found] == [True, True, True, False]
    assert strip_tags("[whispers]  Listen,  [pause] I know") == "Listen, I know"


def test_top_k_keeps_best_scores_in_order_of_appearance():
    mentions = [mention("pause", [-3.0]), mention("whispers", [-0.5, -0.7]), mention("sighs", [-0.1]),
                mention("laughs", [-2.0])]
    selection = select_top_k(mentions, 2)
    assert selection.kept == ["whispers", "sighs"]  # best two, but in order of first appearance
    assert selection.scores["whispers"] == pytest.approx(-0.6)


def test_top_k_ties_go_to_the_earlier_tag():
    mentions = [mention("calm", [-1.0]), mention("sad", [-1.0]), mention("angry", [-1.0])]
    assert select_top_k(mentions, 2).kept == ["calm", "sad"]
    unscored = [mention("calm"), mention("sad"), mention("angry")]
    assert select_top_k(unscored, 1).kept == ["calm"]


def test_top_k_counts_and_drops_tags_outside_the_taxonomy():
    mentions = [mention("giggles", [0.0]), mention("laughs", [-1.0]), mention("giggles", [0.0]), mention("music")]
    selection = select_top_k(mentions, 2)
    assert selection.kept == ["laughs"]
    assert selection.out_of_taxonomy == 3


def test_top_k_score_pools_repeated_occurrences():
    mentions = [mention("sighs", [-0.1]), mention("pause", [-1.0]), mention("sighs", [-3.0])]
    # sighs: mean(-0.1, -3.0) = -1.55 < pause -1.0
    assert select_top_k(mentions, 1).kept == ["pause"]
    selection = select_top_k(mentions, 0)  # 0 keeps every taxonomy tag
    assert selection.kept == ["sighs", "pause"]
    assert len(selection.mentions) == 3


def test_merge_without_timing_puts_tags_first():
    words = words_with_times("Listen, I know you're in a meeting")
    tags = [mention("whispers"), mention("pause")]
    assert merge(words, tags) == "[whispers] [pause] Listen, I know you're in a meeting"
    assert merge(words, []) == "Listen, I know you're in a meeting"
    assert merge([], tags) == "[whispers] [pause]"


def test_merge_with_timing_places_tags_before_the_nearest_word():
    words = [Word("Listen,", 0.0), Word("I", 0.8), Word("know", 1.0), Word("you're", 1.6), Word("busy", 2.4)]
    tags = [mention("pause", time=1.55), mention("whispers", time=0.1), mention("sighs", time=9.0)]
    assert merge(words, tags) == "[whispers] Listen, I know [pause] you're [sighs] busy"
    # a tag exactly between two words goes before the earlier one
    assert merge(words[:2], [mention("calm", time=0.4)]) == "[calm] Listen, I"


def test_words_with_times_takes_the_first_characters_time():
    words = words_with_times("ab  cd", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert words == [Word("ab", 0.0), Word("cd", 0.4)]


@pytest.fixture(scope="module")
def tekken(tmp_path_factory):
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    from pipelines.speech.testing import write_tiny_tekken

    return Tekkenizer.from_file(write_tiny_tekken(tmp_path_factory.mktemp("tekken") / "tekken.json"))


def test_decoding_a_token_stream_keeps_times_and_scores(tekken):
    text = "[whispers] Hello, café [zzz]"
    ids = tekken.encode(text, bos=False, eos=False)
    stream = TokenStream()
    stream.append(37, -0.01, 0.08)  # [STREAMING_PAD]: a control token, skipped
    for step, token in enumerate(ids, start=2):
        stream.append(token, -0.1 * step, 0.08 * step)
    decoded, owners = decode_stream(tekken, stream)
    assert decoded == text
    assert len(owners) == len(text)
    channel = channel_from_stream(tekken, stream)
    assert channel.text == text
    assert [w.text for w in channel.words] == ["Hello,", "café"]  # tags are not words
    assert channel.words[0].start > channel.mentions[0].time
    first, unknown = channel.mentions
    assert first.name == "whispers" and first.time == pytest.approx(0.16)
    tag_tokens = len(tekken.encode("[whispers]", bos=False, eos=False))
    assert len(first.logprobs) == tag_tokens
    assert unknown.name == "zzz"


def timed_stream(tekken, pieces: list[tuple[str, float, float]]) -> TokenStream:
    """A token stream spelling each (text, time, logprob) piece, as a streaming decoder would emit it."""
    stream = TokenStream()
    for text, time, logprob in pieces:
        for token in tekken.encode(text, bos=False, eos=False):
            stream.append(token, logprob, time)
        stream.append(37, -0.01, time)  # a [STREAMING_PAD] step between pieces
    return stream


def test_two_timed_channels_become_one_transcript(tekken):
    from pipelines.speech.transcribe import SpeechEngine, build_transcript

    asr = channel_from_stream(tekken, timed_stream(tekken, [("Listen,", 0.4, -0.2), (" I know", 1.0, -0.2),
                                                            (" you're busy", 2.0, -0.2)]))
    tag = channel_from_stream(tekken, timed_stream(tekken, [("[whispers]", 0.3, -0.1), (" [zzz]", 0.9, -0.1),
                                                            (" [laughs]", 1.9, -2.5), (" [pause]", 1.1, -0.3)]))
    engine = SpeechEngine("voxtral", None, "tiny", "tiny-lora", "cpu", None)
    result = build_transcript(engine, asr, tag, tags=True, top_k=2, audio_s=2.5)
    assert result.text == "Listen, I know you're busy"
    assert result.tags == ["whispers", "zzz", "laughs", "pause"]
    assert result.tags_filtered == ["whispers", "pause"]  # laughs scored lowest; zzz is not a tag
    assert result.dropped_tags == 1
    assert result.merged == "[whispers] Listen, [pause] I know you're busy"
    assert result.tag_scores["whispers"] == pytest.approx(-0.1)
    assert [e["tag"] for e in result.tag_events] == ["whispers", "pause"]
    assert result.words[0] == {"word": "Listen,", "start": 0.4}
    untimed = build_transcript(engine, asr, tag, tags=True, top_k=0)
    assert untimed.tags_filtered == ["whispers", "laughs", "pause"]
