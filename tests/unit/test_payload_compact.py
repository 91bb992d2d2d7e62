"""Compact precision: per-row levels within 1/510 of every weight, row peaks exact, masks and
zeros kept, near the size of 8-bit deflated weights; full precision unchanged byte for byte."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attnmap import AttentionRun, AttentionStack, AttnmapError, Token
from attnmap.cli import main
from attnmap.viewer import payload as P
from attnmap.viewer import to_html

from ..integration.test_html_cli import payload_of
from .test_payload import causal_run, seq2seq_run
from .test_payload_stream import qk_run

TOL = 1 / 510


def _bound(peaks: np.ndarray) -> np.ndarray:
    """The compact promise per row: 1/510, or row max / 508 for a row above 254/255."""
    return np.maximum(TOL, peaks / 508)


def _check_compact(ref: np.ndarray, masked: np.ndarray, chunk: dict, rtol: float = 2e-7
                   ) -> None:
    """`chunk` (decode_layer) against the weights `ref` [head, query, key] it encodes; peaks
    within `rtol` (float rounding: a q/k run's row max is 1 / Σ exp, not the weight itself)."""
    hidden = np.broadcast_to(masked, ref.shape)
    seen = np.where(hidden, 0, ref).astype(np.float32)
    peaks = seen.max(axis=2)  # [head, query]
    assert chunk["precision"] == "compact"
    np.testing.assert_array_equal(chunk["masked"], hidden)  # masked cells, and only those
    assert np.all(chunk["codes"][hidden] == P.MASKED)
    assert np.all(chunk["codes"][~hidden] <= P.COMPACT_MAX_LEVELS)
    err = np.abs(chunk["values"] - seen) - _bound(peaks)[:, :, None]
    assert err.max() <= max(1e-7, rtol), float(err.max())
    assert np.all(chunk["values"][(seen == 0) & ~hidden] == 0)  # zeros stay exactly 0
    # Each row's peak decodes to itself, and the decoder's row maxima are the peaks.
    np.testing.assert_allclose(chunk["values"].max(axis=2), peaks, rtol=rtol, atol=0)
    np.testing.assert_allclose(chunk["peaks"], peaks, rtol=rtol, atol=0)


def _near_uniform_run(n: int, heads: int = 2, seed: int = 0, causal: bool = True
                      ) -> AttentionRun:
    """Rows near 1/n with ±10 % noise: the run whose full codes carry ~4.5 bits per cell."""
    rng = np.random.default_rng(seed)
    masked = np.triu(np.ones((n, n), dtype=bool), k=1) if causal else np.zeros((n, n), bool)
    w = np.where(masked, 0, 1 + 0.1 * rng.standard_normal((heads, n, n))).astype(np.float32)
    w /= w.sum(axis=2, keepdims=True)  # [head, query, key]
    toks = [Token(text=f"t{i}", raw=f"t{i}", id=i) for i in range(n)]
    return AttentionRun(tokens=toks, stacks={"self": AttentionStack("self", [w], masked)},
                        model={"id": "uniform"}, text=" ".join(t.text for t in toks))


def test_round_trip_within_tol_every_stack():
    run = seq2seq_run()
    d = P.decode(P.encode(run, precision="compact"))
    assert d["version"] == P.COMPACT_VERSION == 2
    assert d["header"]["encoding"] == P.COMPACT_ENCODING
    for (stack, li), chunk in d["layers"].items():
        _check_compact(run.layer(li, stack), run.stack(stack).masked, chunk)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 9), st.integers(1, 40), st.floats(0.5, 8),
       st.integers(0, 2**32 - 1))
