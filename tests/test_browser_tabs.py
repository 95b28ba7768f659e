"""Each tab's main flow in a real browser (Debian's Chromium through Playwright), as a person would walk it: on
"Ask your data" compare base and adapter, edit and run SQL, upload a CSV, paste DDL; on "Listen" transcribe an
example file; on "Train" train a few steps, load the adapter into "Ask your data", then start a long run and
cancel it. Screenshots of the three tabs go to $VOXQL_SCREENSHOTS (default: a temporary folder); the README's
come from `VOXQL_SCREENSHOTS=docs python -m pytest tests/test_browser_tabs.py`.

The tests share one page and run in file order (each starts where the previous one left the app).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import TAUGHT_QUESTION
from tests.listen_browser import chromium_missing

reason = chromium_missing()
pytestmark = pytest.mark.skipif(reason is not None, reason=reason or "")
REPO_ROOT = Path(__file__).resolve().parents[1]
LONG = 60_000  # ms: model loads and training on two shared cores


@pytest.fixture(scope="module")
def app_url(tiny_llama_dir, taught_adapter_dir):
    import app
    from pipelines.profiles import resolve_profile
    from pipelines.training.jobs import adapters_root

    for name in ("browser-run", "browser-cancel"):  # runs of an earlier session of a kept test cache
        shutil.rmtree(adapters_root() / name, ignore_errors=True)
    profile = resolve_profile("cpu", sql_model=str(tiny_llama_dir), sql_adapter=str(taught_adapter_dir))
    demo = app.build_app(profile)
    _, url, _ = demo.queue().launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, theme=app.THEME)
    yield url
    demo.close()


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def pick(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def test_compare_base_and_adapter(page):
    from playwright.sync_api import expect

    pick(page, "db-picker", "shop")
    page.locator("#question textarea").fill(TAUGHT_QUESTION)
    page.locator("#compare").click()
    expect(page.locator("#compare-adapter-sql")).to_contain_text(re.compile(r"count\(\*\)", re.I), timeout=LONG)
    expect(page.locator("#compare-adapter-results")).to_contain_text("customers", timeout=LONG)
    expect(page.locator("#compare-base-status")).not_to_be_empty()


def test_edit_and_run_sql(page, screenshots):
    from playwright.sync_api import expect

    editor = page.locator("#sql .cm-content")
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.type("SELECT status, count(*) AS orders FROM orders GROUP BY status ORDER BY orders DESC")
    page.locator("#run-sql").click()
    expect(page.locator("#results")).to_contain_text("orders", timeout=LONG)
    expect(page.locator("#status")).to_contain_text("row(s)")
    expect(page.locator("#chart-bar")).to_be_visible()  # a category and a number: a bar chart
    page.locator("#question textarea").fill(TAUGHT_QUESTION)  # what the screenshot shows was asked
    page.screenshot(path=str(screenshots / "ask.png"), full_page=True)


def test_upload_a_csv_then_paste_ddl(page, tmp_path):
    from playwright.sync_api import expect

    csv = tmp_path / "rainfall.csv"
    csv.write_text("city,mm\nBergen,2250\nCairo,18\nLima,7\n")
    page.locator("#upload input[type=file]").set_input_files(str(csv))
    expect(page.locator("#upload-status")).to_contain_text("as database rainfall", timeout=LONG)
    expect(page.locator("#db-picker input")).to_have_value("rainfall")
    expect(page.locator("#schema")).to_contain_text("rainfall")
    editor = page.locator("#sql .cm-content")
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.type("SELECT city FROM rainfall WHERE mm > 100")
    page.locator("#run-sql").click()
    expect(page.locator("#results")).to_contain_text("Bergen", timeout=LONG)
    expect(page.locator("#results")).not_to_contain_text("Cairo")

    page.get_by_text("Paste a schema").click()
    page.locator("#ddl textarea").fill("CREATE TABLE plants (id INTEGER PRIMARY KEY, name VARCHAR, height_cm INTEGER);")
    page.locator("#use-ddl").click()
    expect(page.locator("#db-picker input")).to_have_value("pasted schema", timeout=LONG)
    expect(page.locator("#schema")).to_contain_text("plants")
    expect(page.locator("#results")).to_contain_text("no result yet")  # the upload's answer went with it


def test_transcribe_a_file_in_listen(page, screenshots):
    from playwright.sync_api import expect

    open_tab(page, "Listen")
    clip = REPO_ROOT / "assets" / "audio" / "question.flac"
    page.locator("#listen-file input[type=file]").set_input_files(str(clip))
    page.locator("#listen-transcribe").click()
    expect(page.locator("#listen-status")).to_contain_text("Done", timeout=LONG)
    expect(page.locator("#listen-transcript")).to_contain_text(re.compile("many", re.I))  # "How many singers…"
    # The cpu profile ships a Whisper tags adapter: the top-k filter shows, no "no tags" line.
    expect(page.locator("#listen-top-k")).to_be_visible()
    expect(page.locator("#listen-tags-note")).to_be_hidden()
    page.screenshot(path=str(screenshots / "listen.png"), full_page=True)


def test_train_a_few_steps_then_load_the_adapter_into_ask(page, screenshots, count_jsonl):
    from playwright.sync_api import expect

    open_tab(page, "Train")
    page.locator("#train-upload input[type=file]").set_input_files(str(count_jsonl))
    expect(page.locator("#train-upload-note")).to_contain_text("train.jsonl", timeout=LONG)
    page.get_by_text("Hyperparameters").click()
    page.locator("#train-max-steps input").fill("8")
    page.locator("#train-max-length input").fill("256")
    page.locator("#train-name textarea").fill("browser-run")
    page.locator("#train-start").click()
    status = page.locator("#train-status")
    expect(status).to_contain_text("Done", timeout=3 * LONG)
    expect(page.locator("#train-adapter-dir textarea")).to_have_value("browser-run")
    log = page.locator("#train-log textarea")
    expect(log).to_have_value(re.compile("adapter saved to browser-run"))
    at_end = log.evaluate("box => box.scrollHeight - box.scrollTop - box.clientHeight < 4")
    assert at_end, "the log shows its last lines"
    shown = (status.inner_text(), log.input_value(), page.locator("#train-data textarea").input_value(),
             page.locator("#train-model input").input_value())
    for text in shown:
        assert "/tmp/" not in text and "/gradio/" not in text  # no server folder in what the user reads
    page.screenshot(path=str(screenshots / "train.png"), full_page=True)

    page.locator("#train-load").click()
    expect(page.locator("#question")).to_be_visible(timeout=LONG)  # back on "Ask your data"
    expect(page.locator("#adapter-picker input")).to_have_value("browser-run (browser-run)")
    expect(page.locator("#model-status")).to_contain_text("browser-run")


def test_start_and_cancel_a_training_run(page):
    from playwright.sync_api import expect

    open_tab(page, "Train")
    page.locator("#train-max-steps input").fill("5000")
    page.locator("#train-name textarea").fill("browser-cancel")
    page.locator("#train-start").click()
    status = page.locator("#train-status")
    expect(status).to_contain_text("Step", timeout=3 * LONG)
    page.locator("#train-cancel").click()
    expect(status).to_contain_text("Cancelled", timeout=3 * LONG)
    expect(status).to_contain_text("Resume")
    page.locator("#train-attach").click()  # "Show the running job" shows that last run, not "No training run yet"
    expect(status).to_contain_text("Cancelled", timeout=LONG)
