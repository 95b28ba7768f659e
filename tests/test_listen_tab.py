"""The Listen tab: its wiring, its handlers run directly (microphone start, chunks through the transport, refresh,
stop, file, send to Ask), and the plain `/transcribe` endpoint through gradio_client against a launched app on
localhost."""

from __future__ import annotations

import numpy as np
from pathlib import Path
import pytest
import soundfile as sf

import gradio as gr
from components.listen import (BUSY, CONCURRENCY_ID, REFRESH_CONCURRENCY_ID, REFRESH_S, build_listen_tab,
                               engine_markdown, highlight)
from components.mic_transport import START_JS, STOP_JS
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
    assert "loads on first use" in line and Path(profile.tag_adapter).name in line
    assert "/" not in line.split("profile")[0]  # names, never server folders


def test_wiring(app):
    refresh = handler(app, "on_refresh")
    assert refresh.concurrency_id == REFRESH_CONCURRENCY_ID and refresh.concurrency_limit is None
    [timer] = [block for block in app.blocks.values() if isinstance(block, gr.Timer)]
    assert timer.value == REFRESH_S and not timer.active  # active only while recording
    js = [f.js for f in app.fns.values() if f.fn is None]
    assert START_JS in js and STOP_JS in js  # the page's own capture starts at Record and flushes at Stop
    [mic] = [block for block in app.blocks.values() if getattr(block, "elem_id", None) == "listen-mic"]
    assert not mic.streaming  # Gradio's lossy audio streaming is not used
    assert handler(app, "on_stop").concurrency_id != CONCURRENCY_ID
    file_event = handler(app, "on_file")
    assert file_event.api_name == "transcribe" and file_event.concurrency_id == CONCURRENCY_ID


def stop(on_stop, live, profile):
    """Run the stop generator to its end: (progress updates, final outputs)."""
    updates = list(on_stop(live, profile))
    return updates[:-1], updates[-1]


def send(recording, chunks, rate: int, order=None):
    """The page's side of the transport: numbered int16 chunks (in `order`), then the end of the recording."""
    for seq in order or range(len(chunks)):
        assert recording.put(seq, rate, chunks[seq].astype("<i2").tobytes()) == "ok"
    recording.end(len(chunks), sum(len(chunk) for chunk in chunks) / rate)


def test_microphone_chunks_then_stop_for_two_users(app, profile):
    on_start, on_refresh, on_stop = (handler(app, name).fn for name in ("on_start", "on_refresh", "on_stop"))
    rng = np.random.default_rng(1)
    recordings = {}
    for user in "ab":
        recordings[user], rid, spans, status, timer = on_start(None, True, 2, profile)
        assert rid == recordings[user].id and len(rid) >= 20 and status == "Listening…" and timer.active
    assert recordings["a"].id != recordings["b"].id
    for seq in range(3):  # two users' chunks interleaved, each to its own recording
        for user, recording in recordings.items():
            chunk = (rng.standard_normal(24_000) * 3000).astype(np.int16)  # 0.5 s of 48 kHz mono
            assert recording.put(seq, 48_000, chunk.tobytes()) == "ok"
            spans, status = on_refresh(recording)
            assert status.startswith("Live… received")
    assert recordings["a"].session is not recordings["b"].session
    for user, recording in recordings.items():
        assert recording.session.status().received_s == pytest.approx(1.5)  # every chunk arrived
        recording.end(3, 1.5)
        _, (spans, status, result, text, engine_line, timer) = stop(on_stop, recording, profile)
        assert status.startswith("Done") and "received 1.50 s of 1.50 s recorded by the browser" in status
        assert "3 of 3 chunks" in status and "LOST" not in status and not timer.active
        assert result["partial"] is False and result["timings"]["audio_s"] == pytest.approx(1.5, abs=0.05)
        assert result["timings"]["handler_chunks"] == 0 and text == result["text"]  # (no route here: no timings)
        assert "device" in engine_line
        assert on_refresh(recording) == (gr.skip(), gr.skip())  # after Stop the timer's late ticks change nothing


