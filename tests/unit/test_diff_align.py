"""Token alignment for diffs: the bit-parallel LCS against a textbook LCS table, and the
substitutions paired between its equal tokens."""

from __future__ import annotations

import random

import numpy as np
import pytest

from attnmap.diff import align, align_changes


def reference_lcs(a: list, b: list) -> tuple[list[int], list[int]]:
    """The textbook LCS: a table of suffix lengths, then one walk from the start taking
    equal items and stepping down in `a` on ties (the order attnmap has always used)."""
    n, m = len(a), len(b)
    t = np.zeros((n + 1, m + 1), dtype=np.int64)  # [i, j]: LCS of a[i:] and b[j:]
    bb = np.asarray(b)
    for i in range(n - 1, -1, -1):
        # a match extends the diagonal, else the cell below; the running max from the
        # right brings in the cell to the right
        step = np.where(bb == a[i], t[i + 1, 1:] + 1, t[i + 1, :-1]) if m else bb
        t[i, :m] = np.maximum.accumulate(step[::-1])[::-1]
    ia, ib, i, j = [], [], 0, 0
    while i < n and j < m:
        if a[i] == b[j]:
            ia.append(i)
            ib.append(j)
            i, j = i + 1, j + 1
        elif t[i + 1, j] >= t[i, j + 1]:
            i += 1
        else:
            j += 1
    return ia, ib


def _edited(rng: random.Random, a: list, edits: int, fresh: int) -> list:
    """`a` with `edits` random insertions, deletions and substitutions (new items drawn
    from `fresh` values, which may also occur in `a`)."""
    b = list(a)
    for _ in range(edits):
        op, p = rng.choice("ids"), rng.randrange(len(b) + 1)
        if op == "i":
            b.insert(p, rng.randrange(fresh))
        elif p < len(b):
            if op == "d":
                del b[p]
            else:
                b[p] = rng.randrange(fresh)
    return b


def _check(a: list, b: list) -> None:
    ia, ib = align(a, b)
    assert ia.dtype == ib.dtype == np.int64
    assert (ia.tolist(), ib.tolist()) == reference_lcs(a, b)


CASES = [
    ([5, 1, 2, 3, 9], [5, 1, 7, 3, 9]),  # one substitution
    ([1, 2, 3], [0, 1, 2, 3]),  # insertion at the start
    ([1, 2, 3, 4], [1, 2, 4]),  # deletion
    ([1, 2, 3], [1, 2, 3, 8, 9]),  # appended
    ([1, 2], [3, 4]),  # nothing in common
    ([], [1, 2]),
    ([1, 2], []),
    ([7, 7, 7], [7, 7]),  # ties: the earliest items of a
    ("the keys to the cabinet are on the table".split(),
     "the key to the cabinets is on the table".split()),
    ("when mary and john went to the store john gave a drink to mary".split(),
     "when mary and john went to the shop mary gave a drink to john".split()),
    # a run crossing scattered matches: the LCS is the four scattered items
    (["s1", "x", "s2", "x", "s3", "x", "s4", "L1", "L2", "L3"],
     ["L1", "L2", "L3", "s1", "y", "s2", "y", "s3", "y", "s4"]),
]


@pytest.mark.parametrize("a,b", CASES)
def test_equals_the_reference_lcs(a, b):
    _check(a, b)


def test_hand_checked_alignments():
    assert reference_lcs([7, 7, 7], [7, 7]) == ([0, 1], [0, 1])
    ia, ib = align(*CASES[-1])
    assert (ia.tolist(), ib.tolist()) == ([0, 2, 4, 6], [3, 5, 7, 9])
    ia, ib = align([4, 4, 4], [4, 4, 4])  # identical: one to one
    assert ia.tolist() == ib.tolist() == [0, 1, 2]


def test_equals_the_reference_on_random_edits():
    rng = random.Random(7)
    for _ in range(300):
        vocab = rng.choice([3, 50, 200, 1000])
        a = [rng.randrange(vocab) for _ in range(rng.randint(0, 80))]
        b = _edited(rng, a, rng.randint(1, 8), vocab + 20)
        _check(a, b)


def test_equals_the_reference_on_unrelated_sequences():
    rng = random.Random(11)
    for _ in range(300):
        vocab = rng.choice([2, 4, 30])
        a = [rng.randrange(vocab) for _ in range(rng.randint(0, 40))]
        b = [rng.randrange(vocab) for _ in range(rng.randint(0, 40))]
        _check(a, b)


def _zipf_text(rng: random.Random, n: int) -> list[int]:
    # token ids with Zipf frequencies: 1,024 of them hold ~480 distinct ids, like real text
    return rng.choices(range(5000), weights=[1 / r for r in range(1, 5001)], k=n)


def test_equals_the_reference_at_1024_tokens():
    rng = random.Random(0)
    a = _zipf_text(rng, 1024)
    b = _edited(rng, a, 24, 6000)
    assert len(set(a)) < len(a) / 2  # many repeated tokens
    _check(a, b)
    _check(["w"] * 1024, ["w"] * 1000)  # one long repeat


