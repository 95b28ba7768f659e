"""Ultravox: a speech-in LLM (Whisper encoder -> projector -> a Llama-family LM), in the v0.4 checkpoint layout.

A spoken question goes straight into the language model: the Whisper encoder hears it, every 8 encoder frames
are stacked into one vector (one LLM token per 160 ms of audio), and the projector maps those vectors into the
LM's embedding space, where they take the place of `<|audio|>` in the prompt. The LM then answers as it would
to typed text, so the SQL adapter trained on typed questions runs on it unchanged.

The checkpoint layout is `fixie-ai/ultravox-v0_4`'s: `config.json` names the two base models
(`audio_model_id`, `text_model_id`) and the projector's shape; the weights file holds only
`multi_modal_projector.*` (the bases stay frozen and are loaded from their own folders or Hub ids):

    projector = stack 8 frames -> ln_pre (RMSNorm) -> linear_1 -> SwiGLU (halves the width) -> linear_2 -> ln_post

transformers has no Ultravox class (the Hub repo runs remote code), hence this one. Model ids may be mapped to
local folders (`model_paths=`), so the real layout loads offline once its bases are on disk.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from pipelines.errors import BadInput, ModelNotAvailable

AUDIO_MARKER = "<|audio|>"  # where the audio embeddings go in the prompt
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PROJECTOR_PREFIX = "multi_modal_projector."
MAX_AUDIO_S = 30  # the Whisper encoder's positions cover 30 s


@dataclass
class UltravoxConfig:
    """The fields of an Ultravox `config.json` that define the model (others are kept but unused here)."""

    audio_model_id: str
    text_model_id: str
    hidden_size: int  # linear_1's output width (SwiGLU halves it)
    stack_factor: int = 8
    projector_act: str = "swiglu"
    norm_init: float = 0.4  # the RMSNorms' initial scale

    @classmethod
    def read(cls, folder: Path) -> UltravoxConfig:
        path = folder / CONFIG_FILE
        if not path.is_file():
            raise ModelNotAvailable(f"{folder} is not an Ultravox checkpoint (no {CONFIG_FILE})")
        data = json.loads(path.read_text())
        if data.get("model_type") != "ultravox":
            raise ModelNotAvailable(f"{folder} is not an Ultravox checkpoint (model_type {data.get('model_type')!r})")
        if data.get("projector_act", "swiglu") != "swiglu":
            raise ModelNotAvailable(f"projector activation {data['projector_act']!r} is not supported (only swiglu)")
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})

    def write(self, folder: Path) -> None:
        data = {"model_type": "ultravox", "architectures": ["UltravoxModel"], **asdict(self)}
        (folder / CONFIG_FILE).write_text(json.dumps(data, indent=2) + "\n")


def checkpoint_folder(spec: str | Path) -> Path:
    """A local Ultravox folder, or a Hub id's snapshot (downloaded where the Hub can be reached)."""
    folder = Path(spec).expanduser()
    if folder.is_dir():
        return folder
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(spec), allow_patterns=[CONFIG_FILE, WEIGHTS_FILE]))
    except Exception:  # offline, unknown id, no token: all mean the same to the user
        raise ModelNotAvailable(f"the Ultravox checkpoint {spec!r} is not available here (no such folder, and the "
                                "Hugging Face Hub cannot be reached)") from None


def is_ultravox(spec: str) -> bool:
    """Whether a model spec names an Ultravox checkpoint: a folder whose config says so, or a Hub id of one
    (`fixie-ai/ultravox-v0_4`), which is loaded only where the Hub can be reached."""
    config = Path(spec).expanduser() / CONFIG_FILE
    if config.is_file():
        return json.loads(config.read_text()).get("model_type") == "ultravox"
    return not Path(spec).expanduser().exists() and "/ultravox" in spec.lower()


