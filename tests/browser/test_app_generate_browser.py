"""Generate in the app's page (headless Chromium, the test run's real `attnmap serve`): tokens
show one by one as the server streams them, Stop ends the generation early, and the stored run
opens in the viewer with its step control."""

from __future__ import annotations

import pytest

from .test_app_browser import api_run, open_app, wait_drawn

httpx = pytest.importorskip("httpx")

PROMPT = "The cat sat"
MOST = 60  # the tiny GPT-2 has 64 positions
LONG_MOST = 250  # the 512-position one, within the server's 256-token cap

# Record the number of streamed tokens on the page each time it changes (before clicking).
WATCH = """() => {
  window.__counts = [];
  const out = document.getElementById('gen-out');
  new MutationObserver(() => {
    const n = out.querySelectorAll('span[data-step]').length;
    if (n && window.__counts[window.__counts.length - 1] !== n) window.__counts.push(n);
  }).observe(out, { childList: true });
}"""


def generate(page, gpt2_dir, max_new: int) -> None:
    page.select_option("#model", str(gpt2_dir))
    page.fill("#text", PROMPT)
    page.fill("#max-new", str(max_new))
    page.evaluate(WATCH)
    page.click("#generate")


def wait_opened(page, before: str) -> str:
    page.wait_for_function(
        "([b]) => document.body.dataset.run && document.body.dataset.run !== b", arg=[before])
    wait_drawn(page)
    return page.evaluate("document.body.dataset.run")


def test_generate_streams_tokens_then_opens_the_run_with_steps(page, app_server, gpt2_dir):
    open_app(page, app_server)
    before = page.evaluate("document.body.dataset.run || ''")
    generate(page, gpt2_dir, 30)
    run_id = wait_opened(page, before)

    facts = api_run(app_server, run_id)
    shown = page.eval_on_selector_all("#gen-out span", "es => es.map(e => e.textContent)")
    steps = page.eval_on_selector_all("#gen-out span", "es => es.map(e => e.dataset.step)")
    assert facts["generated"] == len(shown) >= 1
    assert shown == facts["tokens"][-len(shown):]
    assert steps == [str(i) for i in range(len(shown))]
    counts = page.evaluate("window.__counts")
    # one by one: the page showed the tokens as they came, not all at once at the end
    assert len(counts) > 1 and counts == sorted(counts) and counts[-1] == len(shown), counts

    assert page.locator(".am-steps").is_visible()
    assert page.locator("#stop").is_hidden()
    assert page.locator("#generate").is_enabled()
    assert f"generated {len(shown)} tokens" in page.text_content("#status")
    assert page.errors == []
    assert page.blocked == []


def test_stop_ends_the_generation_and_keeps_what_was_written(page, app_server, long_gpt2_dir):
    open_app(page, app_server)
    before = page.evaluate("document.body.dataset.run || ''")
    # the Stop button is clicked (a real click, in the page) as soon as the first token shows
    page.evaluate("""() => {
      const out = document.getElementById('gen-out');
      const obs = new MutationObserver(() => {
        if (out.querySelector('span[data-step]')) { obs.disconnect();
          document.getElementById('stop').click(); }
      });
      obs.observe(out, { childList: true });
    }""")
    # a long generation: 60 steps of the 64-position model could all be written before the
    # click's request reaches the server
    generate(page, long_gpt2_dir, LONG_MOST)
    run_id = wait_opened(page, before)
    facts = api_run(app_server, run_id)
    assert 1 <= facts["generated"] < LONG_MOST
    assert page.locator("#gen-out span").count() == facts["generated"]
    assert "stopped" in page.text_content("#status")
    assert page.locator(".am-steps").is_visible()
    assert page.errors == []


def test_a_refused_generation_says_why(page, app_server, gpt2_dir):
    open_app(page, app_server)
    page.select_option("#model", str(gpt2_dir))
    page.fill("#text", PROMPT)
    page.fill("#max-new", "100000")
    page.click("#generate")
    page.wait_for_selector("#error:not([hidden])")
    assert "above this server's limit" in page.text_content("#error")
    assert page.locator("#stop").is_hidden()
    assert page.locator("#generate").is_enabled()
