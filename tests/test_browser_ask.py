"""The Ask tab in a real browser (Debian's Chromium through Playwright): run SQL on concert_singer, read the
table, switch database and see the answer go. Screenshots go to $VOXQL_SCREENSHOTS (default: a temp folder)."""

from __future__ import annotations


import pytest

from tests.listen_browser import chromium_missing

reason = chromium_missing()
pytestmark = pytest.mark.skipif(reason is not None, reason=reason or "")


@pytest.fixture(scope="module")
def app_url(tiny_llama_dir, taught_adapter_dir, tiny_ultravox):
    import app
    from pipelines.profiles import resolve_profile

    profile = resolve_profile("cpu", sql_model=str(tiny_llama_dir), sql_adapter=str(taught_adapter_dir),
                              speech_sql_model=str(tiny_ultravox))
    demo = app.build_app(profile)
    _, url, _ = demo.queue().launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    yield url
    demo.close()


def pick_database(page, name: str) -> None:
    page.locator("#db-picker input").click()
    page.get_by_role("option", name=name, exact=True).click()


def test_run_sql_on_concert_singer_then_switching_database_clears_it(page, screenshots):
    from playwright.sync_api import expect

    pick_database(page, "concert_singer")
    expect(page.locator("#schema")).to_contain_text("singer", timeout=10_000)
    editor = page.locator("#sql .cm-content")
    editor.click()
    page.keyboard.type("SELECT count(*) AS singers FROM singer")
    page.locator("#run-sql").click()
    results = page.locator("#results")
    expect(results).to_contain_text("singers", timeout=15_000)
    expect(results).to_contain_text("6")
    page.screenshot(path=str(screenshots / "ask.png"), full_page=True)

    pick_database(page, "world_1")
    expect(results).to_contain_text("no result yet", timeout=10_000)
    expect(results).not_to_contain_text("singers")
    expect(editor).to_have_text("")


def test_a_question_still_running_when_the_database_changes_is_stopped(page, monkeypatch):
    """Asked on shop and held until the picker says world_1: its answer must not appear under world_1."""
    import threading
    import time

    from playwright.sync_api import expect

    from components import ask
    from tests.conftest import TAUGHT_QUESTION

    pick_database(page, "shop")
    question, results = page.locator("#question textarea"), page.locator("#results")
    question.fill(TAUGHT_QUESTION)
    question.press("Enter")
    expect(results).to_contain_text("5000", timeout=60_000)  # answered as usual (and the model is loaded)

    entered, release, finished = threading.Event(), threading.Event(), threading.Event()
    answer_stream = ask._answer_stream

    def held(*args):
        entered.set()
        release.wait(30)
        yield from answer_stream(*args)
        finished.set()

    monkeypatch.setattr(ask, "_answer_stream", held)
    question.press("Enter")
    assert entered.wait(30)
    pick_database(page, "world_1")
    expect(page.locator("#schema")).to_contain_text("countrylanguage", timeout=10_000)
    release.set()
    finished.wait(10)  # set only if the question went on: then its answer reaches the page now
    time.sleep(1)
    expect(results).to_contain_text("no result yet")
    expect(results).not_to_contain_text("5000")
    expect(page.locator("#sql .cm-content")).to_have_text("")


def test_ask_by_voice_answers_the_cascade_and_end_to_end_side_by_side(page, screenshots, tmp_path):
    """An uploaded spoken question (espeak-ng) on concert_singer: the cascade's transcript and both answers, each
    checked, run and timed. End to end is a tiny random Ultravox over the same tiny Llama and adapter."""
    import shutil
    import subprocess

    from playwright.sync_api import expect

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed: no spoken question to upload")
    clip = tmp_path / "question.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(clip), "How many singers do we have?"], check=True)
    pick_database(page, "concert_singer")
    page.get_by_text("Ask by voice: the cascade and end to end").click()
    page.locator("#voice-ask").click()  # nothing recorded yet
    expect(page.locator("#voice-cascade-status")).to_contain_text("record or upload", timeout=10_000)

    page.locator("#voice-question").get_by_role("button", name="Upload file").click()  # the recorder shows first
    page.locator("#voice-question input[type=file]").set_input_files(str(clip))
    expect(page.locator("#voice-question audio, #voice-question .waveform-container").first).to_be_attached(
        timeout=15_000)
    page.locator("#voice-ask").click()
    expect(page.locator("#voice-transcript textarea")).to_have_value("How many singers do we have?", timeout=120_000)
    expect(page.locator("#voice-cascade-status")).to_contain_text("s in all (transcription", timeout=120_000)
    expect(page.locator("#voice-direct-status")).to_contain_text("s in all", timeout=120_000)
    page.locator("#voice-panel").screenshot(path=str(screenshots / "ask-by-voice.png"))
