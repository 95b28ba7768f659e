"""The live microphone's transport: the sequencer and registry (plain Python), and the chunk route on a real
Gradio app launched on localhost, fed with numbered PCM chunks over HTTP as the page sends them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.speech.transport import (MAX_CHUNK_BYTES, ChunkSequencer, ChunkTooLarge, RecordingRegistry,
                                        TransportError, UnknownRecording)
from tests.listen_browser import listen_demo


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def pcm(seq: int, n: int = 4_000) -> np.ndarray:
    return np.full(n, seq + 1, dtype=np.int16)  # each chunk's samples say which chunk it is


def sequencer(clock=None):
    got: list[int] = []
    seq = ChunkSequencer(lambda rate, samples: got.append(int(samples[0]) - 1), gap_wait_s=5.0,
                         clock=clock or Clock())
    return seq, got


def test_chunks_out_of_order_are_delivered_in_order():
    seq, got = sequencer()
    for n in (1, 0, 3, 2, 4):
        assert seq.put(n, 16_000, pcm(n)) == "ok"
    assert got == [0, 1, 2, 3, 4]
    seq.end(5, 1.25)
    stats = seq.stats()
    assert seq.complete and stats.complete and not stats.lost and stats.delivered_s == pytest.approx(1.25)


def test_a_duplicate_is_dropped_and_counted():
    seq, got = sequencer()
    seq.put(0, 16_000, pcm(0))
    seq.put(2, 16_000, pcm(2))
    assert seq.put(0, 16_000, pcm(0)) == "duplicate"  # delivered already
    assert seq.put(2, 16_000, pcm(2)) == "duplicate"  # held already
    seq.put(1, 16_000, pcm(1))
    assert got == [0, 1, 2] and seq.stats().duplicates == 2


def test_a_gap_waits_then_is_given_up_and_a_late_chunk_is_counted():
    clock = Clock()
    seq, got = sequencer(clock)
    seq.put(0, 16_000, pcm(0))
    seq.put(2, 16_000, pcm(2))
    assert got == [0] and seq.stats().held == 1  # chunk 2 waits for chunk 1
    clock.now = 4.0
    seq.check_gaps()
    assert got == [0]
    clock.now = 5.5  # chunk 2 has waited past gap_wait_s: chunk 1 is lost, live recognition goes on
    seq.check_gaps()
    assert got == [0, 2] and seq.stats().missing == (1,)
    assert seq.put(1, 16_000, pcm(1)) == "late" and got == [0, 2]
    seq.end(3, 0.75)
    stats = seq.stats()
    assert seq.complete and stats.lost and stats.late == 1 and stats.missing_s == pytest.approx(0.25)


def test_close_gives_up_what_never_came_up_to_the_announced_end():
    seq, got = sequencer()
    seq.put(0, 16_000, pcm(0))
    seq.put(3, 16_000, pcm(3))
    seq.end(6, 1.5)
    assert not seq.complete and not seq.wait_complete(0.05)
    stats = seq.close()
    assert got == [0, 3] and stats.missing == (1, 2, 4, 5) and stats.lost and stats.closed
    assert seq.put(4, 16_000, pcm(4)) == "late"


def test_recorded_more_than_received_is_loss_even_with_no_gap():
    seq, _ = sequencer()
    seq.put(0, 16_000, pcm(0))
    seq.end(1, 0.25)
    assert not seq.stats().lost
    seq2, _ = sequencer()
    seq2.put(0, 16_000, pcm(0))
    seq2.end(1, 1.0)  # the browser recorded 1 s, the one chunk it numbered holds 0.25 s
    assert seq2.stats().lost and seq2.stats().missing_s == pytest.approx(0.75)


def test_bad_sequence_numbers_and_announcements_are_refused():
    seq, _ = sequencer()
    with pytest.raises(TransportError):
        seq.put(-1, 16_000, pcm(0))
    with pytest.raises(TransportError):
        seq.put(10**9, 16_000, pcm(0))
    seq.put(4, 16_000, pcm(4))
    with pytest.raises(TransportError):
        seq.end(3)  # chunk 4 arrived: there were more than 3
    seq.end(5)
    with pytest.raises(TransportError):
        seq.end(6)  # announced once
    with pytest.raises(TransportError):
        seq.put(5, 16_000, pcm(5))  # past the announced end


class Session:
    """What the registry needs of a ListenSession."""

    def __init__(self):
        self.chunks: list[tuple[int, np.ndarray]] = []
        self.stopped = False
        self.handler_ms: list[float] = []

    def receive(self, rate, samples):
        self.chunks.append((rate, samples))

    def stop(self):
        self.stopped = True

    def record_handler_ms(self, ms):
        self.handler_ms.append(ms)


def test_chunks_before_the_session_is_attached_are_held():
    registry = RecordingRegistry()
    recording = registry.issue()  # the id exists; its session does not yet (the start event races the POSTs)
    assert registry.put(recording.id, 1, 16_000, pcm(1).tobytes()) == "ok"
    assert registry.put(recording.id, 0, 16_000, pcm(0).tobytes()) == "ok"
    session = Session()
    registry.attach(recording.id, session)
    assert [int(samples[0]) for _, samples in session.chunks] == [1, 2]  # in order, at attach
    registry.put(recording.id, 2, 16_000, pcm(2).tobytes())
    assert len(session.chunks) == 3 and not session.stopped
    registry.end(recording.id, 3, 0.75)
    assert session.stopped  # every announced chunk is in: recognition finishes without waiting for the UI


def test_unknown_and_expired_ids_are_refused():
    registry = RecordingRegistry(issued_ttl_s=0.0)
    with pytest.raises(UnknownRecording):
        registry.put("not-an-issued-id", 0, 16_000, pcm(0).tobytes())
    recording = registry.issue()
    with pytest.raises(UnknownRecording):  # issued, never attached, and its time is up
        registry.put(recording.id, 0, 16_000, pcm(0).tobytes())
    ids = {RecordingRegistry().issue(Session()).id for _ in range(50)}
    assert len(ids) == 50 and all(len(rid) >= 24 for rid in ids)  # random, unguessable


def test_a_finished_recording_is_forgotten_after_a_while():
    registry = RecordingRegistry(keep_done_s=0.0)
    recording = registry.issue(Session())
    registry.finished(recording.id)
    assert recording.id not in registry
    recording = registry.issue(Session())
    registry.discard(recording.id)
    assert recording.id not in registry


def test_oversize_odd_and_wrong_rate_chunks_are_refused():
    registry = RecordingRegistry()
    recording = registry.issue(Session())
    with pytest.raises(ChunkTooLarge):
        recording.put(0, 48_000, b"\0" * (MAX_CHUNK_BYTES + 2))
    with pytest.raises(TransportError):
        recording.put(0, 48_000, b"\0\0\0")  # half a sample
    with pytest.raises(TransportError):
        recording.put(0, 1_000, b"\0\0")  # no microphone records at 1 kHz
    recording.put(0, 48_000, b"\0\0")
    with pytest.raises(TransportError):
        recording.put(1, 16_000, b"\0\0")  # the rate of a recording does not change


def test_past_the_length_limit_audio_is_refused_and_said_not_lost(monkeypatch):
    monkeypatch.setenv("VOXQL_MAX_AUDIO_S", "1")
    registry = RecordingRegistry()
    session = Session()
    recording = registry.issue(session)
    for seq in range(8):  # 0.25 s each; the limit (plus one second of slack) takes 8
        recording.put(seq, 16_000, pcm(seq).tobytes())
    with pytest.raises(ChunkTooLarge):
        recording.put(8, 16_000, pcm(8).tobytes())
    recording.end(9, 2.25)
    stats = recording.stats()
    assert len(session.chunks) == 8 and stats.rejected_s == pytest.approx(0.25) and not stats.lost
    assert stats.complete


# -- the route, on a real Gradio app -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine():
    from pipelines.profiles import resolve_profile
    from pipelines.speech.transcribe import get_speech_engine

    profile = resolve_profile("cpu", asr_model="embedded:whisper-tiny.en", tag_adapter="none")
    get_speech_engine(profile, fallback=True)
    return profile


@pytest.fixture(scope="module")
def served(engine):
    from components.mic_transport import launch_kwargs

    demo = listen_demo(engine)
    _, url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, **launch_kwargs())
    yield demo, url.rstrip("/")
    demo.close()


def handler(demo, name: str):
    [match] = [f for f in demo.fns.values() if f.name == name]
    return match.fn


def mic_chunks(seconds: float | None = None, rate: int = 48_000, chunk_s: float = 0.25) -> list[bytes]:
    """The first spoken clip as the page sends it: 48 kHz int16 chunks of 0.25 s."""
    import soxr

    from pipelines.profiles import ASSETS_DIR
    from pipelines.speech.audio import load_audio
    from pipelines.speech.bench import spoken_clips

    samples = load_audio(ASSETS_DIR / "audio" / "spoken" / spoken_clips()[0]["file"]).samples
    if seconds is not None:
        samples = samples[:int(seconds * 16_000)]
    mic = (np.clip(soxr.resample(samples, 16_000, rate), -1, 1) * 32767).astype("<i2")
    step = int(rate * chunk_s)
    return [mic[i:i + step].tobytes() for i in range(0, len(mic), step)]


def finish(demo, recording, profile):
    *_, last = handler(demo, "on_stop")(recording, profile)
    return last


def test_the_route_takes_numbered_chunks_in_any_order_and_the_transcript_is_right(served, engine):
    import httpx

    from pipelines.speech.bench import spoken_clips
    from pipelines.speech.metrics import wer

    demo, url = served
    recording, rid, *_ = handler(demo, "on_start")(None, False, 0, engine)
    chunks = mic_chunks()
    order = list(range(len(chunks)))
    order[3], order[4] = order[4], order[3]  # two chunks swapped on the way
    with httpx.Client(base_url=url, timeout=10) as client:
        for seq in order:
            response = client.post(f"/voxql/mic/{rid}/chunk", params={"seq": seq, "rate": 48_000},
                                   content=chunks[seq], headers={"Content-Type": "application/octet-stream"})
            assert response.status_code == 200 and response.json() == {"status": "ok"}
        again = client.post(f"/voxql/mic/{rid}/chunk", params={"seq": 5, "rate": 48_000}, content=chunks[5])
        assert again.json() == {"status": "duplicate"}  # a retried POST that had arrived after all
        recorded_s = sum(len(chunk) for chunk in chunks) / 2 / 48_000
        end = client.post(f"/voxql/mic/{rid}/end", json={"chunks": len(chunks), "recorded_s": recorded_s})
        assert end.status_code == 200 and end.json()["missing"] == 0
    spans, status, result, text, _engine, _timer = finish(demo, recording, engine)
    assert status.startswith("Done") and f"received {recorded_s:.2f} s of {recorded_s:.2f} s recorded" in status
    assert f"{len(chunks)} of {len(chunks)} chunks, in order" in status and "LOST" not in status
    assert wer(spoken_clips()[0]["text"], text) <= 0.2, text
    stats = recording.session.handler_stats()
    assert stats["n"] == len(chunks) + 1 and stats["p95_ms"] < 50  # the route only hands the chunk on
    assert result["timings"]["handler_chunks"] == len(chunks) + 1


def test_the_route_refuses_what_it_should(served, engine):
    import httpx

    demo, url = served
    recording, rid, *_ = handler(demo, "on_start")(None, False, 0, engine)
    with httpx.Client(base_url=url, timeout=10) as client:
        def chunk(rid_, seq=0, rate=48_000, body=b"\0\0" * 100):
            return client.post(f"/voxql/mic/{rid_}/chunk", params={"seq": seq, "rate": rate}, content=body)

        assert chunk("nobody-issued-this").status_code == 404
        assert chunk(rid, body=b"\0" * (MAX_CHUNK_BYTES + 2)).status_code == 413
        assert chunk(rid, seq=-1).status_code == 400
        assert chunk(rid, rate=7).status_code == 400
        assert client.post(f"/voxql/mic/{rid}/chunk", params={"seq": "x", "rate": 48_000}).status_code == 422
        assert client.post(f"/voxql/mic/{rid}/end", content=b"__import__('os')").status_code == 400
        assert client.post(f"/voxql/mic/{rid}/end", json={"chunks": "3"}).status_code == 400
        assert client.post("/voxql/mic/nobody/end", json={"chunks": 1}).status_code == 404
        silent, silent_id, *_ = handler(demo, "on_start")(None, False, 0, engine)
        said = client.post(f"/voxql/mic/{silent_id}/end",
                           json={"chunks": 0, "recorded_s": 0, "error": "NotAllowedError: <b>denied</b>"})
        assert said.status_code == 200
        _spans, status, *_rest = finish(demo, silent, engine)
        assert "nothing was recorded" in status and "NotAllowedError: &lt;b&gt;denied&lt;/b&gt;" in status
        for seq in (0, 1, 3):  # chunk 2 never comes
            assert chunk(rid, seq=seq, body=mic_chunks(1.0)[seq]).status_code == 200
        assert client.post(f"/voxql/mic/{rid}/end", json={"chunks": 4, "recorded_s": 1.0}).json()["held"] == 1
    recording.sequencer.gap_wait_s = 0.0  # (Stop would wait up to TRANSPORT_WAIT_S for it)
    _spans, status, *_rest = finish(demo, recording, engine)
    assert "AUDIO LOST: 1 chunk(s) (#2) never arrived" in status, status


def test_an_app_launched_without_the_routes_gets_them_at_the_first_record(engine):
    import httpx

    from components.listen import forget_session
    from components.mic_transport import ensure_routes, has_routes

    demo = listen_demo(engine)
    app, url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        assert not has_routes(app)

        class Request:  # what gr.Request holds: the Starlette request, whose .app is the FastAPI app
            request = type("Starlette", (), {"app": app})()

        recording, rid, *_ = handler(demo, "on_start")(None, False, 0, engine, Request())
        assert has_routes(app)
        ensure_routes(app)  # idempotent
        assert sum(getattr(r, "path", "").startswith("/voxql/mic/") for r in app.routes) == 2
        response = httpx.post(f"{url.rstrip('/')}/voxql/mic/{rid}/chunk", params={"seq": 0, "rate": 16_000},
                              content=b"\0\0" * 1600)
        assert response.status_code == 200, response.text
        forget_session(recording)
    finally:
        demo.close()


def test_the_page_script_is_one_function_with_the_route_in_it():
    from components.mic_transport import ATTACH_JS, CHUNK_S, PREFIX, START_JS, STOP_JS

    assert START_JS.startswith("() => {") and PREFIX in START_JS and repr(CHUNK_S) in START_JS
    assert "registerProcessor('voxql-capture'" in json.loads(START_JS.split("WORKLET = ")[1].split(";\n")[0])
    assert ATTACH_JS.startswith("(id) =>") and STOP_JS.startswith("() =>")