def test_a_lost_chunk_is_said_loudly(app, profile):
    on_start, on_stop = handler(app, "on_start").fn, handler(app, "on_stop").fn
    recording = on_start(None, True, 2, profile)[0]
    chunks = [(np.random.default_rng(seq).standard_normal(8_000) * 3000).astype(np.int16) for seq in range(4)]
    for seq in (0, 1, 3):  # chunk 2 never comes
        recording.put(seq, 16_000, chunks[seq].tobytes())
    recording.end(4, 2.0)
    recording.sequencer.gap_wait_s = 0.0  # (Stop would wait up to TRANSPORT_WAIT_S for it; no need here)
    _, (_, status, result, *_rest) = stop(on_stop, recording, profile)
    assert status.startswith("Done") and "received 1.50 s of 2.00 s recorded by the browser" in status
    assert "**AUDIO LOST: 1 chunk(s) (#2) never arrived; about 0.5 s" in status
    assert result["timings"]["received_s"] == pytest.approx(1.5)


def test_a_recording_whose_end_never_came_says_audio_may_be_lost(app, profile, monkeypatch):
    import components.listen

    monkeypatch.setattr(components.listen, "TRANSPORT_WAIT_S", 0.3)  # (12 s in the app)
    on_start, on_stop = handler(app, "on_start").fn, handler(app, "on_stop").fn
    recording = on_start(None, True, 2, profile)[0]
    recording.put(0, 16_000, (np.random.default_rng(3).standard_normal(8_000) * 3000).astype(np.int16).tobytes())
    progress, (_, status, *_rest) = stop(on_stop, recording, profile)  # the page's end of recording never comes
    assert any("waiting for the browser's end of recording" in update[1] for update in progress)
    assert status.startswith("Done") and "**AUDIO MAY BE LOST: the browser never said how much it recorded**" in status


def test_silent_recording_gives_a_message_not_a_traceback(app, profile):
    on_start, on_stop = handler(app, "on_start").fn, handler(app, "on_stop").fn
    recording = on_start(None, True, 2, profile)[0]
    send(recording, [np.zeros(24_000, dtype=np.int16)], 48_000)
    _, (_, status, *_rest) = stop(on_stop, recording, profile)
    assert "silent" in status
    assert recording.put(1, 48_000, np.ones(4_800, dtype=np.int16).tobytes()) == "late"  # after stop: not taken
    assert recording.session.status().received_s == pytest.approx(0.5)


def test_record_while_the_last_recording_is_finishing_is_refused(app, profile):
    on_start, on_stop = handler(app, "on_start").fn, handler(app, "on_stop").fn
    recording = on_start(None, True, 2, profile)[0]
    send(recording, [(np.random.default_rng(2).standard_normal(16_000) * 3000).astype(np.int16)], 16_000)
    with get_engine_lock(profile):  # the model is busy: the stopped recording cannot finish yet
        recording.session.stop()
        state, rid, _, status, _ = on_start(recording, True, 2, profile)
        assert state is recording and rid == "" and status == BUSY  # an empty id: the page drops its capture
    _, (_, status, result, *_rest) = stop(on_stop, recording, profile)
    assert status.startswith("Done") and result["timings"]["received_s"] == pytest.approx(1.0)
    assert on_start(recording, True, 2, profile)[0] is not recording  # once it is done, a new recording starts


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


def test_whisper_without_a_tag_adapter_says_the_tag_channel_is_unavailable_before_loading():
    from pipelines.speech.transcribe import TAGS_NEED_ADAPTER

    line = engine_markdown(resolve_profile("cpu", asr_model="embedded:whisper-tiny.en", tag_adapter="none"), None)
    assert "Tag channel unavailable" in line and TAGS_NEED_ADAPTER in line


def test_without_a_tag_channel_the_tag_controls_and_legend_are_hidden_and_a_line_says_why():
    from components.listen import tag_controls

    whisper = resolve_profile("cpu", asr_model="embedded:whisper-tiny.en", tag_adapter="none")
    with gr.Blocks() as demo:
        with gr.Tabs() as tabs:
            with gr.Tab("Listen", id="listen"):
                build_listen_tab(whisper, gr.Textbox(), tabs)
    by_id = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    assert by_id["listen-top-k"].visible is False and by_id["listen-tags-on"].interactive is False
    assert by_id["listen-transcript"].show_legend is False
    note = by_id["listen-tags-note"]
    assert note.visible and "words only" in note.value
    checkbox, slider, transcript, line = tag_controls(whisper)
    assert slider.visible is False and transcript.show_legend is False and checkbox.value is False
    assert line.visible and "No tags here" in line.value


def test_with_a_tag_channel_the_tag_controls_show(app):
    by_id = {getattr(b, "elem_id", None): b for b in app.blocks.values()}
    assert by_id["listen-top-k"].visible is True and by_id["listen-transcript"].show_legend is True
    assert by_id["listen-tags-note"].visible is False
