"""Perturbation of a run's input text: the text with one token cut out or masked.

Pure text editing on a run's token offsets (standard library only): the result is a new text
to run through the model again, so that the two runs can be compared (:mod:`attnmap.diff`).
"""

from __future__ import annotations

from typing import Any

from .._errors import AttnmapError

MODES = ("remove", "mask")


def _shown(text: str, limit: int = 20) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def perturbed_text(run: Any, position: int, mode: str = "remove",
                   mask_token: str | None = None) -> str:
    """`run.text` with the token at `position` cut out (``mode="remove"``) or replaced by
    `mask_token` (``mode="mask"``).

    `run` is an :class:`attnmap.AttentionRun` (its ``text`` and ``tokens`` with character
    offsets). Raises :class:`AttnmapError` for a position outside the tokens, a special
    token (it has no place in the text), a mask asked for without a mask token, or a removal
    that leaves no text.
    """
    if mode not in MODES:
        raise AttnmapError(f"mode must be 'remove' or 'mask' (not {mode!r})")
    toks = run.tokens
    if not 0 <= position < len(toks):
        raise AttnmapError(f"position must be in 0..{len(toks) - 1} (not {position})")
    t = toks[position]
    if t.special or t.start is None or t.end is None:
        raise AttnmapError(f"token {position} ({_shown(t.text)}) is a special token with "
                           "no place in the text; pick a token of the text")
    text: str = run.text
    if mode == "mask":
        if not mask_token:
            raise AttnmapError("this model's tokenizer has no mask token; use mode 'remove'")
        return text[: t.start] + mask_token + text[t.end :]
    start = t.start
    # Offsets of word-initial tokens often leave out the space before the word (GPT-2's " mat"
    # spans "mat"); cutting only those characters would leave a doubled space that reads as a
    # new token. Take the space before with it when the token ends at a space or the end.
    if start > 0 and text[start - 1].isspace() and (
        t.end == len(text) or text[t.end].isspace()
    ):
        start -= 1
    out = text[:start] + text[t.end :]
    if not out.strip():
        raise AttnmapError("removing that token leaves no text; pick another token")
    return out
