"""What a first-time user meets in the browser (issue #30): the Studies page of `ganforge serve`
pre-selects every run serve was started with. In headless chromium, as tests/test_serve_browser.py."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (pip) is not installed")

from ganforge.serve.app import create_app, open_runs, serve_in_thread, studies_url  # noqa: E402
from ganforge.serve.store import StudyStore  # noqa: E402
from tests.conftest import served_runs  # noqa: E402
from tests.test_serve_browser import chromium  # noqa: E402


def test_the_studies_page_preselects_every_served_run(tmp_path, isolated_env):
    path = chromium()
    if path is None:
        pytest.skip("no chromium installed (apt-get install chromium) or set GANFORGE_CHROMIUM")
    app = create_app(open_runs(served_runs(tmp_path)), StudyStore(tmp_path / "studies.db"))
    with serve_in_thread(app) as base, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page()
            page.goto(studies_url(app, base))  # the link `ganforge serve` prints, with the admin key
            page.wait_for_selector("#runs input")
            boxes = page.locator("#runs input[type=checkbox]")
            assert boxes.count() == 2
            assert all(boxes.nth(i).is_checked() for i in range(boxes.count()))
            page.wait_for_function("() => !location.search")  # the admin key still leaves the address bar
            page.fill("#name", "every run")
            page.fill("#per", "3")
            page.click("#create")  # with nothing ticked by hand, the study covers both runs
            page.wait_for_selector("#list tr")
            assert "cond, plain" in page.text_content("#list")
        finally:
            browser.close()
