"""Tag precision/recall/F1, hallucination rate and WER, exactly as the tag adapter family reports them.

- tags: every `[...]` match, lowercased and stripped, as a multiset (taxonomy or not);
- matched: size of the multiset intersection of predicted and reference tags;
- P = matched/#predicted, R = matched/#reference, F1 their harmonic mean; both empty: 1, 1, 1;
  only the reference empty: 0, 1, 0; only the prediction empty: 1, 0, 0;
- hallucination: share of predicted occurrences whose name is not among the reference names (0 if none predicted);
- WER on the words with tags removed, lowercased, every character but a-z, 0-9 and ' turned into a space.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass

from pipelines.speech.tags import TAG_PATTERN, normalize_tag

_NOT_WORD = re.compile(r"[^a-z0-9']")


def extract_tags(text: str) -> Counter[str]:
    return Counter(normalize_tag(match) for match in TAG_PATTERN.findall(text or ""))


def normalize_words(text: str) -> list[str]:
    return _NOT_WORD.sub(" ", TAG_PATTERN.sub(" ", text or "").lower()).split()


@dataclass(frozen=True)
class TagMetrics:
    precision: float
    recall: float
    f1: float
    hallucination_rate: float
    wer: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def tag_prf(reference: str, hypothesis: str) -> tuple[float, float, float]:
    ref, hyp = extract_tags(reference), extract_tags(hypothesis)
    n_ref, n_hyp = sum(ref.values()), sum(hyp.values())
    if n_ref == 0 and n_hyp == 0:
        return 1.0, 1.0, 1.0
    if n_ref == 0:
        return 0.0, 1.0, 0.0
    if n_hyp == 0:
        return 1.0, 0.0, 0.0
    matched = sum((ref & hyp).values())
    precision, recall = matched / n_hyp, matched / n_ref
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def hallucination_rate(reference: str, hypothesis: str) -> float:
    ref_names = set(extract_tags(reference))
    hyp = extract_tags(hypothesis)
    total = sum(hyp.values())
    if total == 0:
        return 0.0
    return sum(count for name, count in hyp.items() if name not in ref_names) / total


def wer(reference: str, hypothesis: str) -> float:
    """Word edit distance / reference words (jiwer); both empty: 0. An empty reference with words predicted
    would divide by zero: it scores the number of inserted words, i.e. the distance over max(1, reference words)."""
    import jiwer

    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    if not ref and not hyp:
        return 0.0
    if not ref:
        return float(len(hyp))
    if not hyp:
        return 1.0
    output = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return (output.substitutions + output.deletions + output.insertions) / len(ref)


def score(reference: str, hypothesis: str) -> TagMetrics:
    precision, recall, f1 = tag_prf(reference, hypothesis)
    return TagMetrics(precision, recall, f1, hallucination_rate(reference, hypothesis), wer(reference, hypothesis))


def mean_metrics(rows: list[TagMetrics]) -> dict[str, float]:
    if not rows:
        return {key: 0.0 for key in TagMetrics.__dataclass_fields__}
    return {key: sum(getattr(row, key) for row in rows) / len(rows) for key in TagMetrics.__dataclass_fields__}


# -- RAFT rewards ---------------------------------------------------------------------------------------------------
REWARDS = ("seed", "over-emit")
OVER_EMIT_PENALTY = 0.1  # per tag occurrence beyond the reference's count


def raft_reward(reference: str, hypothesis: str, variant: str = "seed") -> float:
    """The seed's reward 0.4(1-WER) + 0.4 F1 + 0.2(1-hallucination), WER capped at 1; `over-emit` also
    subtracts 0.1 per tag occurrence beyond the reference's count. The seed's card notes that without such an
    absolute term a sample that over-emits (right tag plus extras) can still win its group, so curation keeps
    over-emitting."""
    if variant not in REWARDS:
        raise ValueError(f"unknown reward {variant!r}: use one of {', '.join(REWARDS)}")
    metrics = score(reference, hypothesis)
    reward = 0.4 * (1 - min(1.0, metrics.wer)) + 0.4 * metrics.f1 + 0.2 * (1 - metrics.hallucination_rate)
    if variant == "over-emit":
        extra = sum(extract_tags(hypothesis).values()) - sum(extract_tags(reference).values())
        reward -= OVER_EMIT_PENALTY * max(0, extra)
    return reward
