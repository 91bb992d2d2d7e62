"""Token strings as people read them.

Tokenizers store text in their own alphabets: byte-level BPE (GPT-2, RoBERTa, BART) writes a
space as ``Ġ`` and a newline as ``Ċ``; SentencePiece (T5, Llama) writes a space as ``▁``;
WordPiece (BERT) marks a word's continuation with ``##``. Here each raw token becomes the
text it stands for, with whitespace made visible so that no label is ever empty.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any

# Visible stand-ins for whitespace. A space becomes an open box, a newline a return symbol.
VISIBLE = {" ": "␣", "\n": "⏎", "\t": "⇥", "\r": "\\r"}


@dataclass(frozen=True)
class Token:
    """One token: what people see, what the tokenizer stores, and where it came from."""

    text: str  # display string: whitespace visible, never empty
    raw: str  # the tokenizer's own string (``Ġcat``, ``##ing``, ``▁the``)
    id: int  # vocabulary id
    special: bool = False  # [CLS], [SEP], <s>, </s>, <|endoftext|>, padding …
    start: int | None = None  # character offsets into the input text (None: no source span)
    end: int | None = None
    # chat input: the message the token belongs to (index and role); template tokens are the
    # chat template's own (role markers, turn ends), not the message's content
    message: int | None = None
    role: str | None = None
    template: bool = False
    generated: bool = False  # written by the model (attnmap.generate), not read
    # image input: a patch's place in the patch grid (row, col) and the pixels of the original
    # image it covers (x0, y0, x1, y1; end exclusive); kind names what a vision token is:
    # "patch", "cls", "distillation", "register" (a VLM's image tokens are "patch" too)
    row: int | None = None
    col: int | None = None
    box: tuple[int, int, int, int] | None = None
    kind: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # fields added after format 1 are written only when set, so plain runs stay as before
        for name, default in (("message", None), ("role", None), ("template", False),
                              ("generated", False), ("row", None), ("col", None),
                              ("box", None), ("kind", None)):
            if d[name] == default:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Token:
        # the same visible-character treatment as captured tokens: a file's NUL, ESC or U+202E
        # shows as ⟨U+…⟩ wherever the token is drawn or printed
        return cls(
            text=visible(str(d["text"])),
            raw=str(d["raw"]),
            id=int(d["id"]),
            special=bool(d.get("special", False)),
            start=None if d.get("start") is None else int(d["start"]),
            end=None if d.get("end") is None else int(d["end"]),
            message=None if d.get("message") is None else int(d["message"]),
            role=None if d.get("role") is None else str(d["role"]),
            template=bool(d.get("template", False)),
            generated=bool(d.get("generated", False)),
            row=None if d.get("row") is None else int(d["row"]),
            col=None if d.get("col") is None else int(d["col"]),
            box=None if d.get("box") is None else (
                int(d["box"][0]), int(d["box"][1]), int(d["box"][2]), int(d["box"][3])),
            kind=None if d.get("kind") is None else str(d["kind"]),
        )


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of byte-level BPE's byte→character table.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space, the
    non-breaking range) are moved to code points 256 and up, in byte order.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table: dict[str, int] = {chr(b): b for b in keep}
    shift = 0
    for b in range(256):
        if b not in table.values():
            table[chr(256 + shift)] = b
            shift += 1
    return table


def byte_level_text(raw: str) -> str:
    """``Ġcat`` → `` cat``; bytes that do not form whole UTF-8 characters show as ``\\xNN``."""
    table = _byte_decoder()
    if any(ch not in table for ch in raw):
        return raw  # not byte-level after all (an added token, say): keep as written
    data = bytes(table[ch] for ch in raw)
    return data.decode("utf-8", errors="backslashreplace")


def visible(text: str) -> str:
    """Make whitespace and invisible characters visible; never return an empty string."""
    out = []
    for ch in text:
        if ch in VISIBLE:
            out.append(VISIBLE[ch])
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs") or (
            unicodedata.category(ch) == "Zs"
        ):
            # Line/paragraph separators, zero-width and control characters: show the code point.
            out.append(f"⟨U+{ord(ch):04X}⟩")
        else:
            out.append(ch)
    return "".join(out) or "∅"


def decoder_kind(tokenizer: Any) -> str:
    """Which alphabet the tokenizer writes: 'byte_level', 'metaspace', 'wordpiece' or 'plain'."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    names: list[str] = []
    if backend is not None:
        dec = backend.decoder
        if dec is not None:
            # Sequence decoders nest others; their repr names every part.
            names.append(repr(dec))
        pre = backend.pre_tokenizer
        if pre is not None:
            names.append(repr(pre))
    joined = " ".join(names)
    if "ByteLevel" in joined:
        return "byte_level"
    if "Metaspace" in joined or "▁" in joined:
        return "metaspace"
    if "WordPiece" in joined:
        return "wordpiece"
    # Slow SentencePiece tokenizers have no backend; their pieces still use ▁.
    if backend is None and getattr(tokenizer, "sp_model", None) is not None:
        return "metaspace"
    return "plain"


def display_text(raw: str, kind: str, *, special: bool = False) -> str:
    """The label people see for one raw token."""
    if special:
        return visible(raw)
    if kind == "byte_level":
        text = byte_level_text(raw)
    elif kind == "metaspace":
        text = raw.replace("▁", " ")
    else:
        text = raw  # WordPiece keeps ``##`` so a continuation reads as one
    return visible(text)


def make_tokens(
    tokenizer: Any,
    ids: list[int],
    offsets: list[tuple[int, int]] | None = None,
) -> list[Token]:
    """Build display tokens for `ids`, with character offsets when the tokenizer gives them."""
    kind = decoder_kind(tokenizer)
    raws = tokenizer.convert_ids_to_tokens(ids)
    special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    tokens = []
    for i, (tid, raw) in enumerate(zip(ids, raws)):
        raw = "" if raw is None else str(raw)
        special = int(tid) in special_ids
        start = end = None
        if offsets is not None and not special:
            s, e = offsets[i]
            if e > s:
                start, end = int(s), int(e)
        tokens.append(
            Token(
                text=display_text(raw, kind, special=special),
                raw=raw,
                id=int(tid),
                special=special,
                start=start,
                end=end,
            )
        )
    return tokens
