"""The documentation site: it builds with ``mkdocs --strict`` (what ``make docs`` runs), and the
built site works in a real browser: Debian's headless Chromium driven through its chromedriver
(``make browser`` installs both; ``make test`` runs it first) against the site served on
localhost.

Without Chromium these tests skip locally with that reason, and fail under ``CI`` (where
``make test`` must have installed it)."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# as the machine's notes prescribe: no sandbox as root, no GPU, no background connections to
# the closed network, a fresh profile
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,2200",
)

pytestmark = pytest.mark.slow


def build_site(site_dir: Path, api_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "GRIDLM_DOCS_API_DIR": str(api_dir)}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built once for this module, as ``make docs`` builds it."""
    root = tmp_path_factory.mktemp("docs")
    out = build_site(root / "site", root / "api")
    assert out.returncode == 0, f"mkdocs build --strict failed:\n{out.stdout}\n{out.stderr}"
    return root / "site"


def test_the_site_builds_strict_with_every_generated_page(site):
    for page in ("index.html", "concepts/encodings/index.html", "reference/cli/index.html", "changelog/index.html"):
        assert (site / page).is_file(), page
    for package in ("modules", "datamodules", "callbacks", "experiments"):
        html = (site / "reference/api" / package / "index.html").read_text()
        assert f'id="gridlm.{package}.' in html, f"no API entries on the {package} page"
    assert 'id="gridlm.modules.encodings.additive.Quadtree2D"' in (site / "reference/api/modules/index.html").read_text()
    cli = (site / "reference/cli/index.html").read_text()
    for flag in ("--data.order", "--model.encoding", "--trainer.max_steps", "--submission.out", "--max-tasks"):
        assert flag in cli, flag
    for picture in ("orders.png", "encodings.png"):
        assert (site / "concepts/img" / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", picture
    assert "<td><code>quadtree_2d</code></td>" in (site / "concepts/encodings/index.html").read_text()
    assert (site / "search/search_index.json").stat().st_size > 10_000


@pytest.fixture(scope="module")
def served(site):
    """``http://127.0.0.1:<port>/`` serving the built site (search needs http, not file://)."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def _need_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (the docs extra)")
    if missing:
        reason = f"missing {', '.join(missing)}: `make browser` installs Debian's chromium and chromium-driver (as root), `make setup` the docs extra"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout: float = 30.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def test_home_page_renders(browser, served):
    from selenium.webdriver.common.by import By

    browser.get(served)
    assert browser.title.startswith("gridlm")
    assert browser.find_element(By.CSS_SELECTOR, "article h1").text.strip() == "gridlm"
    nav = browser.find_element(By.CSS_SELECTOR, "nav.md-nav--primary").get_attribute("textContent")
    for section in ("Concepts", "How-to", "Reference", "Results"):
        assert section in nav
    # the theme's script ran: the search box exists and the code blocks got copy buttons
    assert browser.find_element(By.CSS_SELECTOR, "input.md-search__input")
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "button.md-code__button, button.md-clipboard"))
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors


def test_search_for_an_encoding_finds_its_concepts_page_and_api_entry(browser, served):
    from selenium.webdriver.common.by import By

    browser.get(served)
    box = browser.find_element(By.CSS_SELECTOR, "input.md-search__input")
    box.click()
    box.send_keys("quadtree_2d")

    def result_links(d):
        links = [a.get_attribute("href") for a in d.find_elements(By.CSS_SELECTOR, ".md-search-result a.md-search-result__link")]
        return links if any("concepts/encodings/" in h for h in links) and any("reference/api/modules/" in h for h in links) else False

    links = _wait(browser, result_links)
    api = [h for h in links if h.endswith("#gridlm.modules.encodings.additive.Quadtree2D")]
    assert api, links  # the hit is the Quadtree2D class entry of the API reference
    browser.get(api[0])  # following it lands on that entry
    assert browser.find_element(By.ID, "gridlm.modules.encodings.additive.Quadtree2D").is_displayed()


def test_screenshot_of_the_encodings_page(browser, served, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(served + "concepts/encodings/")
    img = browser.find_element(By.CSS_SELECTOR, 'img[src$="img/encodings.png"]')
    browser.execute_script("arguments[0].scrollIntoView()", img)
    _wait(browser, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img))
    assert img.size["width"] > 300  # the picture is laid out, not a broken-image icon
    shot = tmp_path / "encodings_page.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if os.environ.get("GRIDLM_KEEP_SCREENSHOT"):  # to look at it: GRIDLM_KEEP_SCREENSHOT=<dir>
        shutil.copy(shot, os.environ["GRIDLM_KEEP_SCREENSHOT"])