def test_repeated_text_stays_aligned():
    # Random tokens repeated (the induction probe's input) with every 50th token replaced:
    # all the others pair up. Matching the longest common runs first (difflib's matching
    # blocks, autojunk off) pairs 252 of the 1,004 here.
    rng = random.Random(5)
    block = [rng.randrange(50000) for _ in range(128)]
    a = block * 8
    b = [-1 if k % 50 == 25 else x for k, x in enumerate(a)]
    ia, ib = align(a, b)
    assert len(ia) == len(a) - sum(x == -1 for x in b)
    assert ia.tolist() == ib.tolist()


# --- substitutions -----------------------------------------------------------------------------
def test_keys_to_the_cabinet_pairs_the_substitutions():
    a = "the keys to the cabinet are on the table".split()
    b = "the key to the cabinets is on the table".split()
    assert align(a, b)[0].tolist() == [0, 2, 3, 6, 7, 8]  # the LCS alone drops three words
    ia, ib, changed = align_changes(a, b)
    assert ia.tolist() == ib.tolist() == list(range(9))
    assert changed.dtype == bool
    assert [(a[i], b[j]) for i, j, c in zip(ia, ib, changed) if c] == [
        ("keys", "key"), ("cabinet", "cabinets"), ("are", "is")]


def test_gaps_of_different_lengths_stay_unpaired():
    # An insertion: pairing by position would match red with very.
    ia, ib, changed = align_changes("the red cat sat".split(), "the very big cat sat".split())
    assert (ia.tolist(), ib.tolist(), changed.tolist()) == ([0, 2, 3], [0, 3, 4], [False] * 3)
    # A word the tokenizer splits differently: are vs s·␣·i·s, nothing to pair one to one;
    # the gap of equal length before it still pairs.
    a = ["The", "keys", "to", "the", "cabinet", "are"]
    b = ["The", "key", "to", "the", "cabinet", "s", " ", "i", "s"]
    ia, ib, changed = align_changes(a, b)
    assert (ia.tolist(), ib.tolist()) == ([0, 1, 2, 3, 4], [0, 1, 2, 3, 4])
    assert changed.tolist() == [False, True, False, False, False]
    # A deletion and nothing else: the LCS pairs, unchanged.
    ia, ib, changed = align_changes([1, 2, 3, 4], [1, 2, 4])
    assert (ia.tolist(), ib.tolist(), changed.any()) == ([0, 1, 3], [0, 1, 2], False)


def test_substitutions_at_the_ends_and_identical_sequences():
    ia, ib, changed = align_changes([9, 1, 2, 8], [7, 1, 2, 6])
    assert ia.tolist() == ib.tolist() == [0, 1, 2, 3]
    assert changed.tolist() == [True, False, False, True]
    ia, ib, changed = align_changes([4, 4, 4], [4, 4, 4])
    assert ia.tolist() == ib.tolist() == [0, 1, 2] and not changed.any()
    ia, ib, changed = align_changes([], [1, 2])
    assert ia.size == ib.size == changed.size == 0
    ia, ib, changed = align_changes([1, 2], [3, 4])  # nothing equal: one gap, same length
    assert ia.tolist() == ib.tolist() == [0, 1] and changed.all()


def test_substitutions_only_are_found_exactly():
    # Sequences of distinct items (so that the LCS is unique) with substitutions by values
    # that occur nowhere else: every position pairs with itself, and exactly the substituted
    # ones are flagged.
    rng = random.Random(3)
    for _ in range(300):
        a = rng.sample(range(500), rng.randint(1, 60))
        b = list(a)
        subs = set(rng.sample(range(len(a)), rng.randint(0, len(a) // 3)))
        for p in subs:
            b[p] = 1000 + p
        ia, ib, changed = align_changes(a, b)
        assert ia.tolist() == ib.tolist() == list(range(len(a)))
        assert set(np.flatnonzero(changed).tolist()) == subs


def test_equal_pairs_are_the_lcs_and_substitutions_fill_equal_gaps():
    rng = random.Random(9)
    for _ in range(300):
        vocab = rng.choice([3, 20, 200])
        a = [rng.randrange(vocab) for _ in range(rng.randint(0, 50))]
        b = _edited(rng, a, rng.randint(1, 8), vocab + 20)
        ia, ib, changed = align_changes(a, b)
        la, lb = align(a, b)
        assert ia[~changed].tolist() == la.tolist() and ib[~changed].tolist() == lb.tolist()
        assert np.all(np.diff(ia) > 0) and np.all(np.diff(ib) > 0)  # in order, one to one
        for i, j, c in zip(ia.tolist(), ib.tolist(), changed.tolist()):
            assert (a[i] != b[j]) == c
        # each substitution lies in a gap between anchors that has one length on both sides
        anchors = [(-1, -1), *zip(la.tolist(), lb.tolist()), (len(a), len(b))]
        for (pa, pb), (na, nb) in zip(anchors, anchors[1:]):
            inside = [(i, j) for i, j, c in zip(ia.tolist(), ib.tolist(), changed.tolist())
                      if c and pa < i < na]
            want = list(zip(range(pa + 1, na), range(pb + 1, nb))) \
                if na - pa == nb - pb else []
            assert inside == want
