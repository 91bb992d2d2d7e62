"""The app's page in headless Chromium, against the test run's one real `attnmap serve` process
(``app_server`` in tests/conftest.py: the tiny GPT-2 and the hostile one)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")


def _hostile() -> list[str]:
    """The hostile vocabulary of tests/conftest.py (the one the fixture model was built with)."""
    spec = importlib.util.spec_from_file_location(
        "_attnmap_tests_conftest", Path(__file__).parents[1] / "conftest.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return list(mod.HOSTILE)


HOSTILE = _hostile()

TEXT = "The cat that sat on the mat was black."


@pytest.fixture
def server(app_server):
    return app_server


def api_run_ids(server) -> list[str]:
    return [e["id"] for e in httpx.get(f"{server.url}/api/runs", timeout=30).json()]


def api_run(server, run_id: str) -> dict:
    return httpx.get(f"{server.url}/api/runs/{run_id}", timeout=30).json()


def open_app(page, server):
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-ready='1'] #run:not([disabled])")


def run_text(page, text: str, model: str | None = None) -> str:
    """Type `text`, click Run, wait until the viewer has drawn; return the run's id."""
    before = page.evaluate("document.body.dataset.run || ''")
    if model is not None:
        page.select_option("#model", model)
    page.fill("#text", text)
    page.click("#run")
    page.wait_for_function(
        "([b]) => document.body.dataset.run && document.body.dataset.run !== b", arg=[before]
    )
    wait_drawn(page)
    return page.evaluate("document.body.dataset.run")


def wait_drawn(page, draws: int = 1) -> None:
    page.wait_for_function(
        "(n) => { const r = document.querySelector('#viewer .attnmap');"
        " return r && Number(r.dataset.draws || 0) >= n; }",
        arg=draws,
    )


def canvas_ink(page) -> dict:
    """How much of the heatmap canvas is not background, and how many colours it has."""
    return page.evaluate(
        """() => {
        const c = document.querySelector('#viewer .am-canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let ink = 0; const colours = new Set();
        for (let i = 0; i < d.length; i += 4) {
            if (d[i + 3] && (d[i] < 245 || d[i + 1] < 245 || d[i + 2] < 245)) ink++;
            colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
        }
        return { ink, total: d.length / 4, colours: colours.size, w: c.width, h: c.height };
    }"""
    )


def strip_tokens(page) -> list[str]:
    return page.eval_on_selector_all("#tokens span", "els => els.map(e => e.textContent)")


def test_type_run_see_heatmap_and_runs_list(page, server, gpt2_dir):
    layer_requests: list[str] = []
    page.on("request", lambda r: "/layers/" in r.url and layer_requests.append(r.url))
    open_app(page, server)
    assert page.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == [
        str(server_model) for server_model in httpx.get(f"{server.url}/api/health").json()["models"]
    ]
    run_id = run_text(page, TEXT, model=str(gpt2_dir))

    ink = canvas_ink(page)
    assert ink["w"] > 100 and ink["h"] > 100
    assert ink["ink"] > 0.02 * ink["total"], ink
    assert ink["colours"] > 10, ink
    # causal model: query 0 sees only key 0, with weight 1 → the darkest cell, not background
    r, g, b, _ = page.evaluate("document.querySelector('#viewer .attnmap').__attnmap.pixel(0, 0)")
    assert min(r, g, b) < 200, (r, g, b)
    # the viewer fetched its layer from the server, not from the (header-only) payload
    assert any(u.endswith(f"/api/runs/{run_id}/layers/self/0") for u in layer_requests)

    facts = api_run(server, run_id)
    assert strip_tokens(page) == facts["tokens"]
    assert page.text_content("#meta").count("2 layers × 2 heads") == 1
    # the list is the server's (other tests share it), newest first: this run on top
    runs = page.eval_on_selector_all("#runs button", "bs => bs.map(b => b.dataset.runId)")
    assert runs[0] == run_id and runs == api_run_ids(server)
    assert TEXT in page.text_content("#runs")

    # another layer comes from the server on demand and is drawn
    draws = int(page.get_attribute("#viewer .attnmap", "data-draws"))
    page.select_option("#viewer .am-layer", "1")
    wait_drawn(page, draws + 1)
    assert any(u.endswith(f"/api/runs/{run_id}/layers/self/1") for u in layer_requests)

    # a second run, then reopen the first from the list
    second = run_text(page, "The dog ran in the park.")
    assert second != run_id
    runs = page.eval_on_selector_all("#runs button", "bs => bs.map(b => b.dataset.runId)")
    assert runs[:2] == [second, run_id] and runs == api_run_ids(server)
    page.click(f"#runs button[data-run-id='{run_id}']")
    page.wait_for_function("(id) => document.body.dataset.run === id", arg=run_id)
    wait_drawn(page)
    assert strip_tokens(page) == facts["tokens"]
    assert canvas_ink(page)["ink"] > 0.02 * ink["total"]

    assert page.errors == []
    assert page.blocked == []


def test_errors_show_on_the_page(page, server):
    open_app(page, server)
    runs_before = httpx.get(f"{server.url}/api/runs").json()
    page.fill("#text", "   ")
    page.click("#run")
    page.wait_for_selector("#error:not([hidden])")
    assert "empty" in page.text_content("#error")
    page.fill("#text", "cat " * 200)
    page.click("#run")
    page.wait_for_function(
        "() => document.querySelector('#error').textContent.includes('64 tokens')"
    )
    # the browser itself logs each 4xx response; nothing else may be logged
    others = [e for e in page.errors if "status of 400" not in e]
    assert others == []
    assert httpx.get(f"{server.url}/api/runs").json() == runs_before  # nothing was run


def test_hostile_tokens_are_text_and_run_nothing(page, server, hostile_gpt2_dir):
    open_app(page, server)
    text = " ".join(HOSTILE)
    run_id = run_text(page, text, model=str(hostile_gpt2_dir))
    facts = api_run(server, run_id)
    # the tokenizer kept the hostile strings whole (spaces shown as ␣), so the page had them
    shown = [bad.replace(" ", "\u2423") for bad in HOSTILE[:3]]
    for bad in shown:
        assert bad in facts["tokens"], facts["tokens"]

    assert strip_tokens(page) == facts["tokens"]
    for bad in shown:
        assert bad in page.text_content("#tokens")
    assert text[:80] in page.text_content("#runs")  # the list shows the first 80 characters
    # hover cells and click a token row so the viewer's tooltip and info show these tokens
    hooks = "document.querySelector('#viewer .attnmap').__attnmap"
    n = len(facts["tokens"])
    for q in range(n):
        pos = page.evaluate(f"{hooks}.cell({q}, 0)")
        page.mouse.move(pos["x"], pos["y"])
    pos = page.evaluate(f"{hooks}.rowLabel(1)")
    page.mouse.click(pos["x"], pos["y"])
    page.wait_for_timeout(200)

    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("document.querySelectorAll('img, script:not([src])').length") == 0
    assert page.errors == []
    assert page.blocked == []
