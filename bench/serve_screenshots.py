"""Screenshots of `ganforge serve` for the README, taken in headless chromium (Playwright):
the Generate page and a rater's view of a real-or-fake study.

    python bench/serve_screenshots.py RUN [RUN ...] --out docs/img
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", default="docs/img")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from ganforge.serve.app import create_app, open_runs, serve_in_thread, studies_url
    from ganforge.serve.store import StudyStore

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    app = create_app(open_runs(args.runs), StudyStore(Path(tempfile.mkdtemp()) / "shots.db"))
    with serve_in_thread(app) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        page.goto(base + "/")
        page.wait_for_function("() => document.getElementById('grid').naturalWidth > 0")
        page.select_option("#n", "100")
        page.fill("#seed", "7")
        page.click("#go")
        page.fill("#seed-a", "11")
        page.fill("#seed-b", "12")
        page.click("#interp")
        page.wait_for_function("() => document.getElementById('strip').naturalWidth > 0")
        page.screenshot(path=str(out / "serve-generate.png"), full_page=True)

        page.goto(studies_url(app, base))  # the link `ganforge serve` prints: it carries the admin key
        page.fill("#name", "digits")
        page.fill("#per", "20")
        page.click("#create")
        page.wait_for_selector("#created:not(.hidden)")
        rater = browser.new_page(viewport={"width": 800, "height": 560})
        rater.goto(page.text_content("#rate-link"))
        rater.fill("#name", "screenshot")
        rater.click("#start")
        rater.click("#begin")
        rater.wait_for_function("() => document.getElementById('image').naturalWidth > 0")
        rater.screenshot(path=str(out / "serve-rate.png"))
        browser.close()
    print(f"wrote {out / 'serve-generate.png'} and {out / 'serve-rate.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
