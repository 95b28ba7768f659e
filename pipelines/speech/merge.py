"""Merge the ASR text and the tag stream into one tagged transcript.

Without timing, tags go first: `[whispers] [pause] Listen, I know you're in a meeting`. When both channels
stream with timing (Voxtral emits one token per 80 ms), each tag goes before the word nearest its time.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.speech.tags import TagMention


@dataclass(frozen=True)
class Word:
    text: str  # as spoken in the ASR text, punctuation attached
    start: float | None  # seconds into the audio; None when the channel gives no timing


def words_with_times(text: str, char_times: list[float | None] | None = None) -> list[Word]:
    """Split on whitespace; a word's time is that of its first character (when `char_times` is given)."""
    words: list[Word] = []
    index, length = 0, len(text)
    while index < length:
        if text[index].isspace():
            index += 1
            continue
        end = index
        while end < length and not text[end].isspace():
            end += 1
        start = char_times[index] if char_times is not None and index < len(char_times) else None
        words.append(Word(text[index:end], start))
        index = end
    return words


def nearest_word(words: list[Word], time: float) -> int:
    """Index of the word whose start is nearest `time` (ties: the earlier word)."""
    return min(range(len(words)), key=lambda i: (abs(words[i].start - time), i))


def is_timed(words: list[Word], tags: list[TagMention]) -> bool:
    return bool(words) and all(w.start is not None for w in words) and all(t.time is not None for t in tags)


def merge(words: list[Word], tags: list[TagMention]) -> str:
    """Tags in brackets placed before the nearest word when timed, else all before the text."""
    if not tags:
        return " ".join(w.text for w in words)
    if not is_timed(words, tags):
        return " ".join([*(f"[{t.name}]" for t in tags), *(w.text for w in words)])
    before: dict[int, list[TagMention]] = {}
    for tag in sorted(tags, key=lambda t: t.time):
        before.setdefault(nearest_word(words, tag.time), []).append(tag)
    parts: list[str] = []
    for index, word in enumerate(words):
        parts += [f"[{t.name}]" for t in before.get(index, [])]
        parts.append(word.text)
    return " ".join(parts)
