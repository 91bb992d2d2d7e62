"""A compact-precision page in Chromium: colours on the head's real maximum (not the largest
scale), codes above 128 painted, tooltips within 1/510."""

from __future__ import annotations

import matplotlib as mpl
import numpy as np

from attnmap import AttentionRun, AttentionStack, Token
from attnmap.viewer.payload import decode_layer, encode_layer

from .test_viewer import clean, hooks, hover_cell, open_page


def _run(n: int = 6) -> AttentionRun:
    rng = np.random.default_rng(4)
    w = (rng.random((2, n, n)) ** 3).astype(np.float32)  # [head, query, key]
    w[1] = 0.5 + rng.random((n, n)) / 2  # head 1: flat rows, max < 0.3, scales near 0.5
    w /= w.sum(axis=2, keepdims=True)
    w[0, 0] = [0.93, 0.04, 0.02, 0.01, 0, 0][:n]  # a peaked row: 238 levels, codes past 128
    toks = [Token(text=f"t{i}", raw=f"t{i}", id=i) for i in range(n)]
    masked = np.zeros((n, n), bool)
    return AttentionRun(tokens=toks, stacks={"self": AttentionStack("self", [w], masked)},
                        model={"id": "compact"}, text=" ".join(t.text for t in toks))


def test_compact_page_colours_and_values(page, tmp_path):
    run = _run()
    d = decode_layer(encode_layer(run, "self", 0, precision="compact"))
    assert d["codes"][0].max() > 128  # the paint table must reach past 128
    assert d["scales"][1].max() > 1.5 * d["peaks"][1].max()  # a scale is not the row max
    cells = "[0,1,2,3,4,5].map(q => [0,1,2,3,4,5].map(k => a.pixel(q, k)))"
    for head in (0, 1):
        open_page(page, run, tmp_path / f"c{head}.html", precision="compact", scale="data",
                  head=head)
        vals = (d["codes"][head].astype(np.float64)
                * d["scales"][head, :, None].astype(np.float64) / 128)  # [query, key]
        vmax = float(d["peaks"][head].max())  # the data scale: 0 to the head's largest value
        got = np.array(hooks(page, cells))
        want = np.asarray(mpl.colormaps["Blues"](vals / vmax, bytes=True))  # [q, k, rgba]
        assert np.all(got[..., 3] == 255)  # every cell painted
        assert np.abs(got[..., :3].astype(int) - want[..., :3].astype(int)).max() <= 1
        for q, k in [(0, 0), (1, 3), (4, 2)]:
            tip = hover_cell(page, q, k)
            assert abs(float(tip.get_attribute("data-value"))
                       - run.head(0, head)[q, k]) <= 1 / 510 + 1e-7
        clean(page)
