"""Loading an adapter folder into a running engine, again when it has been retrained since.

The app's Train tab uses this to put a freshly trained adapter into the shared engine that "Ask your data"
answers with; a script holding an engine can do the same.
"""

from __future__ import annotations

import re
import threading
import weakref
from pathlib import Path

# engine -> {adapter folder (resolved): weights' mtime when it was loaded}. Tied to the engine's life, like the
# engine cache it sits beside.
_LOADED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _weights_mtime(folder: Path) -> float:
    return max((p.stat().st_mtime for p in folder.glob("adapter_model.*")), default=0.0)


def ensure_adapter(engine, folder: str | Path, reserved: tuple[str, ...] = ()) -> str:
    """The engine's name for the adapter in `folder`, loading it first when the engine lacks it or holds an
    older training of it. A new name is the folder's name, numbered when taken (or in `reserved`)."""
    folder = Path(folder)
    key = str(folder.resolve())
    weights = _weights_mtime(folder)
    with _LOCK:
        versions = _LOADED.setdefault(engine, {})
        for name, spec in engine.info.adapters.items():
            if Path(spec).resolve() == folder.resolve() and versions.get(key, weights) == weights:
                return name
        base_name = re.sub(r"[^A-Za-z0-9._-]", "-", folder.name) or "adapter"
        name, number = base_name, 2
        while name in engine.info.adapters or name in reserved:
            name, number = f"{base_name}-{number}", number + 1
        engine.load_adapter(str(folder), name)
        versions[key] = weights
        return name
