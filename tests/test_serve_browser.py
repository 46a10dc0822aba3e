"""End to end in a real headless browser (Debian's chromium, driven by Playwright): generate a grid,
create a study, take part by clicking, watch the results page update. Screenshots are kept in
test-artifacts/serve/ (or $GANFORGE_TEST_ARTIFACTS)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (pip) is not installed")

from ganforge.serve.app import create_app, open_runs, serve_in_thread  # noqa: E402
from ganforge.serve.store import StudyStore  # noqa: E402
from tests.conftest import ROOT, served_runs  # noqa: E402


def chromium() -> str | None:
    for candidate in (os.environ.get("GANFORGE_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def browser():
    path = chromium()
    if path is None:
        pytest.skip("no chromium installed (apt-get install chromium; .ci/run does) or set GANFORGE_CHROMIUM")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture
def artifacts() -> Path:
    folder = Path(os.environ.get("GANFORGE_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "serve"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait_for_image(page, selector: str) -> None:
    page.wait_for_function(f"() => {{ const i = document.querySelector('{selector}'); "
                           "return i && !i.classList.contains('hidden') && i.complete && i.naturalWidth > 0; }")  # fmt: skip


def test_generate_study_and_results_in_chromium(browser, artifacts, tmp_path):
    runs = served_runs(tmp_path)
    db = tmp_path / "studies.db"
    app = create_app(open_runs(runs), StudyStore(db))
    with serve_in_thread(app) as base:
        evaluator = browser.new_context(viewport={"width": 1200, "height": 900})
        page = evaluator.new_page()
        problems = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)

        # Generate: a grid on load, then class 7 with a fixed seed, then an interpolation strip
        page.goto(base + "/")
        wait_for_image(page, "#grid")
        page.select_option("#class", "7")
        page.fill("#seed", "42")
        with page.expect_response(lambda r: "grid.png" in r.url and "class=7" in r.url and "seed=42" in r.url) as grid:
            page.click("#go")
        assert grid.value.status == 200 and grid.value.headers["x-seed"] == "42"
        wait_for_image(page, "#grid")
        assert "seed 42" in page.text_content("#seed-used")
        assert page.get_attribute("#download", "href").endswith("&download=1")
        page.fill("#seed-a", "3")
        page.fill("#seed-b", "4")
        page.click("#interp")
        wait_for_image(page, "#strip")
        page.screenshot(path=str(artifacts / "generate.png"), full_page=True)

        # Studies: create one over both runs, 3 real + 3 generated images per rater and run
        page.goto(base + "/studies")
        page.fill("#name", "browser study")
        page.fill("#per", "3")
        page.check("#run-1")
        page.click("#create")
        page.wait_for_selector("#created:not(.hidden)")
        rate_link = page.text_content("#rate-link")
        results_url = page.get_attribute("#results-link", "href")
        page.wait_for_selector("#list tr")
        page.screenshot(path=str(artifacts / "studies.png"), full_page=True)

        results = evaluator.new_page()
        results.goto(base + results_url)
        results.wait_for_selector("#table tr")
        assert "no answers yet" in results.text_content("#table")

        # A rater in a separate browser context; everything it receives is recorded
        rater_ctx = browser.new_context(viewport={"width": 900, "height": 800})
        received: list[tuple[str, str]] = []

        def record(response):
            try:
                received.append((response.url, response.body().decode("utf-8", "replace")))
            except Exception:  # noqa: BLE001 - redirects and aborted requests have no body
                pass

        rater_ctx.on("response", record)
        rater = rater_ctx.new_page()
        rater.on("pageerror", lambda e: problems.append(str(e)))
        rater.goto(rate_link)
        rater.fill("#name", "playwright")
        rater.click("#start")
        rater.wait_for_selector("#tutorial:not(.hidden)")
        rater.wait_for_function("() => [...document.querySelectorAll('#examples img')].every(i => i.naturalWidth > 0)")
        assert rater.locator("#examples figure").count() == 4
        rater.screenshot(path=str(artifacts / "rate-tutorial.png"), full_page=True)
        rater.click("#begin")
        total = 2 * (3 + 3)
        for k in range(total):
            rater.wait_for_function(f"() => document.getElementById('progress').textContent.startsWith('{k + 1} of {total}')")
            wait_for_image(rater, "#image")
            if k == 1:
                rater.screenshot(path=str(artifacts / "rate-judge.png"), full_page=True)
            if k % 3 == 0:
                rater.keyboard.press("f")  # the keyboard shortcut
            else:
                rater.click("#real" if k % 3 == 1 else "#fake")
            if k == total - 1:
                rater.wait_for_selector("#done:not(.hidden)")

        # the results page, left open, picks the votes up by itself
        results.wait_for_function("() => [...document.querySelectorAll('#table td.answers')].map(t => t.textContent).join() === '6,6'",
                                  timeout=15000)  # fmt: skip
        assert "%" in results.text_content("#table")
        results.screenshot(path=str(artifacts / "results.png"), full_page=True)
        csv = results.request.get(base + results.get_attribute("#csv", "href"))
        assert csv.status == 200 and csv.text().count("\n") == total + 1

        # the answer key is nowhere in what the rater's browser received
        con = sqlite3.connect(db)
        key = con.execute("SELECT admin_key FROM studies").fetchone()[0]
        rated = {r[0] for r in con.execute("SELECT image_id FROM votes")}
        for url, body in received:
            assert key not in body
            if "/tutorial" in url:
                shown = {x["image"] for x in json.loads(body)["examples"]}
                assert not shown & rated  # labelled examples are never among the judged images
            elif url.startswith(base + "/api/"):
                assert '"truth"' not in body and '"real"' not in body and '"fake"' not in body, url
        assert len(rated) == total
        assert not problems, problems
        evaluator.close()
        rater_ctx.close()
