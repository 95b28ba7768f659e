"""An engine that talks to an OpenAI-compatible server (vLLM's, or any other) over HTTP.

The server holds the model; adapters are models the server serves by name (vLLM: `--lora-modules name=path`,
or loaded while it runs through `POST /v1/load_lora_adapter`). A request names the adapter as its `model`,
so base and adapter answers come from the same server without reloading anything. Grammars travel as vLLM's
`structured_outputs: {"grammar": ...}`, which only vLLM understands: other servers get no grammar. A spoken
question (a speech-in model such as Ultravox) travels as an `input_audio` content part (WAV, base64).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from pipelines.engine.base import (DEFAULT_ADAPTER, Capabilities, Engine, EngineInfo, Generation, Message,
                                   SamplingParams, TextStream)
from pipelines.engine.loading import display_name
from pipelines.errors import BadInput, ModelNotAvailable

DEFAULT_ADAPTER_NAME = "default"
TIMEOUT = httpx.Timeout(600.0, connect=5.0)  # a long constrained answer on a busy CPU server takes minutes


def api_base(url: str) -> str:
    """`http://host:port` or `http://host:port/v1` -> `http://host:port/v1`."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


class OpenAIEngine(Engine):
    """`model_spec` names the base model (the server's model id, or anything when the server serves one base);
    `adapter_spec` is a served adapter's name or path, or a path the server can load at run time."""

    def __init__(self, model_spec: str, adapter_spec: str | None = None, *, url: str, server_label: str | None = None,
                 audio_input: bool = False):
        self.url = api_base(url)
        self._http = httpx.Client(timeout=TIMEOUT)
        served = self._get("/models")["data"]
        self.base_name = self._base_model(served, model_spec)
        version = self._server_version()
        # Grammars and token ids are vLLM request fields; another server would reject or ignore them.
        self.is_vllm = version is not None
        self.capabilities = Capabilities(grammar=self.is_vllm, batching=True, cheap_samples=True,
                                         runtime_adapter_loading=self.is_vllm,
                                         audio_input=audio_input)
        self.info = EngineInfo(
            model=display_name(model_spec),
            adapters={m["id"]: m.get("root") or m["id"] for m in served if m.get("parent")},
            default_adapter=None,
            engine=server_label or (f"vLLM {version} at {self.url}" if version else f"OpenAI-compatible server at {self.url}"),
            device="server",
            dtype="server's",
        )
        if adapter_spec:
            name = self._served_adapter(adapter_spec)
            if name is None:
                self.load_adapter(adapter_spec, DEFAULT_ADAPTER_NAME)
                name = DEFAULT_ADAPTER_NAME
            self.info = dataclasses.replace(self.info, default_adapter=name)

    # -- the server ---------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = self._http.request(method, self.url + path, **kwargs)
        except httpx.TransportError as error:
            raise ModelNotAvailable(f"no OpenAI-compatible server answers at {self.url} ({error})") from None
        if response.status_code >= 400:
            raise BadInput(f"the server at {self.url} refused {path}: {_server_message(response)}")
        return response

    def _get(self, path: str) -> dict:
        return self._request("GET", path).json()

    def _server_version(self) -> str | None:
        try:  # vLLM serves /version beside /v1
            response = self._http.get(self.url.removesuffix("/v1") + "/version")
            return response.json().get("version") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    @staticmethod
    def _base_model(served: list[dict], model_spec: str) -> str:
        bases = [m["id"] for m in served if not m.get("parent")]
        if model_spec in bases:
            return model_spec
        if len(bases) == 1:
            return bases[0]
        raise ModelNotAvailable(f"the server serves {', '.join(bases) or 'no model'}, not {model_spec!r}")

    def _served_adapter(self, spec: str) -> str | None:
        """The name under which the server already serves adapter `spec` (a name, or the path it was loaded from)."""
        path = str(Path(spec).expanduser().resolve()) if Path(spec).expanduser().exists() else spec
        for name, root in self.info.adapters.items():
            if spec == name or path == root:
                return name
        return None

    def load_adapter(self, spec: str, name: str) -> None:
        path = Path(spec).expanduser()
        lora_path = str(path.resolve()) if path.exists() else spec  # the server resolves it: same machine, or Hub id
        try:
            self._request("POST", "/load_lora_adapter", json={"lora_name": name, "lora_path": lora_path})
        except BadInput as error:
            raise ModelNotAvailable(
                f"could not load adapter {spec!r} into the server ({error}); a vLLM server loads adapters at run "
                "time only when started with VLLM_ALLOW_RUNTIME_LORA_UPDATING=1, and the path must be on its machine"
            ) from None
        self.info = dataclasses.replace(self.info, adapters={**self.info.adapters, name: lora_path})

    # -- generation ---------------------------------------------------------------------------------------
    def _body(self, messages: list[Message], params: SamplingParams, adapter: str | None, n: int) -> dict:
        body = {"model": adapter or self.base_name, "messages": [wire_message(m) for m in messages],
                "max_tokens": params.max_new_tokens,
                "temperature": max(params.temperature, 0.0), "top_p": params.top_p, "n": n}
        if params.seed is not None:
            body["seed"] = params.seed
        if self.is_vllm:
            body["return_token_ids"] = True
            if params.grammar is not None:
                body["structured_outputs"] = {"grammar": params.grammar}
        return body

    def _check_grammar(self, params: SamplingParams) -> None:
        if params.grammar is not None and not self.capabilities.grammar:
            raise BadInput(f"the server at {self.url} is not vLLM: it cannot follow a grammar")

    def generate(self, conversations, params=SamplingParams(), *, adapter=DEFAULT_ADAPTER):
        adapter = self.resolve_adapter(adapter)
        self._check_grammar(params)
        n = 1 if params.greedy else params.n

        def one(messages: list[Message]) -> list[Generation]:
            reply = self._request("POST", "/chat/completions", json=self._body(messages, params, adapter, n)).json()
            choices = sorted(reply["choices"], key=lambda c: c["index"])
            usage = reply.get("usage") or {}
            return [Generation(text=c["message"]["content"] or "",
                               completion_tokens=_token_count(c, usage, len(choices)),
                               finish_reason=_finish_reason(c.get("finish_reason")),
                               grammar="followed" if params.grammar is not None else None)
                    for c in choices]

        # One request per conversation, all at once: the server batches them (continuous batching).
        with ThreadPoolExecutor(max_workers=max(1, min(len(conversations), 32))) as pool:
            return list(pool.map(one, conversations))

    def stream(self, messages, params=SamplingParams(), *, adapter=DEFAULT_ADAPTER) -> TextStream:
        adapter = self.resolve_adapter(adapter)
        self._check_grammar(params)
        body = {**self._body(messages, params, adapter, 1), "stream": True, "stream_options": {"include_usage": True}}
        cancel = threading.Event()
        stream = TextStream(pieces=iter(()), cancel_event=cancel)

        def pieces():
            text, tokens, reason, usage = [], 0, "stop", {}
            try:
                with self._http.stream("POST", self.url + "/chat/completions", json=body) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise BadInput(f"the server at {self.url} refused the request: {_server_message(response)}")
                    for line in response.iter_lines():
                        if cancel.is_set():
                            reason = "cancelled"
                            break  # leaving the block closes the connection: vLLM aborts the request
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunk = json.loads(line[len("data: "):])
                        if "error" in chunk:  # the server ended the request mid-way (vLLM: an error event)
                            raise BadInput(_stopped_message(self.url, chunk["error"], params))
                        usage = chunk.get("usage") or usage
                        for choice in chunk.get("choices", []):
                            tokens += len(choice.get("token_ids") or [])
                            piece = (choice.get("delta") or {}).get("content") or ""
                            if piece:
                                if stream.first_token_at is None:
                                    stream.first_token_at = time.perf_counter()
                                text.append(piece)
                                yield piece
                            if choice.get("finish_reason"):
                                reason = _finish_reason(choice["finish_reason"])
            except httpx.TransportError as error:
                raise ModelNotAvailable(f"the server at {self.url} stopped answering ({error})") from None
            stream.finished_at = time.perf_counter()
            stream.prompt_tokens = usage.get("prompt_tokens", 0)
            stream.generation = Generation(text="".join(text), completion_tokens=usage.get("completion_tokens", tokens),
                                           finish_reason=reason,
                                           grammar="followed" if params.grammar is not None else None)

        stream.pieces = pieces()
        return stream