def test_quantise_compact_bound(heads, q, k, power, seed):
    """Rows of every shape: peaked (max near 1, the levels cap), flat (max 1/k), all zero."""
    rng = np.random.default_rng(seed)
    w = rng.random((heads, q, k), dtype=np.float32) ** power  # [head, query, key]
    w /= w.sum(axis=2, keepdims=True)
    w[0, 0] = 0  # a row of zeros
    if k > 1 and q > 1:
        w[0, 1] = 0
        w[0, 1, 0] = 1  # a one-hot row: the peak needs the most levels
    masked = rng.random((q, k)) < 0.2  # [query, key]
    scales, codes = P.quantise(w, masked, precision="compact")
    vals = codes.astype(np.float32) * (scales[..., None] / P.LEVELS)
    seen = np.where(masked[None], 0, w)
    peaks = seen.max(axis=2)
    assert np.all((codes == P.MASKED) == masked[None])
    assert np.all(np.abs(np.where(masked[None], 0, vals) - seen)
                  <= _bound(peaks)[:, :, None] + 1e-7)
    assert np.all(scales[0, 0] == 0) and np.all(codes[0, 0][~masked[0]] == 0)
    # The peak's code is the row's number of levels, so it decodes to itself.
    levels = P.row_levels(peaks)
    top = np.where(masked[None], 0, codes).max(axis=2)
    np.testing.assert_array_equal(top, levels)
    np.testing.assert_allclose(np.where(masked[None], 0, vals).max(axis=2), peaks, rtol=2e-7)


def test_levels_follow_the_row_max():
    top = np.array([0, 1e-6, 0.9 / 255, 1.5 / 255, 0.01, 0.5, 0.996, 0.999, 1, 3], np.float32)
    assert P.row_levels(top).tolist() == [0, 1, 1, 2, 3, 128, 254, 254, 254, 254]


@pytest.mark.parametrize("kw", [{}, {"window": 5}, {"sinks": True}, {"empty_row": True},
                                {"n": 300, "layers": 1}])
def test_qk_runs_encode_compact_as_their_weights_do(kw):
    run = qk_run(**kw)
    for li in range(run.n_layers):
        w = run.layer(li)  # [head, query, key]
        mask = np.asarray(run.mask(li), bool)
        scales, codes = P.quantise(w, mask, precision="compact")
        got = P.decode_layer(P.encode_layer(run, "self", li, precision="compact"))
        assert np.abs(got["codes"].astype(int) - codes).max() <= 1
        assert np.count_nonzero(got["codes"] != codes) <= codes.size // 1000 + 1
        np.testing.assert_allclose(got["scales"], scales, rtol=1e-6, atol=1e-12)
        _check_compact(w, mask, got, rtol=2e-6)


def test_masked_differs_from_zero():
    run = causal_run(n=4, layers=1, heads=1)
    w = run.stacks["self"].layers[0]
    w[0, 3, 1] = 0.0
    w[0, 3] /= w[0, 3].sum()
    chunk = P.decode_layer(P.encode_layer(run, "self", 0, precision="compact"))
    assert chunk["codes"][0, 3, 1] == 0 and not chunk["masked"][0, 3, 1]
    assert chunk["codes"][0, 0, 1] == P.MASKED and chunk["masked"][0, 0, 1]


def _chunks_digest(run: AttentionRun) -> str:
    """sha256 over each full-precision chunk's prefix and JSON header and its inflated body
    (the bytes deflate starts from, so the digest does not depend on the zlib build)."""
    h = hashlib.sha256()
    for name, stack in run.stacks.items():
        for li in range(stack.n_layers):
            chunk = P.encode_layer(run, name, li)
            (n,) = struct.unpack_from("<I", chunk, 8)
            length = json.loads(chunk[12 : 12 + n])["length"]
            h.update(chunk[: 12 + n])
            h.update(zlib.decompress(chunk[12 + n : 12 + n + length]))
    return h.hexdigest()


