"""The Ask tab in a real browser (Debian's Chromium through Playwright): run SQL on concert_singer, read the
table, switch database and see the answer go. Screenshots go to $VOXQL_SCREENSHOTS (default: a temp folder)."""

from __future__ import annotations


import pytest

from tests.listen_browser import chromium_missing

reason = chromium_missing()
pytestmark = pytest.mark.skipif(reason is not None, reason=reason or "")


@pytest.fixture(scope="module")
def app_url(tiny_llama_dir, taught_adapter_dir):
    import app
    from pipelines.profiles import resolve_profile

    profile = resolve_profile("cpu", sql_model=str(tiny_llama_dir), sql_adapter=str(taught_adapter_dir))
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
