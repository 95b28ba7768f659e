"""Audio in: files and microphone chunks become mono float32 at 16 kHz, checked before any model sees them.

soundfile reads (wav, flac, ogg, mp3 with libsndfile >= 1.1), soxr resamples. torchaudio is not used: its
PyPI wheel is a CUDA build whose import fails on a CPU-only torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.errors import BadInput

SAMPLE_RATE = 16_000
# The tag adapter was trained on whole files zero-padded to at least this many samples (15.03 s at 16 kHz);
# the whole-file path does the same so the adapter sees what it learned on.
ADAPTER_MIN_SAMPLES = 240_480
# Below this peak (-60 dBFS) there is nothing to transcribe; saying so beats returning an empty transcript.
SILENCE_PEAK = 1e-3
DEFAULT_MAX_SECONDS = 300.0
SUPPORTED = "wav, flac, ogg or mp3"


def max_seconds() -> float:
    """The longest audio accepted (VOXQL_MAX_AUDIO_S, default 300 s): longer runs hold a model too long."""
    try:
        return float(os.environ.get("VOXQL_MAX_AUDIO_S") or DEFAULT_MAX_SECONDS)
    except ValueError:
        return DEFAULT_MAX_SECONDS


@dataclass(frozen=True)
class Audio:
    """Mono float32 samples in [-1, 1] at 16 kHz."""

    samples: np.ndarray
    source: str = "audio"

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def to_float32(array: np.ndarray) -> np.ndarray:
    """Integer PCM of any width (and floats) to float32 in [-1, 1]; frames x channels layout is kept."""
    array = np.asarray(array)
    if array.dtype == np.uint8:  # 8-bit PCM is unsigned, centred on 128
        return ((array.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        return (array.astype(np.float32) / float(-np.iinfo(array.dtype).min)).astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32, copy=False)
    raise BadInput(f"unsupported sample type {array.dtype}")


def to_mono(array: np.ndarray) -> np.ndarray:
    """(frames,) or (frames, channels) -> (frames,). Gradio and soundfile both put channels last."""
    if array.ndim == 1:
        return array
    if array.ndim == 2:
        # More than 8 "channels" means the array is (channels, frames): transpose it.
        if array.shape[1] > 8 and array.shape[0] <= 8:
            array = array.T
        return array.mean(axis=1, dtype=np.float32)
    raise BadInput(f"audio must be 1-D or 2-D (frames x channels), got shape {array.shape}")


def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLE_RATE or len(samples) == 0:
        return samples.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)


def from_array(rate: int, array: np.ndarray, source: str = "audio") -> Audio:
    """Any PCM array at any rate (a Gradio `(rate, data)` pair, say) as 16 kHz mono float32."""
    if not rate or rate <= 0:
        raise BadInput(f"{source}: invalid sample rate {rate}")
    return Audio(resample(to_mono(to_float32(array)), int(rate)), source)


def load_audio(path: str | Path) -> Audio:
    """Read a file; too long, unreadable or empty files raise BadInput with a one-line reason."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise BadInput(f"no such audio file: {path}")
    if path.stat().st_size == 0:
        raise BadInput(f"{path.name}: the file is empty")
    try:
        info = sf.info(str(path))
        # Check the length before decoding: a two-hour upload should not be read into memory to be refused.
        if info.frames and info.samplerate and info.frames / info.samplerate > max_seconds():
            raise BadInput(too_long_message(path.name, info.frames / info.samplerate))
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except BadInput:
        raise
    except Exception as error:  # libsndfile's errors (and mp3 decoder ones) have many types
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise BadInput(f"{path.name}: not a readable audio file ({SUPPORTED}): {reason}") from None
    return Audio(resample(to_mono(data), rate), path.name)


def too_long_message(source: str, seconds: float) -> str:
    return f"{source}: {seconds:.1f} s of audio is over the {max_seconds():.0f} s limit; cut it into shorter clips"


def validate(audio: Audio) -> Audio:
    """Refuse what no model can use: nothing, silence, or too much."""
    if len(audio.samples) == 0:
        raise BadInput(f"{audio.source}: the audio is empty")
    if not np.all(np.isfinite(audio.samples)):
        raise BadInput(f"{audio.source}: the audio contains invalid samples (NaN or infinity)")
    if audio.seconds > max_seconds():
        raise BadInput(too_long_message(audio.source, audio.seconds))
    peak = float(np.max(np.abs(audio.samples)))
    if peak < SILENCE_PEAK:
        raise BadInput(f"{audio.source}: the audio is silent (peak {20 * np.log10(max(peak, 1e-12)):.0f} dBFS)")
    return audio


def pad_for_adapter(samples: np.ndarray, minimum: int = ADAPTER_MIN_SAMPLES) -> np.ndarray:
    """Zero-pad at the end to `minimum` samples, the length the tag adapter was trained on (longer is kept)."""
    if len(samples) >= minimum:
        return samples
    return np.pad(samples, (0, minimum - len(samples))).astype(np.float32, copy=False)


class ChunkResampler:
    """Microphone chunks -> 16 kHz mono, continuous across chunks (one soxr stream per recording).

    Resampling each chunk on its own would click at every boundary; a stream keeps the filter state.
    """

    def __init__(self) -> None:
        self._rate: int | None = None
        self._stream = None

    def __call__(self, rate: int, array: np.ndarray) -> np.ndarray:
        import soxr

        if not rate or rate <= 0:
            raise BadInput(f"microphone: invalid sample rate {rate}")
        mono = to_mono(to_float32(array))
        if rate == SAMPLE_RATE:
            return mono.astype(np.float32, copy=False)
        if self._stream is None or rate != self._rate:
            self._rate = int(rate)
            self._stream = soxr.ResampleStream(self._rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        return self._stream.resample_chunk(np.ascontiguousarray(mono, dtype=np.float32))

    def flush(self) -> np.ndarray:
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        return self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
