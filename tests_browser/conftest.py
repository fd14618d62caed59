"""Fixtures of the browser test: a scratch copy of notebooks/ and figures/, JupyterLab on it, Debian's Chromium.

Nothing here skips: a missing Chromium or Playwright is an error (``make test-browser`` installs both).
On a failure the report carries the JupyterLab log and the browser's console errors.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from lab_server import JupyterLab
from notebook_source import SCREENSHOTS
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
# The closed network refuses what Chromium fetches by itself; these switch that off (and the GPU, the sandbox).
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-dev-shm-usage", "--no-default-browser-check"]
LOG_TAIL_CHARS = 20_000
LAB_KEY = pytest.StashKey[JupyterLab]()
CONSOLE_KEY = pytest.StashKey[list]()
STARTED_KEY = pytest.StashKey[float]()


@pytest.fixture(scope="session")
def lab(tmp_path_factory, request):
    """JupyterLab serving a scratch copy of notebooks/ and figures/ (what the notebooks save stays there)."""
    scratch = tmp_path_factory.mktemp("browser-lab")
    root = scratch / "root"
    for folder in ("notebooks", "figures"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    server = JupyterLab.start(root=root, home=scratch / "home")
    request.config.stash[LAB_KEY] = server
    try:
        yield server
    finally:
        server.stop()
        print(f"\nJupyterLab log: {server.log_path}")


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        raise FileNotFoundError(f"{CHROMIUM} is missing: `make test-browser` installs Debian's chromium "
                                f"(apt-get install -y chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, lab, request):
    """A fresh browser page (1280 wide); its console errors are kept for the failure report."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    new_page = context.new_page()
    console: list[str] = []
    new_page.on("console", lambda message: message.type == "error" and console.append(message.text))
    new_page.on("pageerror", lambda error: console.append(f"page error: {error}"))
    request.node.stash[CONSOLE_KEY] = console
    new_page.set_default_timeout(60_000)
    try:
        yield new_page
    finally:
        context.close()
        lab.shut_down_kernels()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the server's log and the page's console errors to a failed test's report."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    server = item.config.stash.get(LAB_KEY, None)
    if server is not None:
        log = server.log_text()
        report.sections.append(("JupyterLab log (tail)", log[-LOG_TAIL_CHARS:]))
    console = item.stash.get(CONSOLE_KEY, None)
    if console:
        report.sections.append(("browser console errors", "\n".join(console[-50:])))


def pytest_sessionstart(session):
    session.config.stash[STARTED_KEY] = time.time()


def pytest_terminal_summary(terminalreporter, config):
    """Name the screenshots this run saved, so a person can look at them."""
    started = config.stash.get(STARTED_KEY, 0.0)
    shots = [p for p in sorted(SCREENSHOTS.glob("*.png")) if p.stat().st_mtime >= started]
    if shots:
        terminalreporter.write_sep("-", "screenshots of the notebooks as JupyterLab showed them")
        for shot in shots:
            terminalreporter.write_line(str(shot))
