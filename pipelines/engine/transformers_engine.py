"""The transformers + PEFT engine: works everywhere torch does (CPU, CUDA)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import threading
import time
from threading import Thread

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from pipelines.engine.base import (DEFAULT_ADAPTER, Capabilities, Engine, EngineInfo, Generation, Message,
                                   SamplingParams, TextStream)
from pipelines.engine.grammar import GrammarLogitsProcessor, grammar_available
from pipelines.engine.loading import cpu_has_bf16, display_name, load_adapter, load_causal_lm


class _StopOnEvent(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        return self.event.is_set()


class _TimedStreamer(TextIteratorStreamer):
    """Records when the first new token arrives and how many arrive, for ttft and tokens/s."""

    def __init__(self, tokenizer, stream: TextStream, **kwargs):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True, **kwargs)
        self.stream = stream
        self.completion_tokens = 0
        self._prompt_seen = False

    def put(self, value):
        if self._prompt_seen:  # the first call carries the prompt
            if self.stream.first_token_at is None:
                self.stream.first_token_at = time.perf_counter()
            self.completion_tokens += value.numel()
        self._prompt_seen = True
        super().put(value)


class PromptCache:
    """The KV caches of recent prompts. A new prompt starts from the longest prefix it shares with one of them
    (questions about the same database share the schema's first few hundred tokens, and a retry shares the
    whole first prompt), so only the rest is prefilled: the time to the first token shrinks with it."""

    def __init__(self, size: int = 8, min_tokens: int = 32):
        self.size, self.min_tokens = size, min_tokens
        self.entries: list[tuple[object, list[int], object]] = []  # (model key, prompt ids, cache), oldest first
        self.hits = self.misses = 0
        self.reused_tokens = 0

    def lookup(self, key, ids: list[int]):
        """A copy of the best cache, cut to the shared prefix (at least one token is left to run), or None."""
        best, shared = None, 0
        for entry_key, entry_ids, cache in self.entries:
            if entry_key != key:
                continue
            n = 0
            for a, b in zip(entry_ids, ids):
                if a != b:
                    break
                n += 1
            if n > shared:
                best, shared = cache, n
        shared = min(shared, len(ids) - 1)
        if best is None or shared < self.min_tokens:
            self.misses += 1
            return None
        self.hits += 1
        self.reused_tokens += shared
        cache = copy.deepcopy(best)
        _cut(cache, shared)
        return cache

    def store(self, key, ids: list[int], cache) -> None:
        """Keep `cache` (it may hold generated tokens after the prompt: they are cut off)."""
        _cut(cache, len(ids))
        self.entries = [e for e in self.entries if not (e[0] == key and e[1] == ids)][-(self.size - 1):]
        self.entries.append((key, ids, cache))

    def clear(self) -> None:
        self.entries = []


def _cut(cache, length: int) -> None:
    """Keep the first `length` positions of a KV cache (crop takes the number of positions to drop)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


