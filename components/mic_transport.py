"""The live microphone's transport, web side: the browser's capture script and the HTTP route it POSTs to.

Why not Gradio's own streaming: its client uploads each chunk as a file and then sends a stream event, drops a
chunk when the stream is "waiting" or when its upload ends after Stop, and the server keeps only the latest chunk
of a stream between two turns of its queue loop. Under load chunks are lost, and nobody is told.

Here the page captures the microphone itself (getUserMedia + Web Audio, an AudioWorklet or a ScriptProcessor),
at the device's rate, and POSTs int16 PCM chunks of about 0.25 s, each with the recording's id and a sequence
number, to `POST {root}/voxql/mic/{id}/chunk?seq=N&rate=R`. A failed POST is retried (6 tries over about 6 s).
At Stop it flushes the last chunk and POSTs `{root}/voxql/mic/{id}/end` with the number of chunks it made and the
seconds it recorded. The server (`pipelines.speech.transport`) puts the chunks in order and counts what never
came.

The id is issued by the server (the Record handler returns it in a hidden textbox; the page reads it), so a POST
can only feed a recording its page started. The body is only ever read as PCM samples or as a small JSON object.

Mounting: `launch_kwargs()` gives `demo.launch(app_kwargs=...)` the routes (app.py and the tests use it); a
Blocks launched without them gets them added on the first Record (`ensure_routes`), with a warning in the log.
"""

from __future__ import annotations

import json
import logging
import math
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.routing import BaseRoute

from pipelines.speech.transport import (MAX_CHUNK_BYTES, ChunkTooLarge, RecordingRegistry, TransportError,
                                        shared_registry)

log = logging.getLogger(__name__)

PREFIX = "/voxql/mic"
CHUNK_S = 0.25  # the browser cuts a chunk every this many seconds of audio
MAX_END_BYTES = 4096
_registry: RecordingRegistry | None = None  # tests may swap in their own


def registry() -> RecordingRegistry:
    return _registry or shared_registry()


async def _read_capped(request: Request, cap: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > cap):
        raise ChunkTooLarge(f"a request body is at most {cap} bytes")
    body = bytearray()
    async for part in request.stream():
        body.extend(part)
        if len(body) > cap:
            raise ChunkTooLarge(f"a request body is at most {cap} bytes")
    return bytes(body)


def _refusal(error: TransportError) -> JSONResponse:
    return JSONResponse({"error": str(error)}, status_code=error.status)


def build_router() -> APIRouter:
    router = APIRouter()

    @router.post(PREFIX + "/{recording_id}/chunk")
    async def mic_chunk(recording_id: str, request: Request, seq: int, rate: int):
        started = time.perf_counter()
        try:
            recording = registry().get(recording_id)
            body = await _read_capped(request, MAX_CHUNK_BYTES)
            outcome = recording.put(seq, rate, body)
        except TransportError as error:
            return _refusal(error)
        recording.record_route_ms((time.perf_counter() - started) * 1000)
        return JSONResponse({"status": outcome})

    @router.post(PREFIX + "/{recording_id}/end")
    async def mic_end(recording_id: str, request: Request):
        try:
            recording = registry().get(recording_id)
            body = await _read_capped(request, MAX_END_BYTES)
            try:
                end = json.loads(body)
            except ValueError:
                raise TransportError("the end of a recording is a JSON object") from None
            chunks, recorded_s = (end.get("chunks"), end.get("recorded_s")) if isinstance(end, dict) else (None, None)
            if not isinstance(chunks, int) or isinstance(chunks, bool):
                raise TransportError("'chunks' must be an integer")
            if recorded_s is not None and (not isinstance(recorded_s, (int, float)) or isinstance(recorded_s, bool)
                                           or not math.isfinite(recorded_s)):
                raise TransportError("'recorded_s' must be a number")
            page_error = end.get("error")
            if isinstance(page_error, str) and page_error:
                recording.page_error = page_error[:200]  # shown escaped, as text
            stats = recording.end(chunks, None if recorded_s is None else float(recorded_s))
        except TransportError as error:
            return _refusal(error)
        return JSONResponse({"delivered": stats.delivered, "missing": len(stats.missing), "held": stats.held})

    return router


def routes() -> list[BaseRoute]:
    return list(build_router().routes)


def launch_kwargs(app_kwargs: dict | None = None) -> dict:
    """`demo.launch(**launch_kwargs())`: the FastAPI app Gradio builds gets the microphone routes first."""
    app_kwargs = dict(app_kwargs or {})
    app_kwargs["routes"] = routes() + list(app_kwargs.get("routes") or [])
    return {"app_kwargs": app_kwargs}


