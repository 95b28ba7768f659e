"""Generation engines, and the process-wide cache of loaded ones (the only mutable module state: models)."""

from __future__ import annotations

import threading

from pipelines.engine.base import DEFAULT_ADAPTER, Engine, EngineInfo, Generation, Message, SamplingParams, TextStream
from pipelines.errors import VoxQLError

__all__ = ["DEFAULT_ADAPTER", "Engine", "EngineInfo", "Generation", "Message", "SamplingParams", "TextStream",
           "get_engine", "loaded_engine", "load_error"]

_engines: dict[tuple[str, str | None], Engine] = {}
_load_errors: dict[tuple[str, str | None], str] = {}
_engines_lock = threading.Lock()


def get_engine(model: str, adapter: str | None = None) -> Engine:
    """The engine for `model` with `adapter` as its default, loaded once per process and shared by all users."""
    key = (model, adapter)
    with _engines_lock:  # several browser sessions may ask at once; load once
        if key not in _engines:
            from pipelines.engine.transformers_engine import TransformersEngine

            try:
                _engines[key] = TransformersEngine(model, adapter)
            except VoxQLError as error:
                _load_errors[key] = str(error)
                raise
            _load_errors.pop(key, None)
        return _engines[key]


def loaded_engine(model: str, adapter: str | None = None) -> Engine | None:
    """The engine if it is already loaded, without loading it (for status displays)."""
    return _engines.get((model, adapter))


def load_error(model: str, adapter: str | None = None) -> str | None:
    """Why the last attempt to load this engine failed, if it did."""
    return _load_errors.get((model, adapter))
