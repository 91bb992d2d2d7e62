"""The vision census and the patch geometry, on runs and numbers made by hand (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from attnmap import AttentionRun, AttentionStack, AttnmapError, Token
from attnmap.analysis.vision import vision_scores
from attnmap.patches import image_header, looks_like_image, patch_boxes, resized_size

# CLS, two registers, then a 2×2 grid of 10×20-pixel patches (an image 20 wide, 40 high)
BOXES = [(0, 0, 10, 20), (10, 0, 20, 20), (0, 20, 10, 40), (10, 20, 20, 40)]


def _run(heads: np.ndarray) -> AttentionRun:
    toks = [Token(text="[CLS]", raw="[CLS]", id=0, special=True, kind="cls"),
            Token(text="[REG0]", raw="[REG0]", id=1, special=True, kind="register"),
            Token(text="[REG1]", raw="[REG1]", id=2, special=True, kind="register")]
    toks += [Token(text=f"({j // 2},{j % 2})", raw="p", id=3 + j, row=j // 2, col=j % 2,
                   box=b, kind="patch") for j, b in enumerate(BOXES)]
    n = len(toks)
    return AttentionRun(text="img", tokens=toks,
                        stacks={"self": AttentionStack("self", [heads], np.zeros((n, n), bool))},
                        model={"id": "hand"},
                        extra={"image": {"width": 20, "height": 40, "grid": [2, 2],
                                         "kind": "vision"}})


def test_distance_focus_and_sink_mass():
    n = 7
    a = np.zeros((3, n, n))  # [head, query, key]
    a[0, np.arange(n), np.arange(n)] = 1.0  # every token to itself
    for q, k in ((3, 6), (4, 5), (5, 4), (6, 3)):  # each patch to the opposite corner
        a[1, q, k] = 1.0
    a[1, :3, 3] = 1.0  # CLS and registers all on patch (0, 0)
    a[2, :, 1:3] = 0.25  # half to the two registers, half spread over the patches
    a[2, :, 3:] = 0.125
    entries = vision_scores(_run(a.astype(np.float32)))
    s = [e["scores"] for e in entries]
    assert s[0]["distance_px"] == pytest.approx(0.0)
    assert s[1]["distance_px"] == pytest.approx(np.hypot(10, 20))
    assert s[0]["sink_mass"] == 0 and s[1]["register_mass"] == 0
    assert s[2]["sink_mass"] == pytest.approx(0.5) and s[2]["register_mass"] == pytest.approx(0.5)
    assert s[1]["cls_focus"] == pytest.approx(1.0)  # all on one patch
    assert s[2]["cls_focus"] == pytest.approx(0.0, abs=1e-9)  # spread evenly
    # the mean distance of an even spread: the average centre-to-centre distance
    assert s[2]["distance_px"] == pytest.approx((0 + 10 + 20 + np.hypot(10, 20)) / 4)


def test_census_refuses_text_runs():
    run = _run(np.full((1, 7, 7), 1 / 7, np.float32))
    run.extra.clear()
    with pytest.raises(AttnmapError, match="run of an image"):
        vision_scores(run)


def test_boxes_of_resize_and_centre_crop():
    # 64×40 → shortest edge 32: 51×32, centre crop 28×28 from (left 11, top 2), 7-pixel patches
    assert resized_size(64, 40, {"shortest_edge": 32}) == (32, 51)
    assert resized_size(40, 64, {"shortest_edge": 32}) == (51, 32)
    assert resized_size(64, 40, {"height": 24, "width": 24}) == (24, 24)
    boxes = patch_boxes(64, 40, (32, 51), (28, 28), (7, 7), (4, 4))
    sx, sy = 64 / 51, 40 / 32
    assert boxes[0] == (round(11 * sx), round(2 * sy), round(18 * sx), round(9 * sy))
    assert boxes[-1] == (round(32 * sx), round(23 * sy), round(39 * sx), round(30 * sy))
    # plain resize: the grid covers the whole picture
    whole = patch_boxes(64, 40, (32, 32), None, (8, 8), (4, 4))
    assert whole[0] == (0, 0, 16, 10) and whole[-1] == (48, 30, 64, 40)


def test_image_header_carries_boxes_and_kinds():
    run = _run(np.full((1, 7, 7), 1 / 7, np.float32))
    hd = image_header(run)["image"]
    assert hd["grid"] == [2, 2] and hd["query"] == 0 and hd["png"] is None
    assert hd["patches"][:3] == [None, None, None]
    assert hd["patches"][6] == [1, 1, 10, 20, 20, 40]
    assert hd["kinds"][:3] == ["cls", "register", "register"]


def test_looks_like_image(tmp_path):
    png = tmp_path / "a"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 8)
    assert looks_like_image(png)  # by its bytes, whatever its name
    assert looks_like_image(tmp_path / "missing.jpg")  # so the error says the image is missing
    assert not looks_like_image("The cat sat on the mat.")
    assert not looks_like_image("a photo.jpg of a cat")
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    assert not looks_like_image(txt)
