"""The app's page around the viewer, in headless Chromium against the shared real server
(``app_server`` in tests/conftest.py): its icon, and the form after reopening a run."""

from __future__ import annotations

import pytest

from .test_app_browser import open_app, run_text, wait_drawn

httpx = pytest.importorskip("httpx")


def test_icon_is_served_and_the_page_loads_without_console_errors(page, app_server):
    ico = httpx.get(f"{app_server.url}/favicon.ico", timeout=30)
    assert ico.status_code == 200
    assert ico.headers["content-type"].startswith("image/svg+xml")
    assert ico.text.lstrip().startswith("<svg")
    open_app(page, app_server)
    href = page.get_attribute("link[rel=icon]", "href")
    status = page.evaluate("(u) => fetch(u).then(r => [r.status, r.headers.get('content-type')])",
                           href)
    assert status[0] == 200 and status[1].startswith("image/svg+xml")
    assert page.errors == []
    assert page.blocked == []


def test_reopening_a_run_puts_its_text_back_in_the_form(page, app_server, gpt2_dir):
    open_app(page, app_server)
    first_text = "The cat that sat on the mat was black."
    first = run_text(page, first_text, model=str(gpt2_dir))
    run_text(page, "A dog ran in the park.", model=str(gpt2_dir))
    page.fill("#text", "")  # the user cleared the box meanwhile
    page.click(f"#runs button[data-run-id='{first}']")
    page.wait_for_function("(id) => document.body.dataset.run === id", arg=first)
    wait_drawn(page)
    assert page.input_value("#text") == first_text
    assert page.input_value("#model") == str(gpt2_dir)
    # The form is ready to run the text again as it was.
    again = run_text(page, page.input_value("#text"))
    assert again != first
    assert page.input_value("#text") == first_text
    assert page.errors == []