def wire_message(message: Message) -> dict:
    """A message as the server reads it. One with `audio` (16 kHz samples) becomes content parts: its text, with
    `<|audio|>` where the audio goes (vLLM keeps a placeholder it finds in the text where it is), then the audio
    as an `input_audio` part."""
    if message.get("audio") is None:
        return message
    import soundfile

    wav = io.BytesIO()
    soundfile.write(wav, message["audio"], 16_000, format="WAV", subtype="PCM_16")
    parts = [{"type": "text", "text": message["content"]},
             {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav.getvalue()).decode(), "format": "wav"}}]
    return {"role": message["role"], "content": parts}


def _token_count(choice: dict, usage: dict, choices: int) -> int:
    if choice.get("token_ids") is not None:
        return len(choice["token_ids"])
    return int(usage.get("completion_tokens", 0)) // max(choices, 1)  # servers without token ids: the mean


def _finish_reason(reason: str | None) -> str:
    return "length" if reason == "length" else ("cancelled" if reason == "abort" else "stop")


def _stopped_message(url: str, error, params: SamplingParams) -> str:
    message = str(error.get("message", error) if isinstance(error, dict) else error)[:300]
    hint = (" A grammar request: a vLLM server needs llguidance's raised parser limits for the SQL grammar "
            "(README, Engines), or turn constraints off.") if params.grammar is not None else ""
    return f"the server at {url} stopped generating: {message}.{hint}"


def _server_message(response: httpx.Response) -> str:
    try:
        error = response.json()
        error = error.get("error", error) if isinstance(error, dict) else error
        return str(error.get("message", error) if isinstance(error, dict) else error)[:500]
    except ValueError:
        return response.text[:500] or f"HTTP {response.status_code}"
