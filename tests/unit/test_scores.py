"""Head scores on attention matrices written by hand, with answers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from attnmap import AttentionRun, AttentionStack, AttnmapError, Token
from attnmap.analysis import SCORE_NAMES, head_scores


def make_run(heads, ids=None, *, causal=True, special=()):
    """A run from hand-made matrices: `heads` is [head, query, key] for one layer."""
    a = np.asarray(heads, dtype=np.float32)
    if a.ndim == 2:
        a = a[None]
    n = a.shape[-1]
    ids = list(range(10, 10 + n)) if ids is None else list(ids)
    tokens = [Token(text=f"t{i}", raw=f"r{i}", id=i, special=k in special)
              for k, i in enumerate(ids)]
    masked = np.triu(np.ones((n, n), bool), 1) if causal else np.zeros((n, n), bool)
    return AttentionRun(text=" ".join(t.text for t in tokens), tokens=tokens,
                        stacks={"self": AttentionStack("self", [a], masked)},
                        model={"id": "hand", "causal": causal})


def scores(run, **kw):
    return head_scores(run, **kw)[0]["scores"]


def previous_head(n):
    a = np.eye(n, k=-1)
    a[0, 0] = 1.0
    return a


def test_names_and_structure():
    entries = head_scores(make_run([previous_head(4), np.eye(4)]))
    assert [(e["layer"], e["head"]) for e in entries] == [(0, 0), (0, 1)]
    assert all(tuple(e["scores"]) == SCORE_NAMES for e in entries)
    assert set(SCORE_NAMES) >= {"self", "previous_token", "first_token", "duplicate_token",
                                "induction", "locality", "mean_distance", "entropy", "special"}


def test_perfect_previous_token_head():
    s = scores(make_run(previous_head(5)), locality_k=1)
    assert s["previous_token"] == 1.0  # row 0 has no previous token and does not count
    assert s["self"] == pytest.approx(1 / 5)  # only row 0 sits on the diagonal
    assert s["first_token"] == pytest.approx(2 / 5)  # rows 0 and 1
    assert s["locality"] == 1.0
    assert s["mean_distance"] == pytest.approx(4 / 5)
    assert s["entropy"] == 0.0


def test_self_head():
    s = scores(make_run(np.eye(6)))
    assert (s["self"], s["previous_token"], s["mean_distance"], s["entropy"]) == (1, 0, 0, 0)


def test_one_hot_rows_have_zero_entropy():
    a = np.zeros((5, 5))
    a[np.arange(5), [0, 0, 2, 1, 3]] = 1.0
    s = scores(make_run(a))
    assert s["entropy"] == 0.0 and s["entropy_norm"] == 0.0
    assert s["first_token"] == pytest.approx(2 / 5)
    assert s["mean_distance"] == pytest.approx((0 + 1 + 0 + 2 + 1) / 5)


@pytest.mark.parametrize("i", [1, 2, 5, 7])
def test_uniform_causal_row_i_has_entropy_log_i_plus_1(i):
    n = 8
    a = np.eye(n)  # every other row one-hot: entropy 0
    a[i] = 0.0
    a[i, : i + 1] = 1.0 / (i + 1)
    s = scores(make_run(a))
    assert s["entropy"] == pytest.approx(np.log(i + 1) / n, rel=1e-6)
    # normalised by ln(allowed keys): 1 for row i, 0 elsewhere; row 0 (one key) does not count
    assert s["entropy_norm"] == pytest.approx(1 / (n - 1), rel=1e-6)


def test_uniform_rows_normalise_to_one_causal_and_not():
    n = 6
    causal = np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]
    assert scores(make_run(causal))["entropy_norm"] == pytest.approx(1.0)
    full = np.full((n, n), 1 / n)
    s = scores(make_run(full, causal=False))
    assert s["entropy_norm"] == pytest.approx(1.0) and s["entropy"] == pytest.approx(np.log(n))


IDS = [1, 7, 8, 9, 7, 8, 9]  # BOS x y z x y z


def induction_head(frac=1.0):
    n = len(IDS)
    a = np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]
    for i, target in ((4, 2), (5, 3), (6, 4)):  # the token after the earlier copy
        a[i] = (1 - frac) * np.eye(n)[0] + frac * np.eye(n)[target]
    return a


def test_induction_counts_only_rows_with_an_earlier_copy():
    s = scores(make_run(induction_head(), IDS))
    # Over all rows (TransformerLens' head detector) it would be 3/7; only rows 4–6 qualify.
    assert s["induction"] == 1.0
    assert s["duplicate_token"] == 0.0
    assert scores(make_run(induction_head(0.25), IDS))["induction"] == pytest.approx(0.25)


def test_duplicate_token_head():
    n = len(IDS)
    a = np.eye(n)
    for i, earlier in ((4, 1), (5, 2), (6, 3)):
        a[i] = np.eye(n)[earlier]
    s = scores(make_run(a, IDS))
    assert s["duplicate_token"] == 1.0 and s["induction"] == 0.0


def test_scores_without_any_target_are_none():
    s = scores(make_run(np.eye(4)))  # all tokens different
    assert s["duplicate_token"] is None and s["induction"] is None
    one = make_run(np.ones((1, 1)))
    t = scores(one)
    assert t["previous_token"] is None and t["entropy_norm"] is None and t["self"] == 1.0


def test_ignore_first_takes_the_sink_out():
    n = 5
    a = np.zeros((n, n))
    a[0, 0] = 1.0
    a[1, 0] = 1.0
    for i in range(2, n):
        a[i, 0] = a[i, i - 1] = 0.5
    assert scores(make_run(a))["previous_token"] == pytest.approx((1 + 3 * 0.5) / 4)
    # Without the first key, rows 2–4 give all their remaining attention to the previous
    # token; row 1's previous token *is* the first, so it has no target left.
    assert scores(make_run(a), ignore_first=True)["previous_token"] == 1.0


def test_ignore_current_takes_the_diagonal_out():
    n = 5
    a = np.zeros((n, n))
    a[0, 0] = 1.0
    for i in range(1, n):
        a[i, i] = a[i, i - 1] = 0.5
    assert scores(make_run(a))["previous_token"] == 0.5
    assert scores(make_run(a), ignore_current=True)["previous_token"] == 1.0
    assert scores(make_run(a), ignore_current=True)["self"] == pytest.approx(0.6)  # unchanged


def test_special_and_locality():
    n = 6
    a = np.zeros((n, n))
    a[:, 0] = 0.5
    a[:, -1] = 0.5
    s = scores(make_run(a, causal=False, special=(0, n - 1)), locality_k=1)
    assert s["special"] == 1.0
    # rows 0,1 reach key 0 within ±1; rows 4,5 reach key 5: each gets 0.5
    assert s["locality"] == pytest.approx(4 * 0.5 / n)


def test_masked_cells_are_not_keys():
    # A bidirectional head that looks forward; under a causal mask those cells are not keys.
    n = 4
    a = np.eye(n, k=1)
    a[-1, -1] = 1.0
    s = scores(make_run(a, causal=False))
    assert s["mean_distance"] == pytest.approx(3 / 4)
    causal = make_run(np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None])
    assert scores(causal)["entropy_norm"] == pytest.approx(1.0)


def test_vectorised_over_heads_and_layers_matches_one_at_a_time():
    rng = np.random.default_rng(0)
    n, ids = 9, [1, 5, 6, 5, 6, 7, 5, 6, 7]
    heads = rng.random((3, n, n)) * np.tril(np.ones((n, n)))
    heads /= heads.sum(-1, keepdims=True)
    together = head_scores(make_run(heads, ids), ignore_first=True)
    for h in range(3):
        alone = head_scores(make_run(heads[h], ids), ignore_first=True)[0]["scores"]
        assert together[h]["scores"] == pytest.approx(alone)
    # And one score by hand: induction on rows 3 (target 2), 4 (3), 6 (2, 4), 7 (3, 5), 8 (6)
    a = heads[0]
    rows = {3: [2], 4: [3], 6: [2, 4], 7: [3, 5], 8: [6]}
    want = np.mean([a[i, js].sum() / (1 - a[i, 0]) for i, js in rows.items()])
    assert together[0]["scores"]["induction"] == pytest.approx(want)


def test_bad_options_and_cross_attention():
    run = make_run(np.eye(3))
    with pytest.raises(AttnmapError, match="locality_k"):
        head_scores(run, locality_k=-1)
    with pytest.raises(AttnmapError, match="no 'cross' attention"):
        head_scores(run, stack="cross")
    cross = AttentionRun(text="a b", tokens=run.tokens, target_tokens=run.tokens[:2],
                         stacks={"encoder": run.stacks["self"],
                                 "cross": AttentionStack("cross", [np.ones((1, 2, 3)) / 3],
                                                         np.zeros((2, 3), bool))},
                         model={"id": "hand"})
    with pytest.raises(AttnmapError, match="cross-attention"):
        head_scores(cross, stack="cross")


def test_old_exclude_spellings_still_work_with_a_warning():
    from attnmap._errors import AttnmapDeprecationWarning

    a = np.array([[1.0, 0, 0], [0.5, 0.5, 0], [0.2, 0.4, 0.4]])
    with pytest.warns(AttnmapDeprecationWarning, match="ignore_first"):
        old = head_scores(make_run(a), exclude_first=True)
    assert old == head_scores(make_run(a), ignore_first=True)


def test_next_token_head_on_a_bidirectional_stack():
    n = 5
    a = np.eye(n, k=1)  # each row looks at the token after it …
    a[-1, -1] = 1.0  # … except the last, which has none
    s = scores(make_run(a, causal=False))
    assert s["next_token"] == 1.0  # the last row has no next token and does not count
    assert s["previous_token"] == 0.0
    # half on the next token, half on itself: 0.5 in the rows that have a next token
    b = (np.eye(n, k=1) + np.eye(n)) / 2
    b[-1, -1] = 1.0
    assert scores(make_run(b, causal=False))["next_token"] == pytest.approx(0.5)


def test_next_token_is_none_for_a_causal_stack():
    # A causal row never sees the token after it: no score, not a misleading 0.
    s = scores(make_run(previous_head(5)))
    assert s["next_token"] is None
