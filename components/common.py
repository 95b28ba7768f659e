"""Small pieces the tabs share: how errors and the live model look."""

from __future__ import annotations

import html

from pipelines.engine import EngineInfo
from pipelines.engine.loading import display_name
from pipelines.profiles import Profile


def error_markdown(message: str) -> str:
    return f"**Error:** {html.escape(message)}"


def sql_model_markdown(profile: Profile, info: EngineInfo | None, load_error: str | None = None) -> str:
    """One line: which model, adapter, engine and device answer questions."""
    if load_error:
        return f"**Model:** {display_name(profile.sql_model)} · not available: {html.escape(load_error)}"
    if info is None:
        adapter = profile.sql_adapter or "none"
        return f"**Model:** {display_name(profile.sql_model)} · adapter: {adapter} · profile `{profile.name}` · loading…"
    default = info.adapters.get(info.default_adapter) if info.default_adapter else None
    adapter = default or "none (base model only)"
    return (
        f"**Model:** {info.model} · **adapter:** {adapter} · **engine:** {info.engine} · "
        f"**device:** {info.device} ({info.dtype}) · profile `{profile.name}`"
    )
