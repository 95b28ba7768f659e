"""The OpenAI-compatible client against a small test server of ours (no vLLM): the wire format, streaming,
n choices, errors. The same client against a real vLLM server is in test_vllm_engine.py."""

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import soundfile as sf

from pipelines.engine import SamplingParams, get_engine
from pipelines.errors import BadInput


class Handler(BaseHTTPRequestHandler):
    """Serves model "base" and adapter "sql"; replies "words: N" (N = words in the last message), or, for the
    adapter, that text upper-cased. A last message of "fail" makes a stream end with an error event. A last
    message with an audio part gets "heard N.N s" (the WAV's length)."""

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v1/models":
            self._send(200, {"data": [{"id": "base", "parent": None}, {"id": "sql", "parent": "base", "root": "/srv/sql"}]})
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        if body["model"] not in {"base", "sql"}:
            return self._send(404, {"error": {"message": f"model {body['model']} does not exist"}})
        last = body["messages"][-1]["content"]
        if isinstance(last, list):  # content parts: text and input_audio
            audio = next(p["input_audio"] for p in last if p["type"] == "input_audio")
            samples, rate = sf.read(io.BytesIO(base64.b64decode(audio["data"])))
            last = f"heard {len(samples) / rate:.1f} s"
        text = f"words: {len(last.split())}" if not last.startswith("heard") else last
        text = text.upper() if body["model"] == "sql" else text
        if not body.get("stream"):
            choices = [{"index": i, "message": {"content": text}, "finish_reason": "stop"} for i in range(body["n"])]
            return self._send(200, {"choices": choices, "usage": {"completion_tokens": 3 * body["n"]}})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        events = [{"choices": [{"index": 0, "delta": {"content": piece}}]} for piece in text.split(" ")[:1] + [" " + text.split(" ")[1]]]
        events.append({"error": {"message": "grammar rejected tokens"}} if last == "fail" else
                      {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
        events.append({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}})
        for event in events:
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.requests = []
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()


@pytest.fixture(scope="module")
def engine(server):
    return get_engine("any-model", "sql", engine="openai", url=f"http://127.0.0.1:{server.server_port}")


def test_served_models_become_base_and_adapters(engine):
    assert engine.base_name == "base" and engine.info.adapters == {"sql": "/srv/sql"}
    assert engine.info.default_adapter == "sql"
    # not vLLM (no /version): no grammar, no runtime adapter loading
    assert not engine.capabilities.grammar and not engine.capabilities.runtime_adapter_loading
    assert engine.info.engine.startswith("OpenAI-compatible server at http://127.0.0.1:")


def test_requests_name_the_adapter_as_the_model(engine, server):
    hello = [{"role": "user", "content": "three little words"}]
    [[adapter]], [[base]] = engine.generate([hello]), engine.generate([hello], adapter=None)
    assert (adapter.text, base.text) == ("WORDS: 3", "words: 3")
    assert [r["model"] for r in server.requests[-2:]] == ["sql", "base"]
    assert "structured_outputs" not in server.requests[-1] and "return_token_ids" not in server.requests[-1]


def test_n_samples_and_token_counts(engine):
    [samples] = engine.generate([[{"role": "user", "content": "a b"}]], SamplingParams(temperature=1.0, n=3))
    assert [g.text for g in samples] == ["WORDS: 2"] * 3 and all(g.completion_tokens == 3 for g in samples)


def test_stream_gives_pieces_reason_usage_and_timings(engine):
    stream = engine.stream([{"role": "user", "content": "one two three four"}])
    assert list(stream) == ["WORDS:", " 4"]
    assert stream.generation.text == "WORDS: 4" and stream.generation.finish_reason == "length"
    assert stream.generation.completion_tokens == 3 and stream.prompt_tokens == 7 and stream.ttft_ms > 0


def test_errors_are_said_with_the_servers_words(engine):
    with pytest.raises(BadInput, match="stopped generating: grammar rejected tokens"):
        list(engine.stream([{"role": "user", "content": "fail"}]))
    with pytest.raises(BadInput, match="is not vLLM: it cannot follow a grammar"):
        engine.generate([[{"role": "user", "content": "x"}]], SamplingParams(grammar='start: "x"'))
    with pytest.raises(BadInput, match="no adapter named 'other'"):
        engine.generate([[{"role": "user", "content": "x"}]], adapter="other")


def test_a_server_process_ends_itself_when_the_app_is_gone(tmp_path):
    """vllm_site/sitecustomize.py, which every process of the vLLM server we start loads: a stand-in server
    (a sleeping Python) outlives its parent by at most a few seconds."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from pipelines.engine.vllm_engine import SITE_DIR

    pid_file = tmp_path / "server.pid"
    app = ("import os, subprocess, sys\n"
           f"server = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], "
           f"env={{**os.environ, 'PYTHONPATH': {str(SITE_DIR)!r}, 'VOXQL_APP_PID': str(os.getpid())}})\n"
           f"open({str(pid_file)!r}, 'w').write(str(server.pid))\n"
           "os._exit(0)  # the app dies without cleaning up\n")
    subprocess.run([sys.executable, "-c", app], check=True, timeout=60)
    server_pid = int(pid_file.read_text())
    deadline = time.monotonic() + 20
    status = Path(f"/proc/{server_pid}/status")
    while time.monotonic() < deadline:
        try:
            if "zombie" in status.read_text():  # ended; its new parent has not reaped it yet
                return
        except FileNotFoundError:
            return
        time.sleep(0.5)
    os.kill(server_pid, 9)
    raise AssertionError("the stand-in server outlived its parent by 20 s")


def test_a_spoken_question_travels_as_an_input_audio_part(server):
    """A speech-in model on a server (vLLM serving fixie-ai/ultravox-v0_4): the prompt the SQL pipeline builds for
    a spoken question goes out as text with <|audio|> and a WAV part; a text model on the same server refuses it."""
    from pipelines.sql.databases import SchemaOnlyDatabase
    from pipelines.sql.pipeline import ask, question_messages

    url = f"http://127.0.0.1:{server.server_port}"
    speech = get_engine("fixie-ai/ultravox-v0_4", "sql", engine="openai", url=url)
    assert speech.capabilities.audio_input
    database = SchemaOnlyDatabase("CREATE TABLE singer (name TEXT, age INTEGER);")
    audio = np.zeros(24_000, dtype=np.float32)
    [[reply]] = speech.generate([question_messages("(spoken, 1.5 s)", database, audio=audio)], adapter=None)
    assert reply.text == "heard 1.5 s"
    text, part = server.requests[-1]["messages"][-1]["content"]
    assert "<|audio|>" in text["text"] and part["input_audio"]["format"] == "wav"
    with pytest.raises(BadInput, match="takes text only"):
        ask("(spoken)", database, get_engine("base", engine="openai", url=url), audio=audio)
