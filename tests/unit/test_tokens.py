"""Display tokens: byte-level, SentencePiece and WordPiece alphabets made readable."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from attnmap.tokens import byte_level_text, display_text, visible


def test_byte_level_space_and_newline():
    assert display_text("Ġcat", "byte_level") == "␣cat"
    assert display_text("Ċ", "byte_level") == "⏎"
    assert display_text("ĠĠ", "byte_level") == "␣␣"
    assert display_text("ĉ", "byte_level") == "⇥"


def test_byte_level_multibyte_and_partial_utf8():
    # "é" is two bytes, c3 a9 → byte-level characters 'Ã' '©'
    assert byte_level_text("Ã©") == "é"
    # a lone lead byte is not a whole character: shown as an escape, not dropped
    assert byte_level_text("Ã") == "\\xc3"


def test_metaspace_and_wordpiece():
    assert display_text("▁the", "metaspace") == "␣the"
    assert display_text("▁", "metaspace") == "␣"
    assert display_text("##ing", "wordpiece") == "##ing"


def test_special_tokens_kept_as_written():
    assert display_text("[CLS]", "wordpiece", special=True) == "[CLS]"
    assert display_text("<|endoftext|>", "byte_level", special=True) == "<|endoftext|>"


def test_whitespace_only_and_invisible_never_empty():
    assert visible("") == "∅"
    assert visible(" ") == "␣"
    assert visible("a\u2028b") == "a⟨U+2028⟩b"
    assert visible("\u200b") == "⟨U+200B⟩"


@given(st.text())
def test_visible_is_never_empty_and_has_no_raw_whitespace(s):
    out = visible(s)
    assert out
    assert not any(ch.isspace() for ch in out)
