"""Small pieces the tabs share: how errors and the live model look."""

from __future__ import annotations

import html
import inspect
import typing
from collections.abc import Callable
from pathlib import Path

from pipelines.engine import EngineInfo
from pipelines.engine.loading import display_name
from pipelines.profiles import Profile


def error_markdown(message: str) -> str:
    return f"**Error:** {html.escape(message)}"


def short_name(spec: str | None) -> str:
    """An adapter's name as people say it: the last part of its path or Hub id, never a server folder."""
    return Path(str(spec).rstrip("/")).name if spec else "none"


def model_name(spec: str) -> str:
    """A model as people say it: the embedded model's name, a Hub id, or a local folder's last part."""
    shown = display_name(spec)
    return short_name(shown) if shown == spec and Path(spec).is_absolute() else shown


def sql_model_markdown(profile: Profile, info: EngineInfo | None, load_error: str | None = None,
                       adapter: str | None = None) -> str:
    """One line: which model, adapter, engine and device answer questions.

    `adapter` is the Adapter picker's value: "base" for none, a loaded adapter's name, or None for the default.
    """
    if load_error:
        return f"**Model:** {model_name(profile.sql_model)} · not available: {html.escape(load_error)}"
    if info is None:
        return (f"**Model:** {model_name(profile.sql_model)} · adapter: {short_name(profile.sql_adapter)} · "
                f"profile `{profile.name}` · loading…")
    name = info.default_adapter if adapter in (None, "default") else adapter
    spec = info.adapters.get(name) if name and name != "base" else None
    shown = short_name(spec) if spec else "none (base model only)"
    return (
        f"**Model:** {short_name(info.model)} · **adapter:** {html.escape(shown)} · **engine:** {info.engine} · "
        f"**device:** {info.device} ({info.dtype}) · profile `{profile.name}`"
    )


def bind_context(fn: Callable, ctx) -> Callable:
    """`fn` with its first parameter (the app-wide context) filled in, looking to Gradio like a plain handler: its
    name, its other parameters (named API parameters) and their resolved type hints. (functools.partial would hide
    the hints, and Gradio injects `gr.Request` by its hint.)"""
    if inspect.isgeneratorfunction(fn):
        def handler(*args, **kwargs):
            yield from fn(ctx, *args, **kwargs)
    else:
        def handler(*args, **kwargs):
            return fn(ctx, *args, **kwargs)
    signature = inspect.signature(fn)
    first, *rest = signature.parameters
    handler.__signature__ = signature.replace(parameters=[signature.parameters[name] for name in rest])
    try:
        hints = typing.get_type_hints(fn)
    except (NameError, TypeError):
        hints = {}
    hints.pop(first, None)
    handler.__annotations__ = hints
    handler.__name__, handler.__qualname__, handler.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
    return handler
