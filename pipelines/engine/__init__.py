"""Generation engines: one way in (`get_engine`), chosen by name, and the process-wide cache of loaded ones.

    get_engine(model, adapter)                      the engine named by VOXQL_ENGINE, else the default: llamacpp
                                                    for a GGUF model (the embedded one) when llama-cpp-python is
                                                    installed, transformers otherwise
    get_engine(model, adapter, engine="llamacpp")   llama.cpp in this process, on the model's GGUF file
    get_engine(model, adapter, engine="vllm")       a local vLLM server, started and supervised for you
    get_engine(model, adapter, engine="openai", url="http://host:8000/v1")   any OpenAI-compatible server

Engines are registered by name (`register_engine`, as the built-in ones below are); nothing else constructs
engine classes. What an engine can do is on the engine (`Engine.capabilities`), so callers read it instead of
guessing. The cache of loaded engines is the only mutable module state (models).
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable

from pipelines.engine.base import (DEFAULT_ADAPTER, Capabilities, Engine, EngineInfo, Generation, Message,
                                   SamplingParams, TextStream)
from pipelines.errors import BadInput, VoxQLError

__all__ = ["DEFAULT_ADAPTER", "Capabilities", "Engine", "EngineInfo", "Generation", "Message", "SamplingParams",
           "TextStream", "ENGINE_ENV", "ENGINE_URL_ENV", "register_engine", "engine_names", "engine_choice", "default_engine",
           "get_engine", "loaded_engine", "load_error"]

ENGINE_ENV = "VOXQL_ENGINE"
ENGINE_URL_ENV = "VOXQL_ENGINE_URL"
DEFAULT_ENGINE = "transformers"

# name -> (factory(model, adapter, url) -> Engine, one line for --help and the README)
_registry: dict[str, tuple[Callable[[str, str | None, str | None], Engine], str]] = {}
_engines: dict[tuple, Engine] = {}
_load_errors: dict[tuple, str] = {}
_engines_lock = threading.Lock()


def register_engine(name: str, factory: Callable[[str, str | None, str | None], Engine], description: str) -> None:
    """Make `name` choosable with --engine / VOXQL_ENGINE. `factory(model, adapter, url)` builds the engine."""
    _registry[name] = (factory, description)


def engine_names() -> dict[str, str]:
    """Registered engine names and what each is."""
    return {name: description for name, (_, description) in _registry.items()}


def default_engine(model: str | None = None) -> str:
    """llamacpp for a GGUF model (the embedded SmolLM2 is one) where llama-cpp-python is installed: on a CPU it
    decodes about six times as fast as transformers (results/bench-engine.json). transformers otherwise."""
    from pipelines.engine.loading import EMBEDDED_SMOLLM2

    gguf = model is not None and (model == EMBEDDED_SMOLLM2 or model.endswith(".gguf"))
    return "llamacpp" if gguf and importlib.util.find_spec("llama_cpp") is not None else DEFAULT_ENGINE


def engine_choice(engine: str | None = None, url: str | None = None, model: str | None = None) -> tuple[str, str | None]:
    """(engine name, url) from the arguments, else VOXQL_ENGINE / VOXQL_ENGINE_URL, else the default for `model`.
    A URL alone means `openai`."""
    url = url or os.environ.get(ENGINE_URL_ENV) or None
    name = engine or os.environ.get(ENGINE_ENV) or ("openai" if url else default_engine(model))
    if name not in _registry:
        raise BadInput(f"unknown engine {name!r}; choose one of: {', '.join(_registry)}")
    return name, url


def _key(model: str, adapter: str | None, engine: str | None, url: str | None) -> tuple:
    return (*engine_choice(engine, url, model), model, adapter)


def get_engine(model: str, adapter: str | None = None, *, engine: str | None = None, url: str | None = None) -> Engine:
    """The engine for `model` with `adapter` as its default, loaded once per process and shared by all users."""
    key = _key(model, adapter, engine, url)
    with _engines_lock:  # several browser sessions may ask at once; load once
        if key not in _engines:
            factory, _ = _registry[key[0]]
            try:
                _engines[key] = factory(model, adapter, key[1])
            except VoxQLError as error:
                _load_errors[key] = str(error)
                raise
            _load_errors.pop(key, None)
        return _engines[key]


def loaded_engine(model: str, adapter: str | None = None, *, engine: str | None = None,
                  url: str | None = None) -> Engine | None:
    """The engine if it is already loaded, without loading it (for status displays)."""
    return _engines.get(_key(model, adapter, engine, url))


def load_error(model: str, adapter: str | None = None, *, engine: str | None = None, url: str | None = None) -> str | None:
    """Why the last attempt to load this engine failed, if it did."""
    return _load_errors.get(_key(model, adapter, engine, url))


# -- the built-in engines (imported when first chosen: vLLM's client needs no torch, transformers' does) ---------
def _transformers(model: str, adapter: str | None, url: str | None) -> Engine:
    if url:
        raise BadInput("the transformers engine runs in this process; a URL needs --engine openai or vllm")
    from pipelines.speech.ultravox import is_ultravox

    if is_ultravox(model):  # a speech-in LLM: the same engine, with audio in the prompt
        from pipelines.engine.ultravox_engine import UltravoxEngine

        return UltravoxEngine(model, adapter)
    from pipelines.engine.transformers_engine import TransformersEngine

    return TransformersEngine(model, adapter)


def _llamacpp(model: str, adapter: str | None, url: str | None) -> Engine:
    if url:
        raise BadInput("the llamacpp engine runs in this process; a URL needs --engine openai or vllm")
    from pipelines.speech.ultravox import is_ultravox

    if is_ultravox(model):  # llama.cpp takes no audio here: the speech-in model stays on transformers
        return _transformers(model, adapter, url)
    from pipelines.engine.llamacpp_engine import LlamaCppEngine

    return LlamaCppEngine(model, adapter)


def _vllm(model: str, adapter: str | None, url: str | None) -> Engine:
    from pipelines.engine.vllm_engine import VLLMEngine
    from pipelines.speech.ultravox import is_ultravox

    return VLLMEngine(model, adapter, url=url, audio_input=is_ultravox(model))


def _openai(model: str, adapter: str | None, url: str | None) -> Engine:
    if not url:
        raise BadInput(f"the openai engine needs the server's URL: --engine-url or {ENGINE_URL_ENV}")
    from pipelines.engine.openai_engine import OpenAIEngine
    from pipelines.speech.ultravox import is_ultravox

    return OpenAIEngine(model, adapter, url=url, audio_input=is_ultravox(model))


register_engine("transformers", _transformers, "in-process transformers + PEFT (CPU or CUDA); the default for "
                                               "models that are not GGUF files")
register_engine("llamacpp", _llamacpp, "in-process llama.cpp on the GGUF model (CPU): the fastest on a CPU, and the "
                                       "default for the embedded model once `bash scripts/install.sh` has built it")
register_engine("vllm", _vllm, "vLLM: a local server started from `bash scripts/install-vllm.sh`'s venv, "
                               "or the one at --engine-url")
register_engine("openai", _openai, "any OpenAI-compatible server at --engine-url (vLLM, SGLang, TGI...)")
