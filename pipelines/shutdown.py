"""Ending the app cleanly on SIGTERM (docker stop, a Space restarting, systemd, Ctrl-C's quieter cousin).

Python's default for SIGTERM is to die at once, running no atexit handler: the SQL sandbox workers and their
folders, and the uploads' session folders, would stay behind. Turned into `SystemExit`, SIGTERM unwinds the main
thread (where Gradio's `launch()` waits) and the interpreter runs those handlers on its way out.
"""

from __future__ import annotations

import signal


def exit_cleanly_on_sigterm() -> None:
    """Call from the main thread before serving."""

    def on_sigterm(signum, frame):
        raise SystemExit(128 + signum)  # the shell's convention for "ended by signal N"

    signal.signal(signal.SIGTERM, on_sigterm)
