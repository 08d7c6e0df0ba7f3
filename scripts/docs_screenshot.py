"""The documentation site's front page as a picture, docs/site.png (shown in docs/contributing.md).

Builds the site strictly into a temporary folder, serves it on 127.0.0.1 (a free port, only for
this run) and photographs one page in headless Chromium (Debian's chromium and chromium-driver,
with selenium from the test extra). Run it after changing the front page or the theme:

    .venv/bin/python scripts/docs_screenshot.py [--page cli/] [--out docs/site.png]
"""
from __future__ import annotations

import argparse
import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # one line per file served is noise here
        pass


def build(site: Path) -> None:
    mkdocs = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)]
    subprocess.run(mkdocs, cwd=ROOT, check=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def browser(profile: Path, width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or shutil.which("chromium-driver")
    if not chromium or not driver:
        sys.exit("docs_screenshot.py: no chromium/chromedriver: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--page", default="", help="the page's path in the site (default: the front page)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "site.png")
    parser.add_argument("--size", default="1280x1000", help="the window, WIDTHxHEIGHT")
    args = parser.parse_args()
    width, height = (int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        build(site)
        handler = functools.partial(QuietHandler, directory=str(site))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        driver = browser(Path(tmp) / "profile", width, height)
        try:
            driver.get(f"http://127.0.0.1:{server.server_port}/{args.page}")
            driver.implicitly_wait(5)
            driver.find_element("css selector", "article")
            written = args.out.with_name(f".{args.out.stem}.tmp.png")  # selenium wants .png
            driver.save_screenshot(str(written))
            os.replace(written, args.out)  # whole or not at all
        finally:
            driver.quit()
            server.shutdown()
    print(f"docs_screenshot.py: wrote {args.out}")


if __name__ == "__main__":
    main()
