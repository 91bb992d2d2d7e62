"""What the commands print to a terminal: text from files and models shown, never obeyed.

A run file's metadata, a model's name or a token may hold ESC sequences (clear the screen,
move the cursor, set the window title), bidi overrides (U+202E turns text around) or NUL.
Everything the CLI prints from data goes through :func:`printable`, which shows such
characters as ``⟨U+001B⟩``.
"""

from __future__ import annotations

import unicodedata
from typing import Any

_KEEP = {"\n", "\t"}


def printable(text: str, *, newlines: bool = True) -> str:
    """`text` with control, format (bidi, zero-width) and surrogate characters spelled out."""
    out = []
    for ch in str(text):
        if ch in _KEEP and (newlines or ch == "\t"):
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            out.append(f"⟨U+{ord(ch):04X}⟩")
        else:
            out.append(ch)
    return "".join(out)


def one_line(value: Any) -> str:
    """A value as one printable line (a newline shows as ⟨U+000A⟩)."""
    return printable(str(value), newlines=False)


def json_text(value: Any, *, indent: int | None = None) -> str:
    """JSON of `value` that is safe on a terminal and exact as data: readable non-ASCII
    text, with control, bidi and surrogate characters as ``\\uXXXX`` escapes."""
    import json

    raw = json.dumps(value, indent=indent, ensure_ascii=False, allow_nan=False)
    return "".join(
        f"\\u{ord(ch):04x}" if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp")
        and ch not in _KEEP else ch
        for ch in raw
    )


def facts_lines(facts: dict[str, Any]) -> list[str]:
    """``key  value`` lines for `attnmap info`: nothing unset, lists and shapes spelled out."""
    rows = []
    for k, v in facts.items():
        if v is None or v == {} or v == []:
            continue
        if isinstance(v, dict):
            v = ", ".join(f"{a}: {_plain(b)}" for a, b in v.items())
        else:
            v = _plain(v)
        rows.append((one_line(k), one_line(v)))
    width = max((len(k) for k, _ in rows), default=0)
    return [f"{k:<{width}}  {v}" for k, v in rows]


def _plain(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        if v and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            return " × ".join(str(x) for x in v)
        return ", ".join(_plain(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{a}: {_plain(b)}" for a, b in v.items())
    return str(v)