class UltravoxProjector(torch.nn.Module):
    """Stacked encoder frames -> LM embeddings (module names as in the checkpoint)."""

    def __init__(self, config: UltravoxConfig, audio_width: int, text_width: int):
        super().__init__()
        self.stack_factor = config.stack_factor
        stacked = audio_width * config.stack_factor
        self.ln_pre = torch.nn.RMSNorm(stacked, eps=1e-6)
        self.linear_1 = torch.nn.Linear(stacked, config.hidden_size, bias=False)
        self.linear_2 = torch.nn.Linear(config.hidden_size // 2, text_width, bias=False)
        self.ln_post = torch.nn.RMSNorm(text_width, eps=1e-6)
        for norm in (self.ln_pre, self.ln_post):
            torch.nn.init.constant_(norm.weight, config.norm_init)

    def stack(self, frames):
        """[batch, frames, width] -> [batch, ceil(frames / k), k * width], zero-padding the last group."""
        batch, length, width = frames.shape
        padded = -(-length // self.stack_factor) * self.stack_factor
        frames = torch.nn.functional.pad(frames, (0, 0, 0, padded - length))
        return frames.reshape(batch, padded // self.stack_factor, width * self.stack_factor)

    def forward(self, frames):
        hidden = self.linear_1(self.ln_pre(self.stack(frames)))
        gate, value = hidden.chunk(2, dim=-1)
        return self.ln_post(self.linear_2(torch.nn.functional.silu(gate) * value))


def encode_frames(encoder, features):
    """Whisper encoder on log-mel `features` [batch, mels, T] with T <= 3000 (under 30 s). transformers'
    WhisperEncoder insists on exactly 30 s; Ultravox's runs on the real length, which is what it was trained on
    and what keeps a 3 s question at 19 LLM tokens instead of 188."""
    hidden = torch.nn.functional.gelu(encoder.conv1(features))
    hidden = torch.nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
    hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
    for layer in encoder.layers:
        hidden = layer(hidden, attention_mask=None)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return encoder.layer_norm(hidden)


class UltravoxAudio:
    """The audio half of an Ultravox: feature extractor, frozen Whisper encoder and the projector.
    `embed(clip)` gives the rows that replace `<|audio|>`; `language_model` names the LM to load beside it."""

    def __init__(self, folder: str | Path, *, model_paths: dict[str, str] | None = None, device: str = "cpu",
                 dtype=None, projector_weights: bool = True):
        from transformers import WhisperFeatureExtractor, WhisperModel

        self.folder = checkpoint_folder(folder)
        self.config = UltravoxConfig.read(self.folder)
        audio_path = base_model_path(self.config.audio_model_id, model_paths)
        self.language_model = base_model_path(self.config.text_model_id, model_paths, text=True)
        try:
            whisper = WhisperModel.from_pretrained(audio_path, dtype=torch.float32)
            self.feature_extractor = WhisperFeatureExtractor.from_pretrained(audio_path)
        except (OSError, ValueError):
            raise ModelNotAvailable(f"Ultravox's audio model {self.config.audio_model_id!r} is not available "
                                    "offline: download it, or map it to a folder") from None
        self.encoder = whisper.get_encoder().eval().requires_grad_(False)
        self.dtype = dtype or torch.float32
        text_width = _text_hidden_size(self.language_model)
        self.projector = UltravoxProjector(self.config, whisper.config.d_model, text_width)
        if projector_weights:
            self.projector.load_state_dict(read_projector(self.folder))
        self.encoder.to(device)
        self.projector.to(device=device, dtype=self.dtype).eval()
        self.device = device

    def features(self, clip: np.ndarray):
        """Log-mel features of the clip's real length (no 30 s padding), an even number of frames."""
        from pipelines.speech.audio import SAMPLE_RATE

        seconds = len(clip) / SAMPLE_RATE
        if seconds > MAX_AUDIO_S:
            raise BadInput(f"a spoken question is at most {MAX_AUDIO_S} s long; this one is {seconds:.1f} s")
        features = self.feature_extractor(np.asarray(clip, dtype=np.float32), sampling_rate=SAMPLE_RATE,
                                          return_tensors="pt", padding="longest").input_features
        return features[..., : features.shape[-1] // 2 * 2].to(self.device)

    def frames(self, clip: np.ndarray):
        """The frozen encoder's output for one clip: [1, frames, d_audio] (cacheable: no gradients)."""
        with torch.no_grad():
            return encode_frames(self.encoder, self.features(clip))

    def embed(self, clip: np.ndarray):
        """[tokens, text hidden] rows for `<|audio|>` (one per 160 ms)."""
        return self.projector(self.frames(clip).to(self.dtype))[0]


def audio_token_count(samples: int, stack_factor: int = 8) -> int:
    """LLM tokens for a clip of `samples` at 16 kHz: 100 mel frames/s, halved by the encoder, then stacked."""
    frames = samples // 160 // 2 * 2 // 2
    return -(-frames // stack_factor)


def splice_audio(tokenizer, embed_tokens, prompts: list[str], audio_rows: list, *, pad_id: int | None = None):
    """Prompts with one `<|audio|>` each (rendered chat text) and their audio rows -> a left-padded batch:
    (input_ids with pad ids where the audio sits, attention_mask, inputs_embeds). Used by generation and by
    projector training alike, so both see the same layout."""
    pad_id = tokenizer.pad_token_id if pad_id is None else pad_id
    rows = []
    for prompt, audio in zip(prompts, audio_rows, strict=True):
        if prompt.count(AUDIO_MARKER) != 1:
            raise ValueError(f"a spoken prompt needs exactly one {AUDIO_MARKER}")
        before, after = prompt.split(AUDIO_MARKER)
        ids_before = tokenizer(before, add_special_tokens=False, return_tensors="pt").input_ids[0]
        ids_after = tokenizer(after, add_special_tokens=False, return_tensors="pt").input_ids[0]
        ids = torch.cat([ids_before, torch.full((audio.shape[0],), pad_id, dtype=torch.long), ids_after])
        embeds = torch.cat([embed_tokens(ids_before.to(audio.device)), audio.to(embed_tokens.weight.dtype),
                            embed_tokens(ids_after.to(audio.device))])
        rows.append((ids, embeds))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    embeds = torch.zeros((len(rows), width, rows[0][1].shape[-1]), dtype=rows[0][1].dtype, device=rows[0][1].device)
    for row, (ids, row_embeds) in enumerate(rows):
        input_ids[row, width - len(ids):] = ids
        mask[row, width - len(ids):] = 1
        embeds[row, width - len(ids):] = row_embeds
    device = embed_tokens.weight.device
    return input_ids.to(device), mask.to(device), embeds


# -- checkpoint files -----------------------------------------------------------------------------------------------
def read_projector(folder: Path) -> dict:
    from safetensors.torch import load_file

    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelNotAvailable(f"{folder} has no {WEIGHTS_FILE} (the projector's weights)")
    state = load_file(str(weights))
    projector = {key.removeprefix(PROJECTOR_PREFIX): value for key, value in state.items()
                 if key.startswith(PROJECTOR_PREFIX)}
    if not projector:
        raise ModelNotAvailable(f"{weights} holds no {PROJECTOR_PREFIX}* weights")
    return projector


def save_ultravox(folder: str | Path, config: UltravoxConfig, projector) -> Path:
    """Write config.json + model.safetensors (projector only), the v0.4 layout."""
    from safetensors.torch import save_file

    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    config.write(folder)
    save_file({PROJECTOR_PREFIX + key: value.detach().contiguous().cpu()
               for key, value in projector.state_dict().items()}, str(folder / WEIGHTS_FILE))
    return folder


def base_model_path(model_id: str, model_paths: dict[str, str] | None, *, text: bool = False) -> str:
    """Where a base model named by the config is: `model_paths` first (Hub ids mapped to local folders), then
    the embedded models (the small Ultravox names `embedded:whisper-tiny.en` and `embedded:smollm2`)."""
    if model_paths and model_id in model_paths:
        return model_paths[model_id]
    if model_id == "embedded:whisper-tiny.en" and not text:
        from pipelines.speech.whisper_hf import embedded_whisper_hf_dir

        return str(embedded_whisper_hf_dir())
    return model_id  # a folder, a Hub id, or an embedded LM name the text engine resolves


def _text_hidden_size(spec: str) -> int:
    from transformers import AutoConfig

    from pipelines.engine.loading import resolve_model_path

    try:
        return AutoConfig.from_pretrained(resolve_model_path(spec)).hidden_size
    except (OSError, ValueError):
        raise ModelNotAvailable(f"Ultravox's language model {spec!r} is not available offline") from None
