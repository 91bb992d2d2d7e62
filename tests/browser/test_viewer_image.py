"""A run of an image in the standalone page: the picture with the query's row laid over it;
hovering a patch shows that patch's row, clicking pins it, CLS/register tokens listed beside."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from _vision import gradient_image
from attnmap.run import AttentionStack
from attnmap.vision import capture_image

from .test_viewer import clean, hooks, open_page, wait_js


@pytest.fixture(scope="module")
def image_run(dinoreg_dir, tmp_path_factory):
    """DINOv2 with 4 registers on a 64×40 picture, its attention set by hand: CLS looks at patch
    (0, 0), patch (2, 1) looks at patch (3, 3); everything else is spread evenly."""
    path = tmp_path_factory.mktemp("img") / "g.png"
    gradient_image(64, 40).save(path)
    run = capture_image(path, dinoreg_dir)
    n = len(run.tokens)
    cell = {(t.row, t.col): i for i, t in enumerate(run.tokens) if t.row is not None}
    a = np.full((1, n, n), 1.0 / n, dtype=np.float32)  # [head, query, key]
    a[0, 0] = 0.2 / (n - 1)
    a[0, 0, cell[0, 0]] = 0.8
    q = cell[2, 1]
    a[0, q] = 0.2 / (n - 1)
    a[0, q, cell[3, 3]] = 0.8
    stack = AttentionStack("self", [a, a], np.zeros((n, n), bool))
    return dataclasses.replace(run, stacks={"self": stack}), cell


def _pixel_at(page, token):
    """The overlay's colour at the centre of `token`'s box, in the picture's own canvas."""
    return page.evaluate(
        f"""(() => {{ const v = document.querySelector('.attnmap').__attnmap.vision;
        const c = document.querySelector('.am-vision-image').getBoundingClientRect();
        const p = v.point({token}); return v.pixel(p.x - c.left, p.y - c.top); }})()""")


def test_hovering_a_patch_changes_the_overlay(page, image_run, tmp_path):
    run, cell = image_run
    open_page(page, run, tmp_path / "img.html")
    wait_js(page, "document.querySelector('.attnmap').__attnmap.vision?.values.length === 16")
    v = hooks(page, "a.vision")
    assert v["query"] == 0  # CLS by default
    # the CLS row: patch (0, 0) is the brightest, and drawn darker (Blues) than patch (3, 3)
    order = [cell[r, c] for r in range(4) for c in range(4)]
    assert int(np.argmax(v["values"])) == order.index(cell[0, 0])
    before_00, before_33 = _pixel_at(page, cell[0, 0]), _pixel_at(page, cell[3, 3])
    assert sum(before_00[:3]) < sum(before_33[:3])
    # CLS and the 4 registers are listed beside the picture, as text
    labels = page.eval_on_selector_all(".am-vision-token", "bs => bs.map(b => b.textContent)")
    assert labels == ["[CLS]", "[REG0]", "[REG1]", "[REG2]", "[REG3]"]

    # hover patch (2, 1): its row becomes the overlay, and (3, 3) is now the dark one
    target = cell[2, 1]
    p = hooks(page, f"a.vision.point({target})")
    page.mouse.move(p["x"], p["y"])
    wait_js(page, f"document.querySelector('.attnmap').__attnmap.vision.query === {target}")
    v = hooks(page, "a.vision")
    assert int(np.argmax(v["values"])) == order.index(cell[3, 3])
    row = run.head(0, 0)[target]
    shown = np.asarray(v["values"])
    np.testing.assert_allclose(shown, row[order], atol=row.max() / 128 + 1e-6)
    after_00, after_33 = _pixel_at(page, cell[0, 0]), _pixel_at(page, cell[3, 3])
    assert sum(after_33[:3]) < sum(before_33[:3]) - 60
    assert sum(after_00[:3]) > sum(before_00[:3]) + 60

    # click pins it: leaving the picture keeps (2, 1); Esc lets go (back to CLS)
    page.mouse.click(p["x"], p["y"])
    page.mouse.move(1, 1)
    wait_js(page, "document.querySelector('.attnmap').__attnmap.vision.pinned !== null")
    assert hooks(page, "a.vision.query") == target
    page.keyboard.press("Escape")
    wait_js(page, "document.querySelector('.attnmap').__attnmap.vision.query === 0")
    # a register button shows that register's row
    page.click(".am-vision-token[data-token='2']")
    wait_js(page, "document.querySelector('.attnmap').__attnmap.vision.query === 2")
    clean(page)
