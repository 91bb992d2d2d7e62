"""Step playback of a generated run on the standalone page, in real headless Chromium.

The run is a tiny GPT-2's capture (with predictions) whose last tokens are marked as written
by the model, as ``attnmap.generate`` marks them; the viewer needs nothing else.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

import attnmap

from .test_viewer import ROOT, clean, draws, hooks, open_page, wait_draw, wait_js

TEXT = "The cat that sat on the mat was black.\nIt was."
PROMPT = 10  # tokens 10.. ("⏎", "I", "t", "␣was", ".") are the generated ones
STEP = (112, 72, 232)  # the step row's outline, #7048e8
BOUNDARY = (43, 138, 62)  # the prompt/generation line, #2b8a3e


def mark_generated(run, prompt=PROMPT, roles=False):
    toks = []
    for i, t in enumerate(run.tokens):
        t = dataclasses.replace(t, generated=i >= prompt)
        if roles:
            t = dataclasses.replace(t, role="assistant" if i >= prompt else "user",
                                    message=1 if i >= prompt else 0)
        toks.append(t)
    extra = dict(run.extra)
    preds = []
    for r in run.extra["predictions"]:
        ps = [t["p"] for t in r["top"]]
        preds.append({**r, "entropy": -sum(p * math.log2(p) for p in ps if p > 0)})
    extra["predictions"], extra["predictions_kind"] = preds, "generate"
    return dataclasses.replace(run, tokens=toks, extra=extra)


@pytest.fixture(scope="module")
def captured(gpt2_dir):
    return attnmap.capture(TEXT, model=gpt2_dir, predictions=True)


@pytest.fixture(scope="module")
def gen_run(captured):
    run = mark_generated(captured)
    assert [t.generated for t in run.tokens].count(True) == len(run.tokens) - PROMPT == 5
    return run


def near(px, rgb, tol=40):
    return all(abs(a - b) <= tol for a, b in zip(px[:3], rgb, strict=True))


def px_at(page, x, y):
    """Canvas RGBA at CSS point (x, y) of the canvas."""
    return page.evaluate(
        f"(() => {{ const c = document.querySelector('{ROOT} .am-canvas'); "
        f"const r = window.devicePixelRatio || 1; "
        f"return Array.from(c.getContext('2d').getImageData(Math.floor({x} * r), "
        f"Math.floor({y} * r), 1, 1).data); }})()")


def press(page, key, target=None):
    before = draws(page)
    (page.locator(target) if target else page.keyboard).press(key)
    wait_draw(page, before)


def test_step_control_highlights_row_t_after_t_presses(page, gen_run, tmp_path):
    open_page(page, gen_run, tmp_path / "gen.html")
    n, g = len(gen_run.tokens), 5
    assert page.locator(".am-steps").is_visible()
    s = hooks(page, "a.steps")
    assert (s["step"], s["count"], s["row"], s["gen"], s["window"], s["playing"]) == (
        None, g, None, False, [0, n], False)
    slider = f"{ROOT} .am-step"
    page.locator(slider).focus()
    press(page, "Home", slider)  # step 0: the prompt only
    geo = hooks(page, "a.geometry")
    assert hooks(page, "a.steps")["step"] == 0 and hooks(page, "a.steps")["row"] is None
    assert hooks(page, f"a.pixel({PROMPT}, 0)")[:3] == [255, 255, 255]  # not written yet: blank
    assert hooks(page, f"a.pixel({PROMPT - 1}, 0)")[:3] != [255, 255, 255]
    assert page.locator(".am-step-info").inner_text().startswith("step 0 of 5")
    for t in range(1, g + 1):
        press(page, "ArrowRight", slider)
        s = hooks(page, "a.steps")
        assert (s["step"], s["row"]) == (t, PROMPT + t - 1)
        assert page.locator(".am-step-label").inner_text() == f"step {t} of {g}"
        row = PROMPT + t - 1
        # The new token's row is outlined; the rows after it are blank, the row itself is not.
        y = geo["y0"] + (row + 0.5) * geo["cs"]
        assert near(px_at(page, geo["x0"] + 1.5, y), STEP), (t, px_at(page, geo["x0"] + 1.5, y))
        assert hooks(page, f"a.pixel({row}, 0)")[:3] != [255, 255, 255]
        if row + 1 < n:
            assert hooks(page, f"a.pixel({row + 1}, 0)")[:3] == [255, 255, 255]
        # Beside it: the token written and what it was chosen from (p, rank, entropy, top-k).
        info = page.locator(".am-step-info")
        chosen = gen_run.extra["predictions"][row - 1]
        assert info.locator(".am-step-new .am-tok").inner_text() == gen_run.tokens[row].text
        facts = info.locator(".am-step-chosen").inner_text()
        assert f"p {chosen['next']['p']:.3f}" in facts and f"rank {chosen['next']['rank']}" in facts
        assert "entropy" in facts
        assert info.locator(".am-step-top .am-pred-row").count() == len(chosen["top"])
    press(page, "ArrowLeft", slider)
    assert hooks(page, "a.steps")["row"] == n - 2
    # The keyboard on the viewer: "," and "." step too; the head keys still move heads.
    page.locator(ROOT).focus()
    press(page, ",")
    assert hooks(page, "a.steps")["step"] == g - 2
    press(page, ".")
    press(page, ".")
    assert hooks(page, "a.steps")["step"] == g
    press(page, "ArrowRight")
    assert hooks(page, "a.state")["head"] == 1 and hooks(page, "a.steps")["step"] == g
    clean(page)


def test_hidden_rows_answer_nothing(page, gen_run, tmp_path):
    open_page(page, gen_run, tmp_path / "gen.html", step=1)
    assert hooks(page, "a.steps")["step"] == 1
    c = hooks(page, f"a.cell({PROMPT + 2}, 0)")
    page.mouse.move(c["x"], c["y"])
    page.wait_for_timeout(150)
    assert page.locator(".am-tip").is_hidden()
    c = hooks(page, f"a.cell({PROMPT}, 0)")
    page.mouse.move(c["x"], c["y"])
    page.locator(".am-tip").wait_for(state="visible")
    assert page.locator(".am-tip").get_attribute("data-q") == str(PROMPT)
    clean(page)


def test_no_step_control_without_generated_tokens(page, gpt2_run, tmp_path):
    open_page(page, gpt2_run, tmp_path / "plain.html")
    assert page.locator(".am-steps").is_hidden()
    assert page.locator(".am-step-info").is_hidden()
    s = hooks(page, "a.steps")
    assert (s["count"], s["step"], s["boundary"]) == (0, None, {"row": None, "col": None})
    page.locator(ROOT).focus()
    page.keyboard.press(".")
    page.wait_for_timeout(100)
    assert hooks(page, "a.steps")["step"] is None
    clean(page)


def test_play_runs_to_the_last_token_and_stops(page, gen_run, tmp_path):
    open_page(page, gen_run, tmp_path / "gen.html")
    page.locator(".am-play").click()
    assert page.get_attribute(ROOT, "data-playing") == "true"
    wait_js(page, f"document.querySelector('{ROOT}').dataset.playing === 'false'", 10)
    assert hooks(page, "a.steps")["step"] == 5 and hooks(page, "a.steps")["row"] == 14
    # Pause halfway: it stays where it stopped.
    page.locator(".am-play").click()
    wait_js(page, f"document.querySelector('{ROOT}').__attnmap.steps.step >= 2")
    page.locator(".am-play").click()
    stopped = hooks(page, "a.steps")["step"]
    page.wait_for_timeout(700)
    assert hooks(page, "a.steps")["step"] == stopped < 5
    clean(page)


def test_boundary_between_prompt_and_generation(page, gen_run, tmp_path):
    open_page(page, gen_run, tmp_path / "gen.html")
    geo, b = hooks(page, "a.geometry"), hooks(page, "a.steps")["boundary"]
    assert b["row"] == pytest.approx(geo["y0"] + PROMPT * geo["cs"])
    assert b["col"] == pytest.approx(geo["x0"] + PROMPT * geo["cs"])
    # Drawn across the matrix and through the row labels; down the matrix.
    for x in (geo["x0"] + 0.5 * geo["cs"], geo["x0"] - 30):
        assert near(px_at(page, x, b["row"]), BOUNDARY), px_at(page, x, b["row"])
    assert near(px_at(page, b["col"], geo["y0"] + (PROMPT + 2.5) * geo["cs"]), BOUNDARY)
    clean(page)


def test_generated_only_view(page, gen_run, tmp_path):
    open_page(page, gen_run, tmp_path / "gen.html", view="generated")
    n = len(gen_run.tokens)
    geo = hooks(page, "a.geometry")
    assert hooks(page, "a.steps")["window"] == [PROMPT, n] and hooks(page, "a.steps")["gen"]
    assert (geo["r0"], geo["r1"], geo["q0"], geo["K"]) == (PROMPT, n, PROMPT, n)
    assert geo["ph"] == pytest.approx((n - PROMPT) * geo["cs"])  # five rows, every column
    assert page.locator(".am-gen").is_checked()
    # The top row is the first generated token: hover says so, and a click on its label selects it.
    c = hooks(page, f"a.cell({PROMPT}, 3)")
    assert c["y"] - geo["top"] == pytest.approx(geo["y0"] + 0.5 * geo["cs"])
    page.mouse.move(c["x"], c["y"])
    page.locator(".am-tip").wait_for(state="visible")
    assert page.locator(".am-tip").get_attribute("data-q") == str(PROMPT)
    # The boundary: the matrix's top edge for rows, a line down the columns.
    b = hooks(page, "a.steps")["boundary"]
    assert b["row"] == pytest.approx(geo["y0"])
    assert b["col"] == pytest.approx(geo["x0"] + PROMPT * geo["cs"])
    # Steps in this view blank the generated rows not written yet.
    page.locator(f"{ROOT} .am-step").focus()
    press(page, "Home", f"{ROOT} .am-step")
    press(page, "ArrowRight", f"{ROOT} .am-step")
    assert hooks(page, f"a.pixel({PROMPT + 1}, 0)")[:3] == [255, 255, 255]
    assert hooks(page, f"a.pixel({PROMPT}, 0)")[:3] != [255, 255, 255]
    # Off again: every row.
    before = draws(page)
    page.locator(".am-gen").uncheck()
    wait_draw(page, before)
    assert hooks(page, "a.steps")["window"] == [0, n] and hooks(page, "a.geometry")["r0"] == 0
    clean(page)


def test_census_and_relation_count_the_generated_rows(page, gen_run, tmp_path):
    open_page(page, gen_run, tmp_path / "gen.html", view="heads")
    stack = hooks(page, "a.header.stacks[0]")
    sc, sg = stack["scores"], stack["scores_generated"]
    i = sc["names"].index("self")

    def badges():
        return {t["head"]: t["badge"] for t in hooks(page, "a.thumbs")}

    before = draws(page)
    page.locator(".am-score").select_option("self")
    wait_draw(page, before)
    fmt = page.evaluate("(v) => (Math.abs(v) < 1 ? v.toFixed(2).replace(/^(-?)0\\./, '$1.') "
                        ": v.toFixed(1))", sg["values"][0][i])
    all_rows = badges()
    before = draws(page)
    page.locator(".am-gen").check()
    wait_draw(page, before)
    gen_rows = badges()
    assert gen_rows[0] == f"self {fmt}"
    assert gen_rows != all_rows and sg["values"][:2] != sc["values"][:2]
    # Relations from a word the model wrote count its generated tokens only.
    words = hooks(page, "a.words")
    assert "It" in words and "cat" in words
    rel = page.evaluate(f"document.querySelector('{ROOT}').__attnmap.relate('It', 'cat')")
    assert rel["rows"] == "generated" and rel["from_tokens"] == [11, 12]
    assert page.locator(".am-rel-row").count() == 4  # 2 layers × 2 heads
    # From a prompt word there is nothing generated to count: one line says so.
    assert page.evaluate(f"document.querySelector('{ROOT}').__attnmap.relate('cat', 'It')") is None
    assert "has no generated token" in page.locator(".am-rel-none").inner_text()
    page.locator(".am-gen").uncheck()
    rel = page.evaluate(f"document.querySelector('{ROOT}').__attnmap.relate('cat', 'It')")
    assert rel["rows"] == "all" and rel["from_tokens"] == [1]
    clean(page)


def test_role_bands_with_generation(page, captured, tmp_path):
    run = mark_generated(captured, roles=True)
    open_page(page, run, tmp_path / "chat.html", view="generated")
    n = len(run.tokens)
    bands = hooks(page, "a.bands")
    q = [(b["start"], b["end"], b["role"]) for b in bands if b["axis"] == "query"]
    k = [(b["start"], b["end"], b["role"]) for b in bands if b["axis"] == "key"]
    assert q == [(PROMPT, n, "assistant")]  # only the generated rows are in view
    assert k == [(0, PROMPT, "user"), (PROMPT, n, "assistant")]
    # The assistant band along the rows starts at the matrix top.
    (qb,) = [b for b in bands if b["axis"] == "query"]
    assert qb["y"] == pytest.approx(hooks(page, "a.geometry")["y0"])
    # Clear of the role's name (written mid-band): the first generated token's strip.
    qp = hooks(page, f"a.bandPixel('query', {PROMPT})")
    assert qp == hooks(page, f"a.bandPixel('key', {PROMPT})") and qp[:3] != [255, 255, 255]
    # The user band along the columns has a colour of its own.
    assert hooks(page, "a.bandPixel('key', 1)") != qp
    # At step 2 the bands stop where the written tokens stop.
    page.locator(f"{ROOT} .am-step").focus()
    press(page, "Home", f"{ROOT} .am-step")
    press(page, "ArrowRight", f"{ROOT} .am-step")
    press(page, "ArrowRight", f"{ROOT} .am-step")
    bands = hooks(page, "a.bands")
    ends = {(b["axis"], b["role"]): b["end"] for b in bands}
    assert ends == {("query", "assistant"): n, ("key", "user"): PROMPT,
                    ("key", "assistant"): n}  # the band records the run it belongs to
    (qb,) = [b for b in bands if b["axis"] == "query"]
    assert qb["h"] == pytest.approx(2 * hooks(page, "a.geometry")["cs"])  # two rows drawn
    assert hooks(page, f"a.bandPixel('query', {PROMPT + 3})")[:3] == [255, 255, 255]
    clean(page)


def test_a_real_generation_plays_back(page, gpt2_dir, tmp_path):
    """attnmap.generate → page: the step control counts the tokens the model wrote, and each
    step shows the prediction it was chosen from."""
    run = attnmap.generate("The cat sat on the", model=gpt2_dir, max_new_tokens=4)
    g = sum(t.generated for t in run.tokens)
    assert 1 <= g <= 4
    open_page(page, run, tmp_path / "real.html")
    assert page.locator(".am-steps").is_visible()
    assert hooks(page, "a.steps")["count"] == g
    slider = f"{ROOT} .am-step"
    page.locator(slider).focus()
    press(page, "Home", slider)
    press(page, "ArrowRight", slider)
    first = len(run.tokens) - g
    assert hooks(page, "a.steps")["row"] == first
    new = page.locator(".am-step-info .am-step-new .am-tok").inner_text()
    assert new == run.tokens[first].text
    clean(page)
