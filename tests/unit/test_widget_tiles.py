"""The widget's kernel side for long runs: the payload carries the header only, and tile
requests sent as anywidget custom messages are answered with `attnmap.tiles.tile`'s exact
float32 bytes, or with a one-line error for a bad request (never an exception in the kernel)."""

from __future__ import annotations

import re

import numpy as np
import pytest

pytest.importorskip("anywidget")

from attnmap import AttnmapError, show, tiles  # noqa: E402
from attnmap.viewer import longpage  # noqa: E402
from attnmap.viewer import payload as P  # noqa: E402
from attnmap.viewer.widget import MAX_CELLS, make_widget  # noqa: E402
from tests.unit.test_tiles import N, dense_of, qk_run  # noqa: E402


class Sent(list):
    """What the widget sent to the front end: (content, buffers) pairs."""


def widget(run, **kw):
    w = make_widget(run, **kw)
    sent = Sent()
    w.send = lambda content, buffers=None: sent.append((content, buffers or []))
    return w, sent


def ask(w, sent, **req):
    """One request through the widget's registered message handler; its one reply."""
    n = len(sent)
    w._handle_custom_msg({"kind": "tile", "id": 7, **req}, [])
    assert len(sent) == n + 1
    return sent[-1]


@pytest.fixture(scope="module")
def run():
    return qk_run(heads=4, kv=2, window=5)


def test_long_qk_run_sends_the_header_only_and_asks_for_tiles():
    long = qk_run(2050, heads=2, kv=1, dim=4)  # 2050² cells: over the page's dense limit
    assert longpage.choose(long) == "long"
    w = show(long, head=1)  # what a notebook calls
    assert w.tiles is True and w.options["head"] == 1
    got = P.decode(w.payload)
    assert got["layers"] == {} and got["header"]["chunks"] == []
    assert got["header"]["stacks"][0]["shape"] == [2, 2, 2050, 2050]
    assert len(w.payload) < 200_000  # a header: tokens and facts, not 2 × 2 × 2050² weights


def test_short_run_stays_dense_unless_asked(run):
    w = make_widget(run)
    assert w.tiles is False and len(P.decode(w.payload)["layers"]) == run.n_layers
    t = make_widget(run, representation="tiles", layer=1)
    assert t.tiles is True and P.decode(t.payload)["layers"] == {}
    assert t.options["layer"] == 1
    with pytest.raises(AttnmapError, match=r"representation must be 'auto', 'dense' or "
                       r"'tiles' \(not 'long'\)"):
        make_widget(run, representation="long")


def test_show_sends_compact_codes_when_asked(run):
    """``show(run, precision="compact")``: the dense payload's layers carry compact codes,
    every weight within 1/510; a bad precision is one error before anything is encoded."""
    full = P.decode(show(run).payload)
    small = P.decode(show(run, precision="compact").payload)
    assert {c["precision"] for c in full["layers"].values()} == {"full"}
    assert {c["precision"] for c in small["layers"].values()} == {"compact"}
    for li in range(run.n_layers):
        got = small["layers"][("self", li)]["values"]
        assert np.abs(got - run.layer(li)).max() <= 1 / 510 + 1e-6
    with pytest.raises(AttnmapError, match=r"precision must be 'full' or 'compact' "
                       r"\(not 'tiny'\)"):
        show(run, precision="tiny")


@pytest.mark.parametrize("req", [
    dict(layer=0, head=1, block=1),  # exact cells, sliding window
    dict(layer=1, head=3, block=4, q0=8, k0=4, rows=5, cols=3, reduce="sum"),
    dict(layer=-1, head="mean", block=2, q0=2, k0=0, rows=20, cols=20),  # past the edge: NaN
    dict(layer=0, head="max", block=8, reduce="max", ignore_first=True, cols=1),
    dict(stack="self", layer=1, head=-1, block=16),
])
def test_reply_is_the_exact_tile(run, req):
    w, sent = widget(run, representation="tiles")
    content, buffers = ask(w, sent, **req)
    assert "error" not in content, content
    want = tiles.tile(run, req["layer"], req["head"], stack=req.get("stack"),
                      block=req["block"], q0=req.get("q0", 0), k0=req.get("k0", 0),
                      rows=req.get("rows"), cols=req.get("cols"),
                      reduce=req.get("reduce", "max"), ignore_first=req.get("ignore_first", False))
    assert content["id"] == 7 and content["kind"] == "tile"
    assert (content["rows"], content["cols"], content["block"]) == (*want.shape, req["block"])
    assert len(buffers) == 1
    got = np.frombuffer(buffers[0], dtype="<f4").reshape(want.shape)
    assert np.array_equal(got, want, equal_nan=True)
    assert np.isnan(got).any() == np.isnan(want).any()


