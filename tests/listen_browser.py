"""Drive the Listen tab in a real browser: Debian's Chromium through Playwright, with a fake microphone that
plays a WAV file (`--use-file-for-fake-audio-capture`). Used by tests/test_browser_listen.py.

Chromium's fake capture device loops its file, so the WAV carries the spoken clip followed by a long
silence, and the recording is stopped well before the loop would start the speech again.
"""

from __future__ import annotations

import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CHROMIUM = "/usr/bin/chromium"
MIC_RATE = 48_000
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
         "--use-fake-device-for-media-stream", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]
RECEIVED = re.compile(r"received (\d+(?:\.\d+)?) s")
RECORDED = re.compile(r"of (\d+(?:\.\d+)?) s recorded by the browser")
HANDLER = re.compile(r"p50 (\d+(?:\.\d+)?) ms, p95 (\d+(?:\.\d+)?) ms over (\d+) chunks")
# What the page's transport (components/mic_transport.py) says of its last recording.
PAGE_STATS = """() => { const r = window.voxqlMic && window.voxqlMic.current;
  return r ? {chunks: r.seq, samples: r.samples, rate: r.rate, failed: r.failed, ended: r.ended, error: r.error,
              wall_s: r.wall_s} : null; }"""


def listen_demo(profile):
    """A Blocks with the Listen tab alone (queued, not launched), as the app lays it out."""
    import gradio as gr

    from components.listen import build_listen_tab

    with gr.Blocks() as demo:
        with gr.Tabs() as tabs:
            with gr.Tab("Listen", id="listen"):
                build_listen_tab(profile, gr.Textbox(visible=False), tabs)
    return demo.queue()


@contextmanager
def app_page(url: str):
    """A Chromium page on the app at `url`, once the Ask tab's SQL box is there."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            tab = chromium.new_page(viewport={"width": 1280, "height": 1000})
            tab.goto(url)
            tab.locator("#sql").wait_for()
            yield tab
        finally:
            chromium.close()


def screenshot_folder(tmp_path_factory) -> Path:
    """$VOXQL_SCREENSHOTS, or a temporary folder."""
    import os

    folder = Path(os.environ.get("VOXQL_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is not installed (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; never `playwright install`)"
    return None


def fake_mic_wav(samples_16k: np.ndarray, path: Path, silence_after_s: float = 40.0) -> Path:
    """The clip as Chromium's fake microphone wants it: 48 kHz mono 16-bit WAV, then silence (it loops)."""
    import soundfile as sf
    import soxr

    audio = soxr.resample(samples_16k, 16_000, MIC_RATE)
    audio = np.concatenate([audio, np.zeros(int(silence_after_s * MIC_RATE), dtype=np.float32)])
    sf.write(path, np.clip(audio, -1, 1), MIC_RATE, subtype="PCM_16")
    return path


@contextmanager
def browser(wav: Path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM,
                                              args=FLAGS + [f"--use-file-for-fake-audio-capture={wav}"])
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Recording:
    """What a person would have seen: (seconds since Record, transcript text) whenever the text changed."""

    timeline: list[tuple[float, str]] = field(default_factory=list)
    recorded_s: float = 0.0  # from the Record click to the Stop click
    final_text: str = ""
    final_status: str = ""
    statuses: list[str] = field(default_factory=list)
    page: dict | None = None  # the page transport's own count (PAGE_STATS)

    @property
    def received_s(self) -> float | None:
        match = RECEIVED.search(self.final_status)
        return float(match.group(1)) if match else None

    @property
    def recorded_by_browser_s(self) -> float | None:
        match = RECORDED.search(self.final_status)
        return float(match.group(1)) if match else None

    @property
    def handler_ms(self) -> tuple[float, float, int] | None:
        match = HANDLER.search(self.final_status)
        return (float(match.group(1)), float(match.group(2)), int(match.group(3))) if match else None

    def first_time(self, predicate) -> float | None:
        return next((at for at, text in self.timeline if predicate(text)), None)


def open_listen_tab(context, url: str):
    page = context.new_page()
    page.goto(url)
    page.locator("#listen-mic").wait_for()
    return page


def transcript_text(page) -> str:
    """The transcript's words only (not its label, legend or loading timer)."""
    field = page.locator("#listen-transcript .textfield")
    return " ".join(field.inner_text().split()) if field.count() else ""


def status_text(page) -> str:
    return " ".join(page.locator("#listen-status .prose").first.inner_text().split()) \
        if page.locator("#listen-status .prose").count() else " ".join(page.locator("#listen-status").inner_text().split())


def start(page) -> float:
    page.locator("#listen-mic").get_by_role("button", name="Record").click()
    return time.monotonic()


def stop(page) -> float:
    page.locator("#listen-mic").get_by_role("button", name="Stop").click()
    return time.monotonic()


def record_together(pages: list, stagger_s: float, seconds: float, done_when=None, extra_s: float = 0.0,
                    poll_s: float = 0.1) -> list[Recording]:
    """Press Record on each page `stagger_s` apart, keep each recording for `seconds` (and up to `extra_s`
    more until `done_when(text)` holds for it: speaking on, in silence, until words show), press Stop, and wait
    for every final transcript. One thread drives all pages, as several people at once would."""
    recordings = [Recording() for _ in pages]
    starts: list[float | None] = [None] * len(pages)
    stops: list[float | None] = [None] * len(pages)
    began = time.monotonic()
    while any(stop_at is None for stop_at in stops):
        now = time.monotonic()
        for i, page in enumerate(pages):
            if starts[i] is None and now >= began + i * stagger_s:
                starts[i] = start(page)
            if starts[i] is None or stops[i] is not None:
                continue
            recording, elapsed = recordings[i], time.monotonic() - starts[i]
            text = transcript_text(page)
            if not recording.timeline or recording.timeline[-1][1] != text:
                recording.timeline.append((round(elapsed, 2), text))
            status = status_text(page)
            if not recording.statuses or recording.statuses[-1] != status:
                recording.statuses.append(status)
            satisfied = done_when is None or any(done_when(t) for _, t in recording.timeline)
            if elapsed >= seconds and (satisfied or elapsed >= seconds + extra_s):
                stops[i] = stop(page)
                recording.recorded_s = round(stops[i] - starts[i], 2)
        pages[0].wait_for_timeout(poll_s * 1000)
    for page, recording in zip(pages, recordings):
        recording.final_status = wait_done(page)
        recording.final_text = transcript_text(page)
        recording.page = page.evaluate(PAGE_STATS)
    return recordings


def wait_done(page, timeout_s: float = 180.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = status_text(page)
        if status.startswith("Done") or "Error" in status:
            return status
        page.wait_for_timeout(100)
    raise TimeoutError(f"no final transcript within {timeout_s} s; the status says: {status_text(page)!r}")
