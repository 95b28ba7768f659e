"""What one channel (ASR or tags) hands back, and how generated tokens become text with times and scores."""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field

from pipelines.speech.merge import Word, words_with_times
from pipelines.speech.tags import TAG_PATTERN, TagMention, parse_tags


@dataclass
class TokenStream:
    """Tokens a streaming decoder emitted, one per step, with the log-probability and audio time of each."""

    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    def append(self, token_id: int, logprob: float, time: float) -> None:
        self.ids.append(token_id)
        self.logprobs.append(logprob)
        self.times.append(time)


@dataclass
class ChannelOutput:
    text: str  # as decoded, tags included
    words: list[Word] = field(default_factory=list)  # the text's words, tags left out
    mentions: list[TagMention] = field(default_factory=list)  # `[tag]`s in the text, with times and log-probs
    elapsed_ms: float = 0.0

    @property
    def plain_text(self) -> str:
        return " ".join(word.text for word in self.words)


def decode_stream(tekken, stream: TokenStream) -> tuple[str, list[int]]:
    """(text, token index of each character). Control tokens are skipped; bytes are decoded incrementally so
    a character split over two tokens is credited to the token that completes it."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces: list[str] = []
    owners: list[int] = []
    for index, token_id in enumerate(stream.ids):
        if token_id < tekken.num_special_tokens:
            continue
        chars = decoder.decode(tekken.id_to_byte_piece(token_id))
        pieces.append(chars)
        owners += [index] * len(chars)
    tail = decoder.decode(b"", final=True)
    if tail:
        pieces.append(tail)
        owners += [owners[-1] if owners else 0] * len(tail)
    return "".join(pieces), owners


def channel_from_stream(tekken, stream: TokenStream, elapsed_ms: float = 0.0) -> ChannelOutput:
    """Text, timed words and scored tag mentions from a token stream."""
    raw, owners = decode_stream(tekken, stream)
    # Leading/trailing whitespace carries no words; keep offsets consistent by trimming both together.
    left = len(raw) - len(raw.lstrip())
    text = raw.strip()
    owners = owners[left:left + len(text)]
    char_times = [stream.times[i] for i in owners]
    mentions = parse_tags(text)
    # Words never include tags: blank them out with spaces so character offsets (and times) stay aligned.
    masked = TAG_PATTERN.sub(lambda m: " " * len(m.group()), text)
    for mention in mentions:
        tokens = sorted(set(owners[mention.start:mention.end]))
        mention.logprobs = [stream.logprobs[i] for i in tokens]
        mention.time = stream.times[owners[mention.start]]
    return ChannelOutput(text=text, words=words_with_times(masked, char_times), mentions=mentions,
                         elapsed_ms=elapsed_ms)
