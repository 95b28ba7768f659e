"""The Listen tab: its wiring, its handlers run directly (microphone stream, stop, file, send to Ask), and the
plain `/transcribe` endpoint through gradio_client against a launched app on localhost."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

import gradio as gr
from components.listen import (BUSY, CONCURRENCY_ID, MIC_CONCURRENCY_ID, STREAM_EVERY_S, build_listen_tab,
                               engine_markdown, highlight)
from pipelines.profiles import resolve_profile


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on shared cores: threads only thrash
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    from pipelines.speech.testing import tiny_voxtral_with_adapter

    model, adapter = tiny_voxtral_with_adapter(tmp_path_factory.getbasetemp() / "speech-models")
    return resolve_profile("gpu", asr_model=str(model), tag_adapter=str(adapter))


@pytest.fixture(scope="module")
def app(profile):
    with gr.Blocks() as demo:
        with gr.Tabs() as tabs:
            with gr.Tab("Ask your data", id="ask"):
                question = gr.Textbox(label="Question")
            with gr.Tab("Listen", id="listen"):
                build_listen_tab(profile, question, tabs)
    return demo


def handler(demo: gr.Blocks, name: str):
    matches = [f for f in demo.fns.values() if f.name == name]
    assert len(matches) == 1, name
    return matches[0]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("listen") / "clip.wav"
    audio = (np.random.default_rng(0).standard_normal(16_000) * 0.1).astype(np.float32)
    sf.write(path, audio, 16_000)
    return path


def test_highlight_labels_tags_by_category():
    spans = highlight("[whispers] Listen, [pause] I know [made up] ok")
    assert spans == [("[whispers]", "delivery"), (" Listen, ", None), ("[pause]", "pause"), (" I know ", None),
                     ("[made up]", "other"), (" ok", None)]
    assert highlight("") == []


def test_engine_line_before_loading_says_lazily(profile):
    line = engine_markdown(profile, None)
    assert "loads on first use" in line and profile.tag_adapter in line


def test_wiring(app):
    stream = handler(app, "on_chunk")
    assert stream.stream_every == STREAM_EVERY_S and stream.concurrency_id == MIC_CONCURRENCY_ID
    assert stream.concurrency_limit is None  # a stream holds its slot while recording: no cap on recordings
    assert handler(app, "on_stop").concurrency_id != CONCURRENCY_ID
    file_event = handler(app, "on_file")
    assert file_event.api_name == "transcribe" and file_event.concurrency_id == CONCURRENCY_ID


def stop(on_stop, live, profile):
    """Run the stop generator to its end: (progress updates, final outputs)."""
    updates = list(on_stop(live, profile))
    return updates[:-1], updates[-1]


def test_microphone_stream_then_stop_for_two_users(app, profile):
    on_start, on_chunk, on_stop = (handler(app, name).fn for name in ("on_start", "on_chunk", "on_stop"))
    rng = np.random.default_rng(1)
    sessions = {user: on_start(None, True, 2, profile)[0] for user in "ab"}
    for _ in range(3):  # two users' chunks interleaved, each with its own state
        for user in sessions:
            chunk = (rng.standard_normal((24_000, 2)) * 3000).astype(np.int16)  # 0.5 s of 48 kHz stereo
            spans, status, sessions[user] = on_chunk((48_000, chunk), sessions[user], True, 2, profile)
            assert status.startswith("Live… received") and isinstance(spans, list)
    assert sessions["a"] is not sessions["b"]
    for user, live in sessions.items():
        assert live.status().received_s == pytest.approx(1.5)  # every chunk arrived, whatever the worker did
        _, (spans, status, result, text, engine_line) = stop(on_stop, live, profile)
        assert status.startswith("Done") and "received 1.5 s" in status and "p95" in status
        assert result["partial"] is False and result["timings"]["audio_s"] == pytest.approx(1.5, abs=0.05)
        assert result["timings"]["handler_chunks"] == 3 and text == result["text"]
        assert "device" in engine_line


def test_silent_recording_gives_a_message_not_a_traceback(app, profile):
    on_chunk, on_stop = handler(app, "on_chunk").fn, handler(app, "on_stop").fn
    _, _, live = on_chunk((48_000, np.zeros(24_000, dtype=np.int16)), None, True, 2, profile)
    _, (_, status, *_rest) = stop(on_stop, live, profile)
    assert "silent" in status
    on_chunk((48_000, np.ones(4_800, dtype=np.int16)), live, True, 2, profile)  # after stop: not taken
    assert live.status().received_s == pytest.approx(0.5)


def test_record_while_the_last_recording_is_finishing_is_refused(app, profile):
    on_start, on_chunk, on_stop = (handler(app, name).fn for name in ("on_start", "on_chunk", "on_stop"))
    live = on_start(None, True, 2, profile)[0]
    on_chunk((16_000, (np.random.default_rng(2).standard_normal(16_000) * 3000).astype(np.int16)), live, True, 2,
             profile)
    with get_engine_lock(profile):  # the model is busy: the stopped recording cannot finish yet
        live.stop()
        state, _, status = on_start(live, True, 2, profile)
        assert state is live and status == BUSY
        on_chunk((16_000, np.ones(1_600, dtype=np.int16)), live, True, 2, profile)  # ignored, not queued
    _, (_, status, result, *_rest) = stop(on_stop, live, profile)
    assert status.startswith("Done") and result["timings"]["received_s"] == pytest.approx(1.0)
    assert on_start(live, True, 2, profile)[0] is not live  # once it is done, a new recording starts


def get_engine_lock(profile):
    from pipelines.speech.transcribe import get_speech_engine

    return get_speech_engine(profile, fallback=True).backend.lock


def test_file_handler_and_its_errors(app, profile, clip, tmp_path):
    on_file = handler(app, "on_file").fn
    spans, result, status, text = on_file(str(clip), True, 1, profile)
    assert result["tag_channel"] == "on" and len(result["tags_filtered"]) <= 1 and text == result["text"]
    assert ("[whispers]", "delivery") in spans  # the tiny adapter's taught tag, highlighted
    assert status.startswith("Done")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    _, result, status, _ = on_file(str(bad), True, 2, profile)
    assert result is None and "not a readable audio file" in status
    assert "upload or record" in on_file(None, True, 2, profile)[2]


def test_send_to_ask_switches_tabs(app):
    to_ask = handler(app, "to_ask").fn
    question, tabs, _ = to_ask("  how many customers are there  ")
    assert question == "how many customers are there"
    assert isinstance(tabs, gr.Tabs) and tabs.selected == "ask"
    assert "no transcript" in to_ask("")[2]


def test_transcribe_endpoint_through_gradio_client(app, clip):
    from gradio_client import Client, handle_file

    app.queue(default_concurrency_limit=2)
    _, url, _ = app.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False)
        spans, result, status = client.predict(handle_file(str(clip)), True, 2, api_name="/transcribe")
        assert {"text", "tags", "tags_filtered", "merged", "timings"} <= set(result)
        assert status.startswith("Done")
    finally:
        app.close()


def test_cpu_profile_says_the_tag_channel_is_unavailable_before_loading():
    from pipelines.speech.transcribe import TAGS_NEED_VOXTRAL

    line = engine_markdown(resolve_profile("cpu", asr_model="embedded:whisper-tiny.en"), None)
    assert "Tag channel unavailable" in line and "Voxtral tag adapter" in line and TAGS_NEED_VOXTRAL
