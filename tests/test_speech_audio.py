"""Audio in: formats, rates, channels, bit depths, microphone chunks, and clear refusals of bad input."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from pipelines.__main__ import main
from pipelines.errors import BadInput
from pipelines.speech.audio import (ADAPTER_MIN_SAMPLES, SAMPLE_RATE, ChunkResampler, from_array, load_audio,
                                    pad_for_adapter, validate)


def tone(seconds: float, rate: int, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("suffix,subtype", [(".wav", "PCM_16"), (".flac", "PCM_16"), (".ogg", "VORBIS"),
                                            (".mp3", "MPEG_LAYER_III")])
def test_formats_load_as_16k_mono(tmp_path, suffix, subtype):
    if suffix == ".mp3" and "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile has no mp3 support")
    path = tmp_path / f"clip{suffix}"
    sf.write(path, tone(1.0, 22_050), 22_050, subtype=subtype)
    audio = load_audio(path)
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert audio.seconds == pytest.approx(1.0, abs=0.06)  # mp3 adds encoder padding
    validate(audio)


def test_stereo_44k_becomes_mono_16k(tmp_path):
    left, right = tone(2.0, 44_100, 440), tone(2.0, 44_100, 440)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 44_100, subtype="PCM_16")
    audio = load_audio(path)
    assert len(audio.samples) == 2 * SAMPLE_RATE
    assert np.max(np.abs(audio.samples)) == pytest.approx(0.5, abs=0.02)


def test_opposite_channels_average_to_silence_and_are_refused(tmp_path):
    wave = tone(1.0, 16_000)
    path = tmp_path / "phase.wav"
    sf.write(path, np.stack([wave, -wave], axis=1), 16_000, subtype="FLOAT")
    with pytest.raises(BadInput, match="silent"):
        validate(load_audio(path))


def test_8_bit_wav_is_read_at_the_right_scale(tmp_path):
    path = tmp_path / "u8.wav"
    sf.write(path, tone(1.0, 8_000, amplitude=0.5), 8_000, subtype="PCM_U8")
    audio = validate(load_audio(path))
    assert audio.seconds == pytest.approx(1.0, abs=0.01)
    assert np.max(np.abs(audio.samples)) == pytest.approx(0.5, abs=0.05)


def test_empty_file_and_empty_audio(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(BadInput, match="empty"):
        load_audio(empty)
    no_frames = tmp_path / "noframes.wav"
    sf.write(no_frames, np.zeros(0, dtype=np.float32), 16_000)
    with pytest.raises(BadInput, match="empty"):
        validate(load_audio(no_frames))


def test_silent_audio_is_refused(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(16_000, dtype=np.float32), 16_000)
    with pytest.raises(BadInput, match="silent"):
        validate(load_audio(path))


def test_corrupt_file_is_refused(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEthis is not audio at all" * 10)
    with pytest.raises(BadInput, match="not a readable audio file"):
        load_audio(path)
    with pytest.raises(BadInput, match="no such audio file"):
        load_audio(tmp_path / "missing.wav")


def test_ten_minutes_is_refused_before_decoding(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(600 * 1_000, dtype=np.int16), 1_000, subtype="PCM_16")  # 10 min at 1 kHz: small
    with pytest.raises(BadInput, match="over the 300 s limit"):
        load_audio(path)


def test_limit_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("VOXQL_MAX_AUDIO_S", "1")
    with pytest.raises(BadInput, match="limit"):
        validate(from_array(16_000, tone(2.0, 16_000)))


@pytest.mark.parametrize("dtype,scale", [(np.int16, 32767), (np.int32, 2**31 - 1), (np.float32, 1.0)])
def test_microphone_arrays(dtype, scale):
    stereo = np.stack([tone(0.5, 48_000), tone(0.5, 48_000)], axis=1)
    data = (stereo * scale).astype(dtype)
    audio = from_array(48_000, data)
    assert len(audio.samples) == 8_000
    assert np.max(np.abs(audio.samples)) == pytest.approx(0.5, abs=0.02)


def test_chunk_resampler_is_continuous():
    wave = tone(1.0, 48_000, freq=300)
    whole = from_array(48_000, (wave * 32767).astype(np.int16)).samples
    resampler = ChunkResampler()
    pieces = [resampler(48_000, (wave[i:i + 4_800] * 32767).astype(np.int16)) for i in range(0, len(wave), 4_800)]
    streamed = np.concatenate([*pieces, resampler.flush()])
    assert abs(len(streamed) - len(whole)) <= 2
    n = min(len(streamed), len(whole)) - 200
    assert np.max(np.abs(streamed[200:n] - whole[200:n])) < 0.01  # no clicks at chunk boundaries
    with pytest.raises(BadInput):
        resampler(0, wave)


def test_pad_for_adapter():
    short = pad_for_adapter(np.ones(1_000, dtype=np.float32))
    assert len(short) == ADAPTER_MIN_SAMPLES == 240_480
    assert short[:1_000].sum() == 1_000 and short[1_000:].sum() == 0
    long = np.ones(ADAPTER_MIN_SAMPLES + 5, dtype=np.float32)
    assert pad_for_adapter(long) is long


def test_transcribe_command_refuses_bad_audio_in_one_line(tmp_path, capsys):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(16_000, dtype=np.float32), 16_000)
    assert main(["transcribe", "--audio", str(path), "--profile", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "silent" in err and "\n" not in err
    assert main(["transcribe", "--audio", str(tmp_path / "nope.wav")]) == 1
    assert "no such audio file" in capsys.readouterr().err
