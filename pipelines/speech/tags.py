"""Expressive tags: the 15-tag taxonomy, parsing `[tag]` out of text, and the top-k filter."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

TAXONOMY: dict[str, tuple[str, ...]] = {
    "emotion": ("excited", "sad", "angry", "nervous", "calm", "frustrated"),
    "nonverbal": ("laughs", "sighs", "gasps", "clears throat", "crying"),
    "delivery": ("whispers", "shouts", "stammers"),
    "pause": ("pause",),
}
TAGS: frozenset[str] = frozenset(tag for tags in TAXONOMY.values() for tag in tags)
CATEGORY: dict[str, str] = {tag: category for category, tags in TAXONOMY.items() for tag in tags}

TAG_PATTERN = re.compile(r"\[([^\]]+)\]")
DEFAULT_TOP_K = 2


def normalize_tag(raw: str) -> str:
    return raw.strip().lower()


@dataclass
class TagMention:
    """One `[tag]` in a channel's text. `logprobs` are those of the tokens that spell it (brackets included)."""

    name: str
    start: int  # character span in the text it was parsed from
    end: int
    time: float | None = None  # seconds into the audio, when the channel streams with timing
    logprobs: list[float] = field(default_factory=list)

    @property
    def in_taxonomy(self) -> bool:
        return self.name in TAGS


def parse_tags(text: str) -> list[TagMention]:
    return [TagMention(normalize_tag(m.group(1)), m.start(), m.end()) for m in TAG_PATTERN.finditer(text or "")]


def strip_tags(text: str) -> str:
    """The words alone: tags removed, whitespace collapsed."""
    return " ".join(TAG_PATTERN.sub(" ", text or "").split())


@dataclass
class TagSelection:
    kept: list[str]  # distinct tags, in order of first appearance
    scores: dict[str, float | None]  # every distinct in-taxonomy tag -> mean log-probability of its tokens
    out_of_taxonomy: int  # occurrences dropped because the tag is not one of the 15
    mentions: list[TagMention]  # the kept tags' occurrences (for timed merging)


def tag_score(mentions: list[TagMention]) -> float | None:
    """Mean log-probability over every token of every occurrence of one tag; None without log-probabilities."""
    logprobs = [lp for mention in mentions for lp in mention.logprobs]
    return sum(logprobs) / len(logprobs) if logprobs else None


def select_top_k(mentions: list[TagMention], k: int | None = DEFAULT_TOP_K) -> TagSelection:
    """Keep the k distinct taxonomy tags with the highest score (ties: the earlier one), in order of first
    appearance. k None or 0 keeps every taxonomy tag. Tags outside the taxonomy are dropped and counted."""
    known = [m for m in mentions if m.in_taxonomy]
    first_seen: dict[str, int] = {}
    for index, mention in enumerate(known):
        first_seen.setdefault(mention.name, index)
    scores = {name: tag_score([m for m in known if m.name == name]) for name in first_seen}

    def rank(name: str) -> tuple[float, int]:
        score = scores[name]
        return (-(score if score is not None else -math.inf), first_seen[name])

    chosen = sorted(first_seen, key=rank)
    if k:
        chosen = chosen[:k]
    kept = sorted(chosen, key=first_seen.__getitem__)
    return TagSelection(
        kept=kept,
        scores=scores,
        out_of_taxonomy=len(mentions) - len(known),
        mentions=[m for m in known if m.name in kept],
    )
