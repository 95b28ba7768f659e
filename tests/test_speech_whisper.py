"""The CPU profile: Whisper tiny.en (embedded, CTranslate2) through faster-whisper, on a clip spoken by
espeak-ng. The tag channel must say it needs the Voxtral adapter rather than invent tags."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from pipelines.profiles import resolve_profile
from pipelines.speech.metrics import wer
from pipelines.speech.session import ListenSession
from pipelines.speech.transcribe import TAGS_NEED_ADAPTER, get_speech_engine, transcribe_file

SENTENCE = "How many customers placed an order last month?"


@pytest.fixture(scope="module")
def spoken_clip(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng): no clip to transcribe")
    path = tmp_path_factory.mktemp("speech") / "question.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(path), SENTENCE], check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def cpu_profile():
    return resolve_profile("cpu", asr_model="embedded:whisper-tiny.en", tag_adapter="none")


def test_whisper_transcribes_the_spoken_question(spoken_clip, cpu_profile):
    result = transcribe_file(spoken_clip, cpu_profile).to_dict()
    assert result["asr_model"].startswith("Whisper tiny.en")
    assert wer(SENTENCE, result["text"]) < 0.5  # synthetic speech, tiny model: close, not exact
    assert result["tags"] == [] and result["tags_filtered"] == [] and result["merged"] == result["text"]
    assert result["tag_channel"] == TAGS_NEED_ADAPTER
    starts = [w["start"] for w in result["words"]]
    assert starts == sorted(starts) and starts[-1] < result["timings"]["audio_s"]


def wait_for_worker(session, timeout=60.0):
    """Until the worker has taken everything in (as a browser that sends in real time would see it)."""
    import time

    deadline = time.monotonic() + timeout
    while session.has_work() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_whisper_live_session_from_48k_chunks(spoken_clip, cpu_profile):
    import soxr

    audio, rate = sf.read(spoken_clip, dtype="float32")
    mic = (soxr.resample(audio, rate, 48_000) * 32767).astype(np.int16)
    session = ListenSession(get_speech_engine(cpu_profile), tags=True)
    step = 24_000  # 0.5 s, as the browser sends it
    partials = []
    for i in range(0, len(mic), step):
        session.receive(48_000, mic[i:i + step])
        wait_for_worker(session)
        partials.append(session.status().transcript)
    assert all(p is None or p.partial for p in partials)
    assert any(p is not None and p.text for p in partials)  # words appear while "speaking"
    final = session.finish(timeout=120)
    assert not final.partial and wer(SENTENCE, final.text) < 0.5
    assert final.tag_channel == TAGS_NEED_ADAPTER
