"""End to end in a real headless browser (Debian's chromium, driven by Playwright): generate a grid,
create a study, take part by clicking, watch the results page update; translate a test input and an
uploaded image with a pix2pix run and download the output. Screenshots are kept in
test-artifacts/serve/ (or $GANFORGE_TEST_ARTIFACTS)."""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (pip) is not installed")

from ganforge.serve.app import create_app, open_runs, serve_in_thread, studies_url  # noqa: E402
from ganforge.serve.store import StudyStore  # noqa: E402
from tests.conftest import ROOT, served_runs, shared_data  # noqa: E402


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
        page.goto(base + "/studies")  # without the admin key: the page says where to get it
        page.wait_for_function("() => document.getElementById('error').textContent.includes('admin key')")
        page.goto(studies_url(app, base))  # the link `ganforge serve` prints
        page.wait_for_function("() => !location.search")  # the key leaves the address bar
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
        rater.wait_for_function("() => document.getElementById('title').textContent.includes('browser study')")
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


def test_translate_upload_and_download_in_chromium(browser, artifacts, tmp_path, monkeypatch):
    import torch
    from PIL import Image

    from tests.test_serve_translate import gan_run, photo, pix2pix_run, png_bytes

    if shared_data() is not None:
        monkeypatch.setenv("GANFORGE_DATA", str(shared_data()))
    app = create_app(open_runs([gan_run(tmp_path), pix2pix_run(tmp_path)]), StudyStore(tmp_path / "s.db"))
    with serve_in_thread(app) as base:
        context = browser.new_context(viewport={"width": 1100, "height": 1000}, accept_downloads=True)
        page = context.new_page()
        problems = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)

        # the Generate page: run 1 translates, so it links to its Translate page instead of generating
        page.goto(base + "/")
        wait_for_image(page, "#grid")  # run 0, the GAN, generates on load
        assert page.is_visible("#nav-translate")
        page.select_option("#run", "1")
        page.wait_for_selector("#translate-note:not(.hidden)")
        assert page.is_disabled("#go")
        page.click("#translate-link")
        page.wait_for_url(base + "/translate/1")

        # a test input: its thumbnail, then the input as the model sees it beside the output
        page.wait_for_function("() => document.querySelectorAll('#tests img').length === 16 && "
                               "[...document.querySelectorAll('#tests img')].every(i => i.complete && i.naturalWidth > 0)")  # fmt: skip
        assert page.is_hidden("#direction-label")  # pix2pix: one direction
        page.click("#test-3")
        wait_for_image(page, "#output")
        assert "test input 3 of edges2fashion:test" in page.text_content("#fitted")

        # an upload of another size and in colour: resized and converted, shown, downloaded
        page.set_input_files("#file", files=[{"name": "photo.png", "mimeType": "image/png", "buffer": png_bytes(photo(48, 64))}])
        page.wait_for_function("() => document.getElementById('fitted').textContent.includes('photo.png')")
        wait_for_image(page, "#input")
        fitted = page.text_content("#fitted")
        assert "resized from 64x48 to 28x28" in fitted and "colour converted to gray" in fitted
        page.screenshot(path=str(artifacts / "translate.png"), full_page=True)
        with page.expect_download() as download:
            page.click("#download")
        assert download.value.suggested_filename == "edges-a2b-photo.png"
        saved = np.asarray(Image.open(io.BytesIO(Path(download.value.path()).read_bytes())))
        gen = app.state.runs[1].generator(None, "cpu")
        upload = torch.from_numpy(photo(48, 64)).permute(2, 0, 1)[None]
        assert np.array_equal(saved, gen.translate(upload)[0, 0].numpy())  # the model's output, as a PNG

        # a file that is not an image: a clear message on the page, nothing else breaks
        page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}])
        page.wait_for_function("() => document.getElementById('error').textContent.includes('unsupported upload type')")
        assert "PNG, JPEG" in page.text_content("#error")
        expected = [p for p in problems if "status of 415" in p]  # Chromium logs the refused request itself
        assert len(expected) == 1 and problems == expected, problems
        context.close()
