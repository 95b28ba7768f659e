"""Loaded by every Python process of the vLLM server VoxQL starts (its PYTHONPATH holds this folder only).

The server's process ends itself when the app is gone: the server must not outlive an app that was killed
(PR_SET_PDEATHSIG would fire when the app's thread that started the server ends, not the app).

vLLM's guidance backend builds each request's matcher with llguidance's default parser limits (2,000 Earley
items per row). The schema-scoped SQL grammar keeps one branch per scope alive until FROM settles it and needs
more (pipelines/engine/grammar.py: MAX_ITEMS_IN_ROW, STEP_MAX_ITEMS), so the launcher passes those limits here
and `llguidance.LLMatcher(...)` gets them unless a caller gives its own.
"""

import os
import signal
import threading
import time

# Only the server's own process watches (its children stop with it): popped, so they do not inherit it.
_app_pid = os.environ.pop("VOXQL_APP_PID", None)
if _app_pid:

    def _end_with_parent() -> None:
        while os.getppid() == int(_app_pid):
            time.sleep(2)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=_end_with_parent, name="voxql-end-with-parent", daemon=True).start()

_ROW = os.environ.get("VOXQL_LLGUIDANCE_MAX_ITEMS_IN_ROW")
_STEP = os.environ.get("VOXQL_LLGUIDANCE_STEP_MAX_ITEMS")

if _ROW and _STEP:
    try:
        import llguidance
    except ImportError:  # a venv without llguidance has nothing to raise
        llguidance = None
    if llguidance is not None:
        _matcher_class = llguidance.LLMatcher  # a native class: it cannot be subclassed, so it is wrapped

        def _matcher_with_voxql_limits(tokenizer, grammar, log_level=1, limits=None):
            limits = limits or llguidance.LLParserLimits(max_items_in_row=int(_ROW), step_max_items=int(_STEP))
            return _matcher_class(tokenizer, grammar, log_level=log_level, limits=limits)

        for _name in dir(_matcher_class):  # its static methods (grammar_from_lark, ...) stay reachable
            if not _name.startswith("__"):
                setattr(_matcher_with_voxql_limits, _name, getattr(_matcher_class, _name))
        llguidance.LLMatcher = _matcher_with_voxql_limits