def test_dense_run_answers_the_same_values(run):
    """A run that holds weights (representation="tiles" forced) gives the q/k run's tiles."""
    w, sent = widget(dense_of(run), representation="tiles")
    _, buffers = ask(w, sent, layer=0, head=2, block=1)
    want = tiles.tile(run, 0, 2)
    got = np.frombuffer(buffers[0], dtype="<f4").reshape(N, N)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.array_equal(np.isnan(got), np.isnan(want))


@pytest.mark.parametrize("req, message", [
    (dict(layer=0, head=4), r"^self head must be in 0\.\.3 or -4\.\.-1 counting from the end "
                            r"\(not 4\)$"),
    (dict(layer=2, head=0), r"^self layer must be in 0\.\.1 or -2\.\.-1 counting from the end "
                            r"\(not 2\)$"),
    (dict(head="all"), r"^head must be a head number in 0\.\.3, 'mean' or 'max' \(not 'all'\)$"),
    (dict(block=0), r"^block must be a whole number ≥ 1 \(not 0\); that would be a zoom beyond "
                    r"exact cells"),
    (dict(block=1.5), r"^block must be a whole number ≥ 1 \(not 1\.5\)"),
    (dict(q0=N, k0=0), rf"^the tile starts at query {N}, key 0: past the {N} × {N} matrix"),
    (dict(q0=0, k0=-1), r"^k0 must be a whole number ≥ 0 \(not -1\)$"),
    (dict(rows=1025, cols=1024), r"^a tile of 1,025 × 1,024 values is over the widget's limit "
                                 r"of 1,048,576 per request; ask for fewer rows/cols or a "
                                 r"larger block$"),
    (dict(rows=0), r"^rows must be a whole number ≥ 1 \(not 0\)$"),
    (dict(reduce="mean"), r"^reduce must be 'max' or 'sum' \(not 'mean'\)$"),
    (dict(stack="cross"), r"^the run has no 'cross' attention; it has: self$"),
    (dict(ignore_first="yes"), r"^ignore_first must be true or false \(not 'yes'\)$"),
    (dict(layer="x" * 500), r"^layer must be a whole number \(not 'x{19}…\)$"),
])
def test_bad_requests_get_a_one_line_error(run, req, message):
    assert MAX_CELLS == 1024 * 1024
    w, sent = widget(run, representation="tiles")
    content, buffers = ask(w, sent, **req)
    assert buffers == [] and content["id"] == 7 and "rows" not in content
    assert "\n" not in content["error"]
    assert re.search(message, content["error"]), content["error"]


def test_other_messages_are_left_alone(run):
    w, sent = widget(run, representation="tiles")
    w._handle_custom_msg({"kind": "something else", "id": 1}, [])
    w._handle_custom_msg(["not", "a", "dict"], [])
    assert sent == []
    # a request without an id still gets its reply (with id None)
    w._handle_custom_msg({"kind": "tile", "id": {"odd": 1}, "layer": 0}, [])
    assert sent[-1][0]["id"] is None and len(sent[-1][1]) == 1


def test_a_failure_inside_the_tile_is_a_reply_not_a_kernel_error(run, monkeypatch):
    w, sent = widget(run, representation="tiles")

    def broken(*a, **k):
        raise MemoryError("no room\nfor the tile")

    monkeypatch.setattr(tiles, "tile", broken)
    content, buffers = ask(w, sent, layer=0, head=0)
    assert content["error"] == "the tile could not be computed (MemoryError: no room for the tile)"
    assert buffers == []
