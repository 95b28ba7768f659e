"""Small pieces the tabs share: how errors and the live model look."""

from __future__ import annotations

import html
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