def has_routes(app) -> bool:
    return any(getattr(route, "path", "").startswith(PREFIX + "/") for route in getattr(app, "routes", []))


def ensure_routes(app) -> None:
    """Add the routes to a running app that was launched without them (idempotent)."""
    if app is None or not hasattr(app, "router") or has_routes(app):
        return
    log.warning("the live microphone's routes were not given to launch(); adding them now (use "
                "components.mic_transport.launch_kwargs())")
    app.router.routes[0:0] = routes()


# -- the browser's side ----------------------------------------------------------------------------------------
_WORKLET = r"""
class VoxqlCapture extends AudioWorkletProcessor {
  constructor() {
    super(); this.on = true; this.paused = false; this.buf = new Float32Array(2048); this.n = 0;
    this.port.onmessage = (e) => {
      if (e.data === 'pause') this.paused = true;
      else if (e.data === 'resume') this.paused = false;
      else if (e.data === 'stop') { this.flush(); this.on = false; this.port.postMessage('stopped'); }
    };
  }
  flush() { if (this.n) { this.port.postMessage(this.buf.slice(0, this.n)); this.n = 0; } }
  process(inputs) {
    if (!this.on) return false;
    const input = inputs[0];
    if (input && input.length && !this.paused) {
      const first = input[0], channels = input.length;
      for (let i = 0; i < first.length; i++) {
        let v = first[i];
        for (let c = 1; c < channels; c++) v += input[c][i];
        this.buf[this.n++] = v / channels;
        if (this.n === this.buf.length) this.flush();
      }
    }
    return true;
  }
}
registerProcessor('voxql-capture', VoxqlCapture);
"""

