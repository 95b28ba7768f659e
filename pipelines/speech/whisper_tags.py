"""The cpu profile's tag channel: Whisper tiny.en (converted to transformers) + a tags-only LoRA.

The adapter writes the transcript in the seed's format, `[whispers] keep it down` or `I think [pause] we should
go`. The words shown come from the ASR channel (faster-whisper: the same weights, int8, faster); this channel
contributes the tags. A tag's time is that of the ASR word at the same word position as in the tag text
(Whisper's timestamp tokens mark segments, not words), so the merge puts `[pause]` before the word after it.

The same `sample` serves the Listen tab (greedy, one hypothesis) and RAFT (n hypotheses per clip, sampled with
temperature and top-p), so training generates exactly as the app does.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines.errors import ModelNotAvailable
from pipelines.speech.audio import SAMPLE_RATE
from pipelines.speech.channels import ChannelOutput
from pipelines.speech.merge import Word, words_with_times
from pipelines.speech.tags import TAG_PATTERN, parse_tags

# The encoder hears 15 s instead of Whisper's 30 s: a third of the cost (attention is quadratic), and the adapter
# is trained and run on the same window. Recordings go in 12 s pieces, so every window keeps >= 3 s of padding
# (with less, Whisper began repeating itself on short windows; see whisper_asr.LIVE_CONTEXT_*).
ENCODER_WINDOW_S = 15
PIECE_S = 12
MAX_NEW_TOKENS = 96  # a 12 s piece holds about 50 tokens of speech; a looping decoder stops here
# Whisper's generation config suppresses bracket tokens (it would write "[Music]"); tags are written with them.
BRACKET_TOKENS = {"[", "]", "Ġ[", "Ġ]"}


@dataclass
class Hypothesis:
    """One generated transcript: its text, and the log-probability and characters of each token."""

    text: str
    logprobs: list[float] = field(default_factory=list)
    owners: list[int] = field(default_factory=list)  # for each character of `text`, the token that wrote it


def load_whisper_with_adapter(adapter: str | Path | None, *, merge: bool, trainable: bool = False):
    """(model, processor pieces) of the converted Whisper, with `adapter` on it (merged into the weights when
    `merge`, which is faster to run but cannot be trained further)."""
    import torch
    from transformers import AutoTokenizer, WhisperFeatureExtractor, WhisperForConditionalGeneration

    from pipelines.speech.whisper_hf import embedded_whisper_hf_dir

    base = embedded_whisper_hf_dir()
    model = WhisperForConditionalGeneration.from_pretrained(base, dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        folder = Path(adapter).expanduser()
        if not (folder / "adapter_config.json").is_file():
            raise ModelNotAvailable(f"tag adapter {folder.name!r} is not a PEFT adapter folder "
                                    "(no adapter_config.json)")
        model = PeftModel.from_pretrained(model, str(folder), is_trainable=trainable)
        if merge:
            model = model.merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(base)
    if adapter:
        brackets = set(tokenizer.convert_tokens_to_ids(sorted(BRACKET_TOKENS)))
        generation = model.generation_config
        generation.suppress_tokens = [t for t in generation.suppress_tokens if t not in brackets]
        generation.max_length = None  # max_new_tokens bounds a decode (both set: a warning per call)
    shorten_encoder(model, ENCODER_WINDOW_S)
    model.train(trainable)
    return model, tokenizer, WhisperFeatureExtractor.from_pretrained(base, chunk_length=ENCODER_WINDOW_S)


def shorten_encoder(model, seconds: int) -> None:
    """Make the encoder take `seconds` of audio (Whisper's positions are fixed sinusoids: the first ones)."""
    import torch

    encoder = model.get_encoder()
    positions = seconds * 50  # 100 mel frames per second, halved by the second convolution
    if encoder.embed_positions.weight.shape[0] == positions:
        return
    weight = encoder.embed_positions.weight.data[:positions].clone()
    encoder.embed_positions = torch.nn.Embedding.from_pretrained(weight, freeze=True)
    encoder.config.max_source_positions = positions


def input_features(feature_extractor, clips: list[np.ndarray]):
    """Log-mel features, padded to the encoder's window, as one batch."""
    return feature_extractor([np.asarray(c, dtype=np.float32) for c in clips], sampling_rate=SAMPLE_RATE,
                             return_tensors="pt").input_features


def decode_with_owners(tokenizer, ids: list[int]) -> tuple[str, list[int]]:
    """Text of the tokens (special ones skipped) and, per character, the index of the token that completed it."""
    text, owners = "", []
    kept: list[int] = []
    for index, token_id in enumerate(ids):
        if token_id >= tokenizer.eos_token_id:  # special and timestamp tokens
            continue
        kept.append(token_id)
        decoded = tokenizer.decode(kept)
        if len(decoded) > len(text) and decoded.startswith(text):
            owners += [index] * (len(decoded) - len(text))
            text = decoded
    left = len(text) - len(text.lstrip())
    stripped = text.strip()
    return stripped, owners[left:left + len(stripped)]


class SuppressTokens:
    """Whisper's token suppression as two precomputed masks (transformers' processor runs `torch.isin` over the
    vocabulary at every step: a third of a CPU decode step here)."""

    def __init__(self, generation_config, vocab_size: int, prompt_length: int = 2):
        import torch

        self.always = torch.zeros(vocab_size, dtype=torch.bool)
        self.always[list(generation_config.suppress_tokens or [])] = True
        self.at_start = self.always.clone()
        self.at_start[list(generation_config.begin_suppress_tokens or [])] = True
        self.prompt_length = prompt_length

    def __call__(self, input_ids, scores):
        mask = self.at_start if input_ids.shape[1] == self.prompt_length else self.always
        return scores.masked_fill(mask[:scores.shape[-1]], float("-inf"))


class WhisperTagChannel:
    def __init__(self, adapter: str | Path):
        self.adapter = str(adapter)
        self.model, self.tokenizer, self.feature_extractor = load_whisper_with_adapter(adapter, merge=True)
        self.lock = threading.Lock()  # one decode at a time: concurrent ones only fight for the cores
        self.suppress = SuppressTokens(self.model.generation_config, len(self.tokenizer))

    def sample(self, clips: list[np.ndarray], n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
               seed: int | None = None) -> list[list[Hypothesis]]:
        """n hypotheses per clip, in one generate call. temperature 0 is greedy (then n must be 1)."""
        import torch

        if temperature <= 0 and n != 1:
            raise ValueError("several hypotheses need temperature > 0")
        from transformers import GenerationMixin
        from transformers.modeling_outputs import BaseModelOutput

        from pipelines.speech.whisper_hf import ENGLISH_SPECIAL_IDS

        features = input_features(self.feature_extractor, clips)
        options = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else \
            {"do_sample": False}
        with self.lock, torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            # The encoder runs once per clip; its output is repeated for the n samples. (Whisper's own generate
            # repeats the audio and encodes every copy: four times the cost for RAFT's four samples.) Suppression
            # is SuppressTokens, in place of the config's.
            encoded = self.model.get_encoder()(features).last_hidden_state.repeat_interleave(n, dim=0)
            prompt = torch.tensor([[ENGLISH_SPECIAL_IDS["start"], ENGLISH_SPECIAL_IDS["no_timestamps"]]]
                                  * encoded.shape[0])
            output = GenerationMixin.generate(
                self.model, encoder_outputs=BaseModelOutput(last_hidden_state=encoded), decoder_input_ids=prompt,
                max_new_tokens=MAX_NEW_TOKENS, output_scores=True, return_dict_in_generate=True,
                suppress_tokens=None, begin_suppress_tokens=None, logits_processor=[self.suppress], **options)
            # Log-probabilities of the chosen tokens under the distribution they were drawn from.
            scores = self.model.compute_transition_scores(output.sequences, output.scores, normalize_logits=True)
        prompt_length = output.sequences.shape[1] - scores.shape[1]
        hypotheses = []
        for row, sequence in enumerate(output.sequences.tolist()):
            generated = sequence[prompt_length:]
            text, owners = decode_with_owners(self.tokenizer, generated)
            hypotheses.append(Hypothesis(text, [float(v) for v in scores[row].tolist()], owners))
        return [hypotheses[i * n:(i + 1) * n] for i in range(len(clips))]

    def channel(self, samples: np.ndarray, asr_words: list[Word]) -> ChannelOutput:
        """The tag channel's output for one recording, its tags timed by the ASR words. A recording longer than
        PIECE_S is tagged piece by piece (in one batch), each piece against the words spoken in it."""
        started = time.perf_counter()
        window = PIECE_S * SAMPLE_RATE
        firsts = range(0, max(1, len(samples)), window)
        groups = self.sample([samples[first:first + window] for first in firsts])  # one batch
        texts, mentions = [], []
        for first, (hypothesis,) in zip(firsts, groups):
            begin, end = first / SAMPLE_RATE, (first + window) / SAMPLE_RATE
            words = [w for w in asr_words if w.start is None or begin <= w.start < end]
            piece = channel_output(hypothesis, words, 0.0)
            offset = sum(len(t) + 1 for t in texts)
            for mention in piece.mentions:
                mention.start, mention.end = mention.start + offset, mention.end + offset
            texts.append(piece.text)
            mentions += piece.mentions
        text = " ".join(texts)
        masked = TAG_PATTERN.sub(lambda m: " " * len(m.group()), text)
        return ChannelOutput(text=text, words=words_with_times(masked), mentions=mentions,
                             elapsed_ms=(time.perf_counter() - started) * 1000)


class TaggedWhisperStream:
    """A live Whisper stream (words while speaking) whose final result also has the tag channel's output.

    Tags are not computed on partial updates: a second decode of the growing window would halve the rate at
    which words appear. At Stop the whole recording goes through the tag channel once."""

    def __init__(self, words_stream, tag_channel: WhisperTagChannel):
        self.words_stream, self.tag_channel = words_stream, tag_channel
        self._audio: list[np.ndarray] = []

    def __getattr__(self, name):  # seconds_recognised, decode_log, ... of the words stream
        return getattr(self.words_stream, name)

    def feed(self, samples: np.ndarray) -> None:
        self._audio.append(np.asarray(samples, dtype=np.float32))
        self.words_stream.feed(samples)

    def outputs(self) -> list[ChannelOutput]:
        return self.words_stream.outputs()

    def finish(self) -> list[ChannelOutput]:
        (asr,) = self.words_stream.finish()
        audio = np.concatenate(self._audio) if self._audio else np.zeros(0, dtype=np.float32)
        return [asr, self.tag_channel.channel(audio, asr.words)]


_channels: dict[str, WhisperTagChannel] = {}
_channels_lock = threading.Lock()


def get_whisper_tag_channel(adapter: str) -> WhisperTagChannel:
    """The tag channel for `adapter`, loaded once and shared by every user."""
    with _channels_lock:
        if adapter not in _channels:
            _channels[adapter] = WhisperTagChannel(adapter)
        return _channels[adapter]


def channel_output(hypothesis: Hypothesis, asr_words: list[Word], elapsed_ms: float) -> ChannelOutput:
    text = hypothesis.text
    mentions = parse_tags(text)
    for mention in mentions:
        tokens = sorted({hypothesis.owners[i] for i in range(mention.start, min(mention.end, len(hypothesis.owners)))})
        mention.logprobs = [hypothesis.logprobs[i] for i in tokens if i < len(hypothesis.logprobs)]
        mention.time = word_time(asr_words, len(TAG_PATTERN.sub(" ", text[:mention.start]).split()))
    masked = TAG_PATTERN.sub(lambda m: " " * len(m.group()), text)
    return ChannelOutput(text=text, words=words_with_times(masked), mentions=mentions, elapsed_ms=elapsed_ms)


def word_time(words: list[Word], index: int) -> float | None:
    """The start of the ASR word at `index` (the last word's for a tag after the last word); None untimed."""
    if not words:
        return None
    word = words[min(index, len(words) - 1)]
    if word.start is None:
        return None
    return word.start + (0.01 if index >= len(words) else 0.0)  # after the last word: still placed before it
