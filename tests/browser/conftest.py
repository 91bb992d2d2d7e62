"""Headless Debian Chromium driven by Playwright; nothing outside the machine is reachable.

Use the ``page`` fixture: a fresh page that records console errors and uncaught exceptions
in ``page.errors`` (a list of strings) and lets only ``file://``, ``data:``, ``blob:`` and
loopback (127.0.0.1 / localhost) requests through; anything else is aborted and recorded
in ``page.blocked``.
"""

from __future__ import annotations

import os
import shutil
from urllib.parse import urlparse

import pytest

CHROMIUM = os.environ.get("ATTNMAP_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/browser" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser():
    if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}; `apt-get install chromium`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def _allowed(url: str) -> bool:
    u = urlparse(url)
    if u.scheme in ("file", "data", "blob", "about"):
        return True
    return u.scheme in ("http", "https", "ws") and u.hostname in ("127.0.0.1", "localhost")


@pytest.fixture
def page(browser):
    ctx = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    pg.errors = []  # type: ignore[attr-defined]
    pg.blocked = []  # type: ignore[attr-defined]

    def _route(route):
        if _allowed(route.request.url):
            route.continue_()
        else:
            pg.blocked.append(route.request.url)  # type: ignore[attr-defined]
            route.abort()

    ctx.route("**/*", _route)
    pg.on("console", lambda m: m.type == "error" and pg.errors.append(m.text))  # type: ignore[attr-defined]
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))  # type: ignore[attr-defined]
    yield pg
    ctx.close()
