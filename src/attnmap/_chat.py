"""Chat input: messages through the tokenizer's own chat template, each token tagged with its
message, role, and whether the template wrote it.

The token ids are exactly ``tokenizer.apply_chat_template(messages, tokenize=True)``: the
template already holds BOS and the role markers, so nothing is added on top (tokenizing the
rendered text again with special tokens would give ``<s> <s> …``).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ._errors import AttnmapError
from .tokens import Token


def check_messages(messages: Any) -> list[dict[str, str]]:
    """A list of ``{"role": str, "content": str}``, or one line saying what is wrong."""
    if not isinstance(messages, list) or not messages:
        raise AttnmapError(
            'chat messages must be a non-empty JSON list of {"role": ..., "content": ...} '
            f"objects (got {type(messages).__name__})"
        )
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content"} - {"name"} or not {
                "role", "content"} <= set(m):
            raise AttnmapError(
                f'chat message {i} must be an object with "role" and "content" (got '
                f"{json.dumps(m, ensure_ascii=True)[:60]})"
            )
        if not isinstance(m["role"], str) or not m["role"]:
            raise AttnmapError(f"chat message {i}: role must be a non-empty string")
        if not isinstance(m["content"], str):
            raise AttnmapError(
                f"chat message {i}: content must be a string (got {type(m['content']).__name__})"
            )
        if "\x00" in m["content"]:
            raise AttnmapError(f"chat message {i}: content contains NUL bytes")
        out.append(dict(m))
    return out


def parse_messages(text: str, where: str = "--chat input") -> list[dict[str, str]]:
    """Messages from JSON text (the CLI's argument or file)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AttnmapError(
            f"{where} is not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); give "
            'a list like [{"role": "user", "content": "Hi"}]'
        ) from None
    return check_messages(data)


def _ids(out: Any) -> list[int]:
    """apply_chat_template(tokenize=True) gives a list, or a dict/BatchEncoding of them."""
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    if out and isinstance(out[0], list):
        out = out[0]
    return [int(t) for t in out]


def _render(tok: Any, messages: list[dict[str, str]], gen: bool) -> str:
    return str(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen))


def encode_chat(tok: Any, messages: list[dict[str, str]], *, add_generation_prompt: bool = False
                ) -> tuple[str, list[int], list[tuple[int, int]] | None, list[dict[str, Any]]]:
    """(rendered text, ids, offsets or None, per-message spans) for `messages`.

    Each span is ``{"message": i, "role": r, "start": s, "end": e, "content": (cs, ce)}`` in
    characters of the rendered text: ``[s, e)`` is all the template wrote for message i, and
    ``[cs, ce)`` the message's own content inside it.
    """
    messages = check_messages(messages)
    if not getattr(tok, "chat_template", None):
        raise AttnmapError(
            "this model's tokenizer has no chat template, so it cannot read messages; give "
            "plain text instead (or set tokenizer.chat_template)"
        )
    try:
        text = _render(tok, messages, add_generation_prompt)
        ids = _ids(tok.apply_chat_template(messages, tokenize=True,
                                           add_generation_prompt=add_generation_prompt))
    except AttnmapError:
        raise
    except Exception as exc:  # templates raise their own errors (jinja, role order …)
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AttnmapError(f"the chat template refused these messages: {msg}") from None
    offsets = None
    if getattr(tok, "is_fast", False):
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        if list(enc["input_ids"]) == ids:
            offsets = [tuple(o) for o in enc["offset_mapping"]]
    spans = []
    prev = 0
    for i, m in enumerate(messages):
        last = i == len(messages) - 1
        try:
            pre = _render(tok, messages[: i + 1], False)
        except Exception:  # a template that refuses a partial conversation
            pre = ""
        # a message ends where the conversation cut after it ends, when that is a prefix
        upto = len(pre) if pre and text.startswith(pre) else (len(text) if last else prev)
        upto = max(upto, prev)
        cs = text.find(m["content"], prev, upto) if m["content"] else -1
        content = (cs, cs + len(m["content"])) if cs >= 0 else (upto, upto)
        spans.append({"message": i, "role": m["role"], "start": prev, "end": upto,
                      "content": content})
        prev = upto
    return text, ids, offsets, spans


def tag_tokens(tokens: list[Token], offsets: list[tuple[int, int]] | None,
               spans: list[dict[str, Any]]) -> list[Token]:
    """Tokens with ``message``, ``role`` and ``template`` set from the spans. Without offsets
    every token is tagged by position only as template text of no message."""
    if offsets is None:
        return [dataclasses.replace(t, template=True) for t in tokens]
    out = []
    for t, (s, e) in zip(tokens, offsets):
        mid = s if e <= s else (s + e - 1) // 2 if e - s > 1 else s
        span = next((sp for sp in spans if sp["start"] <= mid < sp["end"]), None)
        if span is None:  # after the last message: the generation prompt
            out.append(dataclasses.replace(t, template=True))
            continue
        cs, ce = span["content"]
        in_content = e > s and cs <= s and e <= ce and not t.special
        out.append(dataclasses.replace(t, message=span["message"], role=span["role"],
                                       template=not in_content))
    return out
