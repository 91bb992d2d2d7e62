"""Perturb and re-run in the app's page (headless Chromium, a real `attnmap serve` process):
click a token, remove or mask it, and the viewer opens the diff of the original against the
new run; a button goes back to the single run. The server is the test run's shared one."""

from __future__ import annotations

import pytest

from .test_app_browser import HOSTILE, api_run_ids, canvas_ink, open_app, run_text, wait_drawn

httpx = pytest.importorskip("httpx")

TEXT = "The cat that sat on the mat was black."
HOOKS = "document.querySelector('#viewer .attnmap').__attnmap"


@pytest.fixture
def server(app_server):
    return app_server


def api(server, path: str):
    return httpx.get(server.url + path, timeout=60).json()


def token_span(page, text: str):
    """The strip's token whose text (spaces shown as ␣) is `text` once trimmed of ␣."""
    texts = page.eval_on_selector_all("#tokens span", "els => els.map(e => e.textContent)")
    pos = next(i for i, t in enumerate(texts) if t.strip("\u2423") == text)
    return pos, page.locator(f"#tokens span[data-pos='{pos}']")


def wait_diff(page, a: str) -> str:
    """Wait until the diff view of run `a` against a new run is drawn; return B's id."""
    page.wait_for_function(
        "(a) => document.body.dataset.view === 'diff' && "
        "document.body.dataset.diff.startsWith(a + ' ')", arg=a)
    # Functions, not expressions: Playwright polls an expression with eval, which the app's
    # CSP forbids.
    page.wait_for_function(f"() => {HOOKS}?.state.view === 'diff'")
    wait_drawn(page)
    return page.evaluate("document.body.dataset.diff.split(' ')[1]")


def test_click_remove_opens_the_diff_and_back(page, server, gpt2_dir):
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    open_app(page, server)
    a = run_text(page, TEXT, model=str(gpt2_dir))
    facts = api(server, f"/api/runs/{a}")
    assert page.is_hidden("#diff-bar") and page.is_visible("#token-hint")
    pos, span = token_span(page, "mat")
    span.click()
    assert page.is_visible("#token-actions")
    assert page.text_content("#token-label") == f"token {pos}: «{facts['tokens'][pos]}»"
    page.click("#act-remove")
    b = wait_diff(page, a)

    # B is the text without that token, stored on the server and listed on the page.
    tok_text = facts["tokens"][pos].replace("\u2423", " ")
    b_facts = api(server, f"/api/runs/{b}")
    assert tok_text == " mat" and b_facts["text"] == TEXT.replace(" mat", "", 1)
    assert b_facts["tokens"] == facts["tokens"][:pos] + facts["tokens"][pos + 1:]
    # The page's list is complete once the diff view is signalled: B then A on top.
    runs = page.eval_on_selector_all("#runs button", "bs => bs.map(b => b.dataset.runId)")
    assert runs[:2] == [b, a] and runs == api_run_ids(server)
    # The viewer shows A, B and A − B on the aligned tokens, at the most changed head.
    d = api(server, f"/api/diff/{a}/{b}")
    st = page.evaluate(f"{HOOKS}.state")
    assert (st["view"], st["layer"], st["head"]) == \
        ("diff", d["ranking"][0]["layer"], d["ranking"][0]["head"])
    got = page.evaluate(f"{HOOKS}.diffHead")
    assert got["q"] == got["k"] == d["aligned"] == len(facts["tokens"]) - 1
    assert any(v not in (None, 0) for v in got["d"])  # removing a token changed something
    ink = canvas_ink(page)
    assert ink["ink"] > 0.02 * ink["total"] and ink["colours"] > 10, ink
    # The page says what it compares, and lists the heads by change, as the API ranks them.
    assert page.is_visible("#diff-bar")
    assert "A − B" in page.text_content("#status")
    assert f"token {pos} «{facts['tokens'][pos]}» removed" in page.text_content("#diff-title")
    shown = page.eval_on_selector_all(
        "#ranking button", "bs => bs.map(b => [+b.dataset.layer, +b.dataset.head])")
    assert shown == [[r["layer"], r["head"]] for r in d["ranking"][:5]]
    assert page.get_attribute(f"#tokens span[data-pos='{pos}']", "class").split().count(
        "app-changed") == 1
    assert any(u.endswith(f"/api/diff/{a}/{b}/payload/b") for u in requests)

    # A head from the ranking list opens in the diff view.
    last = d["ranking"][len(shown) - 1]  # 2 layers × 2 heads: all four are listed
    assert (last["layer"], last["head"]) != (st["layer"], st["head"])
    page.click(f"#ranking button[data-layer='{last['layer']}'][data-head='{last['head']}']")
    page.wait_for_function(
        f"([l, h]) => {{ const s = {HOOKS}.state;"
        " return s.layer === l && s.head === h && s.view === 'diff'; }",
        arg=[last["layer"], last["head"]])
    wait_drawn(page)

    # Back to the single run A.
    page.click("#diff-back")
    page.wait_for_function(
        "(a) => document.body.dataset.view === 'run' && document.body.dataset.run === a", arg=a)
    wait_drawn(page)
    assert page.is_hidden("#diff-bar")
    assert page.evaluate(f"{HOOKS}.state.view") == "heatmap"
    assert page.eval_on_selector_all("#tokens span", "els => els.map(e => e.textContent)") \
        == facts["tokens"]
    assert page.locator("#tokens span.app-changed").count() == 0
    assert page.errors == []
    assert page.blocked == []


