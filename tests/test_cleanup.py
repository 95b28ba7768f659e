"""Nothing is left behind: a closed page's upload folder goes at once, and SIGTERM removes every session folder
and every SQL worker with its folder (the app's real SIGTERM handler, in a real child process)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

from components import ask
from pipelines.sql.demo_data import ensure_demo_databases
from pipelines.profiles import resolve_profile

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_closing_the_page_removes_its_upload_folder(tmp_path):
    ctx = ask.AskContext(resolve_profile("cpu"), ensure_demo_databases())
    csv = tmp_path / "sales.csv"
    csv.write_text("region,amount\nnorth,3\nsouth,5\n")
    request = SimpleNamespace(session_hash="page-1")
    picker, box, message, session = ask.upload_file(ctx, str(csv), {}, request)
    folder = Path(session["dir"])
    assert picker.value == "sales" and folder.is_dir()
    ask.close_session(request)
    assert not folder.exists()
    # The same session coming back (Gradio keeps its state an hour) is told plainly, with no server path.
    schema, description, *_ = ask.pick_database(ctx, "sales", session)
    assert "gone" in description and str(folder) not in description
    ask.close_session(SimpleNamespace(session_hash="never-uploaded"))  # nothing to remove: no error


def test_sigterm_removes_session_folders_and_sql_workers():
    script = textwrap.dedent("""
        import json, sys, time
        from pipelines.shutdown import exit_cleanly_on_sigterm
        from pipelines.sql import sandbox
        from pipelines.sql.uploads import new_session_dir

        exit_cleanly_on_sigterm()
        sandbox.warm_up()
        deadline = time.monotonic() + 60
        while not sandbox._LIVE_WORKERS and time.monotonic() < deadline:
            time.sleep(0.05)
        folders = [str(new_session_dir()), *(w.folder for w in sandbox._LIVE_WORKERS)]
        pids = [w.process.pid for w in sandbox._LIVE_WORKERS]
        print(json.dumps({"folders": folders, "pids": pids}), flush=True)
        time.sleep(120)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        state = json.loads(child.stdout.readline())
        assert len(state["folders"]) == 2 and all(Path(f).is_dir() for f in state["folders"])
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        child.kill()
    assert not any(Path(f).exists() for f in state["folders"])
    for pid in state["pids"]:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
