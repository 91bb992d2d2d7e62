"""One colour truth: the page paints a value in matplotlib's colour for it; chat-role bands."""

from __future__ import annotations

import dataclasses

import matplotlib as mpl
import numpy as np
import pytest

from attnmap import AttentionRun, AttentionStack, Token
from attnmap.diff import compare
from attnmap.viewer import diff_html
from attnmap.viewer.payload import decode_layer, encode_layer

from .test_viewer import ROOT, clean, hooks, open_page, wait_js


def _run(seed: int = 0, n: int = 5, *, causal: bool = False, tokens=None) -> AttentionRun:
    rng = np.random.default_rng(seed)
    masked = np.triu(np.ones((n, n), dtype=bool), k=1) if causal else np.zeros((n, n), bool)
    w = rng.random((1, n, n)).astype(np.float32) ** 2  # [head, query, key]
    w[:, masked] = 0
    w /= w.sum(axis=2, keepdims=True)
    toks = tokens or [Token(text=f"t{i}", raw=f"t{i}", id=i) for i in range(n)]
    return AttentionRun(tokens=toks, stacks={"self": AttentionStack("self", [w], masked)},
                        model={"id": "colours"}, text=" ".join(t.text for t in toks))


def _shown_values(run) -> np.ndarray:
    """The values the page shows: the payload's codes times their row scales, as the JS does."""
    d = decode_layer(encode_layer(run, "self", 0))
    codes, scales = d["codes"][0].astype(np.float64), d["scales"][0].astype(np.float64)
    return codes * scales[:, None] / 128  # [query, key]


@pytest.mark.parametrize("cmap", [None, "viridis"])
def test_page_colours_equal_matplotlib(page, tmp_path, cmap):
    run = _run(seed=1)
    opts = {"scale": "unit"} if cmap is None else {"scale": "unit", "cmap": cmap}
    open_page(page, run, tmp_path / "c.html", **opts)
    cm = mpl.colormaps[cmap or "Blues"]
    assert hooks(page, "a.colormap.name") == (cmap or "Blues")
    vals = _shown_values(run)
    got = np.array(hooks(page, "[0,1,2,3,4].map(q => [0,1,2,3,4].map(k => a.pixel(q, k)))"))
    want = np.asarray(cm(vals, bytes=True))  # [query, key, rgba]
    assert np.abs(got[..., :3].astype(int) - want[..., :3].astype(int)).max() <= 1
    assert len({tuple(p) for p in got.reshape(-1, 4).tolist()}) >= 10  # really many colours
    clean(page)


def test_diff_page_uses_matplotlibs_diverging_map(page, tmp_path):
    a, b = _run(seed=2), _run(seed=3)
    path = tmp_path / "d.html"
    diff_html(compare(a, b), path, layer=0, head=0)
    page.goto(path.as_uri())
    wait_js(page, f"document.querySelector('{ROOT}')?.dataset.view === 'diff'")
    dh = hooks(page, "a.diffHead")
    rdbu, blues = mpl.colormaps["RdBu_r"], mpl.colormaps["Blues"]
    for q, k in [(0, 0), (1, 3), (4, 2), (3, 3)]:
        p = q * dh["k"] + k
        t = (dh["d"][p] + dh["lim"]) / (2 * dh["lim"])
        got = hooks(page, f"a.diffPixel(2, {q}, {k})")
        assert np.abs(np.array(got[:3]) - np.array(rdbu(t, bytes=True)[:3], int)).max() <= 1
        got_a = hooks(page, f"a.diffPixel(0, {q}, {k})")
        want_a = blues(dh["a"][p] / dh["vmax"], bytes=True)
        assert np.abs(np.array(got_a[:3]) - np.array(want_a[:3], int)).max() <= 1
    clean(page)


ROLES = ["system"] * 4 + ["user"] * 5 + ["assistant"] * 5 + [None]
MESSAGES = [0] * 4 + [1] * 5 + [2] * 5 + [None]


def _chat_tokens() -> list[Token]:
    base = [Token(text=f"w{i}", raw=f"w{i}", id=i, special=i == 14) for i in range(len(ROLES))]
    names = {f.name for f in dataclasses.fields(Token)}
    if {"role", "message"} <= names:
        return [dataclasses.replace(t, role=r, message=m)
                for t, r, m in zip(base, ROLES, MESSAGES)]
    # Until the lead's change gives Token its role/message fields, a subclass carries them:
    # payload.py reads them with getattr either way.
    return [_ChatToken(text=t.text, raw=t.raw, id=t.id, special=t.special, role=r, message=m)
            for t, r, m in zip(base, ROLES, MESSAGES)]


@dataclasses.dataclass(frozen=True)
class _ChatToken(Token):
    role: str | None = None
    message: int | None = None


def test_role_bands_along_both_axes(page, tmp_path):
    run = _run(seed=4, n=len(ROLES), causal=True, tokens=_chat_tokens())
    open_page(page, run, tmp_path / "chat.html")
    bands = hooks(page, "a.bands")
    for axis in ("query", "key"):
        mine = [(b["start"], b["end"], b["role"], b["message"]) for b in bands if b["axis"] == axis]
        assert mine == [(0, 4, "system", 0), (4, 9, "user", 1), (9, 14, "assistant", 2)]
    assert all(b["labelled"] for b in bands)  # 4+ tokens at this size: room for the role
    sys_q, user_k = hooks(page, "[a.bandPixel('query', 1), a.bandPixel('key', 6)]")
    assert sys_q[:3] != user_k[:3] and sys_q[3] == user_k[3] == 255
    no_role = hooks(page, "a.bandPixel('query', 14)")
    assert no_role[:3] == [255, 255, 255]  # the last token has no role: no band there
    # A token's row is still where the cell hooks say (the bands shift the matrix, not rows).
    page.mouse.move(**hooks(page, "a.cell(6, 2)"))
    tip = page.locator(".am-tip")
    tip.wait_for(state="visible")
    assert tip.get_attribute("data-q") == "6" and tip.get_attribute("data-k") == "2"
    clean(page)


def test_no_roles_no_bands(page, tmp_path):
    open_page(page, _run(seed=5), tmp_path / "plain.html")
    assert hooks(page, "a.bands") == []
    clean(page)