def test_keyboard_mask_and_escape(page, server, gpt2_dir):
    open_app(page, server)
    a = run_text(page, TEXT, model=str(gpt2_dir))
    facts = api(server, f"/api/runs/{a}")
    mask = facts["mask_token"]
    assert mask  # the test tokenizer has one, so the page offers "mask"
    # One tab stop for the strip; arrows move; Enter opens the actions; Escape closes them.
    first = page.locator("#tokens span[tabindex='0']")
    assert first.count() == 1
    start_pos = int(first.get_attribute("data-pos"))
    first.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    pos = page.evaluate("Number(document.activeElement.dataset.pos)")
    assert pos == start_pos + 2
    assert page.locator("#tokens span[tabindex='0']").get_attribute("data-pos") == str(pos)
    page.keyboard.press("Enter")
    assert page.is_visible("#token-actions")
    assert page.evaluate("document.activeElement.id") == "act-remove"
    assert page.text_content("#act-mask") == f"Mask with {mask}"
    page.keyboard.press("Escape")
    assert page.is_hidden("#token-actions")
    assert page.evaluate("Number(document.activeElement.dataset.pos)") == pos
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "act-mask"
    page.keyboard.press("Enter")
    b = wait_diff(page, a)
    word = facts["tokens"][pos].lstrip("\u2423")  # " that": the mask takes the word's place
    at = TEXT.index(" " + word) + 1
    assert api(server, f"/api/runs/{b}")["text"] == TEXT[:at] + mask + TEXT[at + len(word):]
    assert f"token {pos} «{facts['tokens'][pos]}» masked" in page.text_content("#diff-title")
    # Run B alone, from the diff bar.
    page.click("#diff-open-b")
    page.wait_for_function("(b) => document.body.dataset.run === b", arg=b)
    wait_drawn(page)
    assert page.is_hidden("#diff-bar")
    assert page.errors == []
    assert page.blocked == []


def test_hostile_token_removed_stays_text(page, server, hostile_gpt2_dir):
    open_app(page, server)
    text = " ".join(HOSTILE)
    a = run_text(page, text, model=str(hostile_gpt2_dir))
    facts = api(server, f"/api/runs/{a}")
    bad = HOSTILE[0].replace(" ", "\u2423")
    pos = facts["tokens"].index(bad)
    page.click(f"#tokens span[data-pos='{pos}']")
    assert page.text_content("#token-label") == f"token {pos}: «{bad}»"
    page.click("#act-remove")
    wait_diff(page, a)
    assert f"«{bad}» removed" in page.text_content("#diff-title")
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("document.querySelectorAll('img, script:not([src])').length") == 0
    assert page.errors == []
    assert page.blocked == []