_LIBRARY = r"""
(function () {
  if (window.voxqlMic) return;
  const CHUNK_S = __CHUNK_S__, PREFIX = '__PREFIX__', TRIES = 6, WORKLET = __WORKLET__;
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const root = () => {
    const config = window.gradio_config;
    const base = (config && config.root) || window.location.href.replace(/[?#].*$/, '');
    return base.replace(/\/+$/, '');
  };
  class Recording {
    constructor() {
      this.id = null; this.seq = 0; this.parts = []; this.partLen = 0; this.samples = 0; this.rate = 0;
      this.stopped = false; this.paused = false; this.limited = false; this.sends = []; this.failed = [];
      this.results = {}; this.error = null; this.t0 = null; this.wall_s = 0; this.ended = null;
      this.idReady = new Promise((resolve) => { this.setId = resolve; });
      this.ready = this.start();
    }
    async start() {
      try {
        this.stream = await navigator.mediaDevices.getUserMedia({audio: true});
        if (this.stopped && this.id === '') { this.release(); return; }
        this.ctx = new AudioContext();
        this.rate = this.ctx.sampleRate;
        this.chunkLen = Math.round(this.rate * CHUNK_S);
        const source = this.ctx.createMediaStreamSource(this.stream);
        this.mute = this.ctx.createGain(); this.mute.gain.value = 0; this.mute.connect(this.ctx.destination);
        if (this.ctx.audioWorklet && window.AudioWorkletNode) {
          const url = URL.createObjectURL(new Blob([WORKLET], {type: 'application/javascript'}));
          await this.ctx.audioWorklet.addModule(url);
          this.node = new AudioWorkletNode(this.ctx, 'voxql-capture');
          this.node.port.onmessage = (e) => {
            if (e.data === 'stopped') { if (this.onStopped) this.onStopped(); } else this.take(e.data);
          };
        } else {
          this.node = this.ctx.createScriptProcessor(4096, 1, 1);
          this.node.onaudioprocess = (e) => {
            if (!this.stopped && !this.paused) this.take(new Float32Array(e.inputBuffer.getChannelData(0)));
          };
        }
        source.connect(this.node); this.node.connect(this.mute);
        if (this.ctx.state === 'suspended') await this.ctx.resume();
        this.t0 = performance.now();
      } catch (err) {
        this.error = String(err); console.error('voxql microphone:', err);
      }
    }
    take(floats) {
      if (this.limited) return;
      const pcm = new Int16Array(floats.length);
      for (let i = 0; i < floats.length; i++) {
        const v = Math.max(-1, Math.min(1, floats[i]));
        pcm[i] = v < 0 ? v * 32768 : v * 32767;
      }
      this.samples += pcm.length; this.parts.push(pcm); this.partLen += pcm.length;
      while (this.partLen >= this.chunkLen) this.cut(this.chunkLen);
    }
    cut(length) {  // the next chunk: `length` samples (all that is left at Stop)
      length = Math.min(length || this.partLen, this.partLen);
      if (!length) return;
      const all = new Int16Array(this.partLen);
      let at = 0;
      for (const part of this.parts) { all.set(part, at); at += part.length; }
      const chunk = all.slice(0, length);
      this.parts = length < all.length ? [all.slice(length)] : []; this.partLen = all.length - length;
      const seq = this.seq++;
      this.sends.push(this.post('/chunk?seq=' + seq + '&rate=' + this.rate, chunk.buffer,
                                'application/octet-stream').then((result) => {
        this.results[seq] = result;
        if (result !== 'ok') this.failed.push(seq);
        return result;
      }));
    }
    async post(path, body, type) {
      const id = await this.idReady;
      if (!id) return 'refused';
      const url = root() + PREFIX + '/' + encodeURIComponent(id) + path;
      for (let attempt = 0; attempt < TRIES; attempt++) {
        try {
          const response = await fetch(url, {method: 'POST', body: body, headers: {'Content-Type': type},
                                             credentials: 'same-origin'});
          if (response.ok) return 'ok';
          if (response.status === 413) { this.limited = true; return 'limit'; }
          if (response.status >= 400 && response.status < 500 && response.status !== 408 && response.status !== 429)
            return 'error ' + response.status;
        } catch (err) { /* the network or the server: try again */ }
        if (attempt < TRIES - 1) await sleep(200 * 2 ** attempt);
      }
      return 'failed';
    }
    pause(on) {
      this.paused = on;
      if (this.node && this.node.port) this.node.port.postMessage(on ? 'pause' : 'resume');
    }
    release() {
      if (this.stream) this.stream.getTracks().forEach((track) => track.stop());
      if (this.ctx) this.ctx.close();
      this.stream = null; this.ctx = null;
    }
    stop() {
      if (this.stopping) return this.stopping;
      this.stopped = true;
      this.stopping = (async () => {
        await this.ready;
        if (this.node && this.node.port && this.ctx) {
          await new Promise((resolve) => { this.onStopped = resolve; this.node.port.postMessage('stop');
                                           setTimeout(resolve, 1000); });
        }
        this.wall_s = this.t0 === null ? 0 : (performance.now() - this.t0) / 1000;
        this.cut();
        this.release();
        const end = {chunks: this.seq, recorded_s: this.rate ? this.samples / this.rate : 0, wall_s: this.wall_s,
                     rate: this.rate, error: this.error};
        this.ended = await this.post('/end', JSON.stringify(end), 'application/json');
        await Promise.all(this.sends);
        return this.ended;
      })();
      return this.stopping;
    }
    attach(id) {
      if (this.id !== null) return;
      this.id = id || '';
      this.setId(this.id);
      if (!this.id) { this.stopped = true; this.ready.then(() => this.release()); }  // refused by the server
    }
  }
  const inMic = (target) => {
    const mic = document.getElementById('listen-mic');
    return mic && target instanceof Element && mic.contains(target) ? target.closest('button') : null;
  };
  document.addEventListener('click', (e) => {  // Stop/Pause/Resume: act at the click, not after Gradio's upload
    const button = inMic(e.target), rec = window.voxqlMic.current;
    if (!button || !rec || rec.stopped) return;
    if (button.classList.contains('stop-button') || button.classList.contains('stop-button-paused')) rec.stop();
    else if (button.classList.contains('pause-button')) rec.pause(true);
    else if (button.classList.contains('resume-button')) rec.pause(false);
  }, true);
  window.voxqlMic = {
    current: null,
    recordings: [],
    start() {
      if (this.current && !this.current.stopped) this.current.stop();
      this.current = new Recording();
      this.recordings.push(this.current);
      return this.current;
    },
    attach(id) { if (this.current) this.current.attach(id); },
    stop() { if (this.current) this.current.stop(); },
  };
})();
"""


def _library() -> str:
    return (_LIBRARY.replace("__CHUNK_S__", repr(CHUNK_S)).replace("__PREFIX__", PREFIX)
            .replace("__WORKLET__", json.dumps(_WORKLET)))


# The events' js: Record starts the capture at once (its chunks wait in the page for the id), the Record
# handler's id then goes to the page, and Stop (also caught at the click itself) flushes and announces the end.
START_JS = "() => {" + _library() + "\nwindow.voxqlMic.start(); }"
ATTACH_JS = "(id) => { if (window.voxqlMic) window.voxqlMic.attach(id); }"
STOP_JS = "() => { if (window.voxqlMic) window.voxqlMic.stop(); }"