class TransformersEngine(Engine):
    capabilities = Capabilities(grammar=grammar_available(), batching=True)

    """`merge_default` (default: on CPUs) keeps a copy of the base with the default adapter merged into its
    weights for the requests that use it: a LoRA adds two small matrix products to every projection of every
    token, which on a CPU costs more than the products of the merged weights. Base and other adapters still
    run on the unmerged model, so comparisons need no reload."""

    def __init__(self, model_spec: str, adapter_spec: str | None = None, *, device: str | None = None, dtype=None,
                 merge_default: bool | None = None):
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # bf16 halves the bytes read per token; on a CPU only with bf16 instructions (else it is slower than fp32)
        dtype = dtype or getattr(torch, os.environ.get("VOXQL_DTYPE") or "", None) or \
            (torch.bfloat16 if device.startswith("cuda") or cpu_has_bf16() else torch.float32)
        self.model, self.tokenizer = load_causal_lm(model_spec, device=device, dtype=dtype)
        self.device = device
        self.capabilities = dataclasses.replace(type(self).capabilities, cheap_samples=device != "cpu")
        if merge_default is None:
            merge_default = device == "cpu" and os.environ.get("VOXQL_MERGE_ADAPTER", "1") != "0"
        self.merge_default = merge_default
        self._merged: tuple[str, torch.nn.Module] | None = None  # (adapter name, base with it merged in)
        # One lock per model: adapter switching and generate() both touch shared model state, and on a CPU
        # two generations at once would only be slower than two in a row.
        self._lock = threading.Lock()
        self.prompt_cache = PromptCache(size=int(os.environ.get("VOXQL_PROMPT_CACHE", "8")))
        self.info = EngineInfo(
            model=display_name(model_spec),
            adapters={},
            default_adapter=None,
            engine=f"transformers {__import__('transformers').__version__} + PEFT",
            device=device,
            dtype=str(dtype).removeprefix("torch."),
        )
        if adapter_spec:
            self.load_adapter(adapter_spec, "default")
            self.set_default_adapter("default")

    # -- adapters -------------------------------------------------------------------------------------------
    def load_adapter(self, spec: str, name: str) -> None:
        with self._lock:
            self.model = load_adapter(self.model, spec, name)
            self.model.eval()
            self.prompt_cache.clear()  # a reloaded name may hold other weights
            self.info = dataclasses.replace(self.info, adapters={**self.info.adapters, name: spec})

    def set_default_adapter(self, name: str | None) -> None:
        self.resolve_adapter(name)  # validates
        self.info = dataclasses.replace(self.info, default_adapter=name)
        with self._lock:
            self._merged = None
            self.prompt_cache.clear()
            if self.merge_default and name is not None:
                self.model.set_adapter(name)
                self._merged = (name, copy.deepcopy(self.model).merge_and_unload(adapter_names=[name]).eval())

    @contextlib.contextmanager
    def _using(self, adapter: str | None):
        """The model to run: the merged copy for its adapter, else the PEFT model with `adapter` active (or with
        every adapter disabled for the base model)."""
        if self._merged and self._merged[0] == adapter:
            yield self._merged[1]
        elif not self.info.adapters:
            yield self.model
        elif adapter is None:
            with self.model.disable_adapter():
                yield self.model
        else:
            self.model.set_adapter(adapter)
            yield self.model

    # -- generation -----------------------------------------------------------------------------------------
    def _encode(self, conversations: list[list[Message]]):
        texts = [
            self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            for messages in conversations
        ]
        # The chat template already starts with any BOS token it needs.
        return self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)

    def _grammar(self, params: SamplingParams, rows: int) -> GrammarLogitsProcessor | None:
        if params.grammar is None:
            return None
        if not self.capabilities.grammar:
            from pipelines.errors import BadInput

            raise BadInput("constrained decoding needs llguidance: pip install llguidance")
        return GrammarLogitsProcessor(self.tokenizer, self.model.config.vocab_size, params.grammar, rows,
                                      greedy=params.greedy)

    def _generate_kwargs(self, params: SamplingParams, grammar: GrammarLogitsProcessor | None = None) -> dict:
        kwargs = dict(max_new_tokens=params.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                      return_dict_in_generate=True)
        if grammar is not None:
            kwargs["logits_processor"] = [grammar]
        if params.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=None,
                          num_return_sequences=params.n)
        return kwargs

    @contextlib.contextmanager
    def _reusing_prompt(self, model, adapter: str | None, inputs, rows: int):
        """generate() kwargs that start from a cached prefix of this prompt; afterwards the prompt's own cache is
        kept (the caller puts generate's output in the dict). Only a single unpadded row of token ids qualifies:
        padding, n samples and audio embeddings would each need the cache reshaped."""
        ids = inputs["input_ids"]
        usable = ids.shape[0] == 1 and rows == 1 and "inputs_embeds" not in inputs and self.prompt_cache.size > 0
        if not usable:
            yield {}
            return
        key, prompt = (id(model), adapter), ids[0].tolist()
        cache = self.prompt_cache.lookup(key, prompt)
        kwargs = {} if cache is None else {"past_key_values": cache}
        yield kwargs
        output = kwargs.get("output")
        if output is not None and getattr(output, "past_key_values", None) is not None:
            self.prompt_cache.store(key, prompt, output.past_key_values)

    def _finish_reason(self, new_tokens: torch.Tensor, max_new_tokens: int) -> tuple[str, int]:
        """Why a sequence ended, and how many real tokens it has (padding after EOS excluded)."""
        eos_ids = self.model.generation_config.eos_token_id
        eos_ids = set(eos_ids if isinstance(eos_ids, list) else [eos_ids]) - {None}
        for position, token in enumerate(new_tokens.tolist()):
            if token in eos_ids:
                return "stop", position + 1
        return ("length" if len(new_tokens) >= max_new_tokens else "stop"), len(new_tokens)

    def generate(self, conversations, params=SamplingParams(), *, adapter=DEFAULT_ADAPTER):
        adapter = self.resolve_adapter(adapter)
        inputs = self._encode(conversations)
        per_prompt = 1 if params.greedy else params.n
        grammar = self._grammar(params, len(conversations) * per_prompt)
        with self._lock, self._using(adapter) as model, torch.inference_mode():
            if params.seed is not None:
                torch.manual_seed(params.seed)
            with self._reusing_prompt(model, adapter, inputs, per_prompt) as cached:
                output = model.generate(**inputs, **self._generate_kwargs(params, grammar), **cached)
                cached["output"] = output
        new_tokens = output.sequences[:, inputs["input_ids"].shape[1]:]
        results: list[list[Generation]] = []
        for row, tokens in enumerate(new_tokens):
            reason, count = self._finish_reason(tokens, params.max_new_tokens)
            text = self.tokenizer.decode(tokens[:count], skip_special_tokens=True)
            if row % per_prompt == 0:
                results.append([])
            results[-1].append(Generation(text=text, completion_tokens=count, finish_reason=reason,
                                          grammar=grammar.status[row] if grammar else None))
        return results

    def stream(self, messages, params=SamplingParams(), *, adapter=DEFAULT_ADAPTER) -> TextStream:
        adapter = self.resolve_adapter(adapter)
        params = dataclasses.replace(params, n=1)
        inputs = self._encode([messages])
        grammar = self._grammar(params, 1)
        cancel = threading.Event()
        stream = TextStream(pieces=iter(()), cancel_event=cancel, prompt_tokens=inputs["input_ids"].shape[1])
        streamer = _TimedStreamer(self.tokenizer, stream, timeout=None)
        outcome: dict = {}

        def run() -> None:
            try:
                with self._lock, self._using(adapter) as model, torch.inference_mode():
                    if params.seed is not None:
                        torch.manual_seed(params.seed)
                    with self._reusing_prompt(model, adapter, inputs, 1) as cached:
                        output = model.generate(
                            **inputs, **self._generate_kwargs(params, grammar), streamer=streamer,
                            stopping_criteria=StoppingCriteriaList([_StopOnEvent(cancel)]), **cached,
                        )
                        cached["output"] = output
                outcome["tokens"] = output.sequences[0, inputs["input_ids"].shape[1]:]
            except BaseException as error:  # re-raised in the consumer's thread
                outcome["error"] = error
                streamer.end()

        def pieces():
            thread = Thread(target=run, name="voxql-generate", daemon=True)
            thread.start()
            text = []
            for piece in streamer:
                text.append(piece)
                yield piece
            thread.join()
            stream.finished_at = time.perf_counter()
            if "error" in outcome:
                raise outcome["error"]
            reason, count = self._finish_reason(outcome["tokens"], params.max_new_tokens)
            if cancel.is_set():
                reason = "cancelled"
            stream.generation = Generation(text="".join(text), completion_tokens=count, finish_reason=reason,
                                           grammar=grammar.status[0] if grammar else None)

        stream.pieces = pieces()
        return stream
