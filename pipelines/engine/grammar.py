"""Grammar-constrained decoding for the transformers engine, with llguidance (Lark grammars).

Each generated row gets its own matcher. Before every token the matcher's bitmask removes the tokens that
would leave the grammar; after the grammar is complete only end-of-turn remains. If a row's matcher dead-ends
(an error state or an empty mask, which a grammar with gaps can reach), that row falls back to free decoding
and the generation says so, rather than forcing nonsense out of the model.
"""

from __future__ import annotations

import functools

import torch
from transformers import LogitsProcessor

MAX_ITEMS_IN_ROW = 100_000
STEP_MAX_ITEMS = 2_000_000


def grammar_available() -> bool:
    try:
        import llguidance  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=4)
def _ll_tokenizer(tokenizer, vocab_size: int):
    """llguidance's view of the tokenizer: about a second to build, so once per model."""
    import llguidance.hf

    return llguidance.hf.from_tokenizer(tokenizer, vocab_size)


@functools.lru_cache(maxsize=8)
def _compiled(tokenizer, vocab_size: int, grammar: str):
    """A matcher at the grammar's start, compiled once per grammar (a few hundred ms for a schema's): requests
    work on deep copies of it."""
    import llguidance

    # The schema-scoped SQL grammar keeps one branch per scope alive until FROM settles it: that needs more
    # Earley items per step than llguidance's defaults allow.
    limits = llguidance.LLParserLimits(max_items_in_row=MAX_ITEMS_IN_ROW, step_max_items=STEP_MAX_ITEMS)
    matcher = llguidance.LLMatcher(_ll_tokenizer(tokenizer, vocab_size), grammar, log_level=0, limits=limits)
    if matcher.is_error():
        raise ValueError(f"the grammar does not compile: {matcher.get_error()[:300]}")
    return matcher


class GrammarLogitsProcessor(LogitsProcessor):
    """`greedy`: the scores will be argmax-ed, so when the model's own top token is allowed (the usual case for a
    fine-tuned model) nothing needs masking; the whole-vocabulary mask is computed only when it is not.
    A caller that samples can do the same by passing each row's sampled token to `apply` as `proposals`: a row whose
    proposal is allowed is left unmasked (`masked[row]` says which rows were masked, to sample again)."""

    def __init__(self, tokenizer, vocab_size: int, grammar: str, rows: int, *, greedy: bool = False):
        compiled = _compiled(tokenizer, vocab_size, grammar)
        self.matchers = [compiled.deep_copy() for _ in range(rows)]
        self.greedy = greedy
        self.fell_back = [False] * rows
        self._bitmask = torch.zeros((rows, (vocab_size + 31) // 32), dtype=torch.int32)
        self._bits = torch.arange(32, dtype=torch.int32)
        self._prompt_length: int | None = None
        self.masked = [False] * rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.apply(input_ids, scores)

    def apply(self, input_ids: torch.LongTensor, scores: torch.FloatTensor,
              proposals: list[int] | None = None) -> torch.FloatTensor:
        from llguidance.torch import fill_next_token_bitmask

        if self._prompt_length is None:
            self._prompt_length = input_ids.shape[1]
        generated = input_ids.shape[1] > self._prompt_length
        allowed_rows = []
        self.masked = [False] * len(self.matchers)
        for row, matcher in enumerate(self.matchers):
            if self.fell_back[row]:
                continue
            if generated and not matcher.is_stopped():
                matcher.consume_token(int(input_ids[row, -1]))
            if matcher.is_error():
                self.fell_back[row] = True
                continue
            proposal = proposals[row] if proposals is not None else int(scores[row].argmax()) if self.greedy else None
            if proposal is not None and matcher.validate_tokens([proposal]) == 1:
                continue  # the model's choice is allowed: no mask needed (argmax of the masked scores picks it too)
            fill_next_token_bitmask(matcher, self._bitmask, row)
            if not bool(self._bitmask[row].any()):
                self.fell_back[row] = True
                continue
            allowed_rows.append(row)
            self.masked[row] = True
        if allowed_rows:
            rows = torch.tensor(allowed_rows)
            allowed = ((self._bitmask[rows].unsqueeze(-1) >> self._bits) & 1).bool().flatten(1)
            width = min(scores.shape[1], allowed.shape[1])
            masked = scores[rows].clone()
            masked[:, :width] = masked[:, :width].masked_fill(~allowed[:, :width], float("-inf"))
            masked[:, width:] = float("-inf")
            scores[rows] = masked
        return scores

    @property
    def status(self) -> list[str]:
        """Per row: "followed" (the grammar held throughout) or "fell back" (free decoding after a dead end)."""
        return ["fell back" if fell else "followed" for fell in self.fell_back]
