"""An automated rater that answers a table's rating page in headless Chromium (Playwright), for the tiny scale and
as an end-to-end check of the page: subject similarity by pixel distance (the image whose mean absolute difference to
the mean reference image is smaller wins; within ``--tie`` of each other, a tie), prompt consistency always a tie
(nothing automatic judges it). Its votes are not people's judgements; they are written as rater ``--rater``.

usage: python scripts/rate_in_browser.py moslora-6 [--rater browser-pixel-distance] [--results results]
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from rankmix import rating


def pixels(data: bytes, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize(size), dtype=np.float32)


def main(argv: list[str] | None = None) -> int:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("table")
    ap.add_argument("--rater", default="browser-pixel-distance")
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--tie", type=float, default=2.0, help="mean absolute pixel difference under which it is a tie")
    a = ap.parse_args(argv)
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser_path:
        print("error: needs Chromium (apt-get install chromium)", file=sys.stderr)
        return 2
    server = rating.serve(a.results / a.table / "ratings" / "pairs.json", a.rater, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(base + "/")
            while True:
                page.wait_for_function("document.getElementById('progress').textContent !== '' || "
                                       "document.getElementById('done').style.display === 'block'")
                if page.locator("#done").is_visible():
                    break
                number = page.locator("#progress").text_content()
                if "subject" in page.locator("#question").text_content():
                    get = lambda src: page.request.get(base + src).body()  # noqa: E731
                    left, right = (get(page.locator(f"#{s}").get_attribute("src")) for s in ("left", "right"))
                    size = Image.open(io.BytesIO(left)).size
                    refs = [get(page.locator("#refs img").nth(i).get_attribute("src"))
                            for i in range(page.locator("#refs img").count())]
                    target = np.mean([pixels(r, size) for r in refs], axis=0)
                    d_left, d_right = (float(np.abs(pixels(x, size) - target).mean()) for x in (left, right))
                    choice = "tie" if abs(d_left - d_right) < a.tie else ("left" if d_left < d_right else "right")
                else:
                    choice = "tie"
                page.click(f"#vote-{choice}")
                page.wait_for_function(f"document.getElementById('progress').textContent !== {number!r}")
            browser.close()
    finally:
        server.shutdown()
    print(f"rated: {a.results / a.table / 'ratings' / (a.rater + '.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
