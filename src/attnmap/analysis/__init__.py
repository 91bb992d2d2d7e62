"""Analysis of an AttentionRun: head census, relations, words, and methods beyond raw weights.

Everything here is numpy on a run, except :func:`value_norm` and
:func:`attention_x_gradient`, which run the model again (torch is imported inside them).
Names load on first use, so that ``attnmap.analysis._cmd`` (the CLI) starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "METHODS": "methods",
    "attention_x_gradient": "methods",
    "rollout": "methods",
    "transform": "methods",
    "value_norm": "methods",
    "capture_ids": "probe",
    "repeat_ids": "probe",
    "repeat_probe": "probe",
    "relate": "relate",
    "SCORE_NAMES": "scores",
    "head_scores": "scores",
    "merge_words": "words",
    "word_groups": "words",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    mod = _NAMES.get(name)
    if mod is None:
        raise AttributeError(f"module 'attnmap.analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))
