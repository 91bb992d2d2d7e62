"""Property tests: any Unicode token text and any attention matrix survive the run file and
the viewer payload."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import attnmap
from attnmap import AttentionRun, AttentionStack, Token
from attnmap.tokens import visible
from attnmap.viewer.payload import decode, decode_layer, encode, encode_layer

texts = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=12)


def _run(labels: list[str], a: np.ndarray, masked: np.ndarray) -> AttentionRun:
    toks = [Token(text=t, raw=t, id=i) for i, t in enumerate(labels)]
    return AttentionRun(text=" ".join(labels), tokens=toks, model={"id": "prop"},
                        stacks={"self": AttentionStack("self", [a], masked)})


@st.composite
def attention(draw):
    n = draw(st.integers(1, 9))
    heads = draw(st.integers(1, 3))
    raw = draw(arrays(np.float32, (heads, n, n),
                      elements=st.floats(0, 1, width=32, allow_subnormal=False)))
    masked = draw(arrays(np.bool_, (n, n)))
    masked[:, 0] = False  # every row sees at least one key
    raw = np.where(masked[None], 0, raw + 1e-3)
    a = (raw / raw.sum(-1, keepdims=True)).astype(np.float32)  # [head, query, key]
    labels = draw(st.lists(texts, min_size=n, max_size=n))
    return labels, a, masked


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attention())
def test_payload_round_trip(case):
    labels, a, masked = case
    run = _run(labels, a, masked)
    got = decode_layer(encode_layer(run, "self", 0))
    row_max = np.where(masked[None], 0, a).max(-1, keepdims=True)  # [head, query, 1]
    err = np.abs(np.where(masked[None], 0, got["values"] - a))
    assert np.all(err <= row_max / 255 + 1e-7)
    np.testing.assert_array_equal(got["masked"], np.broadcast_to(masked[None], a.shape))
    head = decode(encode(run))["header"]
    shown = head["stacks"][0]
    # token text travels as data, exactly as given
    assert shown["query_tokens"] == labels and shown["key_tokens"] == labels


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attention())
def test_run_file_round_trip(tmp_path_factory, case):
    labels, a, masked = case
    run = _run(labels, a, masked)
    back = attnmap.load(run.save(tmp_path_factory.mktemp("p") / "r.safetensors"))
    # token text comes back as data, with invisible and control characters made visible
    # exactly as a captured token's are (visible() is idempotent: captured text is unchanged)
    assert [t.text for t in back.tokens] == [visible(t) for t in labels]
    np.testing.assert_array_equal(back.attention, run.attention)
    np.testing.assert_array_equal(back.masked, masked)