def test_full_precision_is_unchanged_byte_for_byte():
    # Digests taken from the encoder before compact precision existed.
    assert _chunks_digest(causal_run()) == (
        "2e9aa867ae39e5e015eb9afd393a097863c1b1f8e0c79fc7d93ccb053404890a")
    assert _chunks_digest(seq2seq_run()) == (
        "d1e7a39c70e75180f9ab408aa53e45e51e29c8360d91365bc8f42b163a7e6915")
    run = seq2seq_run()
    blob = P.encode(run)
    assert P.encode(run, precision="full") == blob
    assert struct.unpack_from("<I", blob, 4) == (P.PAYLOAD_VERSION,)
    assert P.decode(blob)["header"]["encoding"] == P.ENCODING
    for chunk in P.decode(blob)["layers"].values():
        assert chunk["precision"] == "full" and chunk["peaks"] is not None
        np.testing.assert_array_equal(chunk["peaks"], chunk["scales"])


def test_compact_is_near_the_floor_where_full_is_not():
    """A near-uniform 512-token row set: the floor is zlib(uint8(round(255·v)), 9)."""
    run = _near_uniform_run(512)
    w = np.where(run.stack().masked[None], 0, run.layer(0))
    floor = len(zlib.compress(np.rint(255 * w).astype(np.uint8).tobytes(), 9))
    full = len(P.encode_layer(run, "self", 0))
    compact = len(P.encode_layer(run, "self", 0, precision="compact"))
    assert compact <= 1.5 * floor < full / 5, (floor, compact, full)


def test_unknown_versions_and_encodings_are_refused():
    run = causal_run(n=3, layers=1, heads=1)
    blob = P.encode(run, precision="compact")
    with pytest.raises(AttnmapError, match="version 3 is newer than this attnmap reads"):
        P.decode(blob[:4] + struct.pack("<I", 3) + blob[8:])
    chunk = P.encode_layer(run, "self", 0, precision="compact")
    assert chunk[4:8] == struct.pack("<I", P.COMPACT_VERSION)
    bad = chunk.replace(P.COMPACT_ENCODING.encode(), b"u8-rowlevels-999")
    with pytest.raises(AttnmapError, match="encoding 'u8-rowlevels-999' is not one"):
        P.decode_layer(bad)


def test_bad_precision_is_one_line():
    run = causal_run(n=3, layers=1, heads=1)
    for call in (lambda: P.encode(run, precision="tiny"),
                 lambda: P.encode_layer(run, "self", 0, precision="tiny"),
                 lambda: to_html(run, precision="tiny"),
                 lambda: to_html(run, precision="tiny", representation="long")):
        with pytest.raises(AttnmapError, match=r"precision must be 'full' or 'compact' "
                                               r"\(not 'tiny'\)"):
            call()


def test_to_html_carries_compact_precision():
    run = causal_run()
    page = to_html(run, precision="compact")
    d = payload_of(page)
    assert d["version"] == P.COMPACT_VERSION
    assert d["header"]["encoding"] == P.COMPACT_ENCODING
    _check_compact(run.layer(1), run.stack().masked, d["layers"][("self", 1)])


def test_html_cli_precision(tmp_path, capsys):
    src = tmp_path / "run.safetensors"
    _near_uniform_run(64, causal=False).save(src)
    sizes = {}
    for precision in ("full", "compact"):
        out = tmp_path / f"{precision}.html"
        assert main(["html", "--run", str(src), "--precision", precision,
                     "--representation", "dense", "-o", str(out), "--quiet"]) == 0
        d = payload_of(out.read_text("utf-8"))
        assert d["header"]["encoding"] == (P.COMPACT_ENCODING if precision == "compact"
                                           else P.ENCODING)
        sizes[precision] = out.stat().st_size
    assert sizes["compact"] < sizes["full"]
    capsys.readouterr()
    bad = tmp_path / "bad.html"
    with pytest.raises(SystemExit) as exc:  # argparse's usage error, one line, code 2
        main(["html", "--run", str(src), "--precision", "tiny", "-o", str(bad)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--precision" in err[0] and "'tiny'" in err[0], err
    assert "Traceback" not in err[0] and not bad.exists()
