"""Analysis of an AttentionRun: head census, relations, words, rollout. numpy only.

Methods that run the model again (value-norm, attention × gradient) and probes built from
token ids live in the capture layer: :mod:`attnmap.attribution` and :mod:`attnmap.probes`.
Names load on first use, so that the command line starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from .._errors import deprecated

_NAMES = {
    "METHODS": "methods",
    "rollout": "methods",
    "relate": "relations",
    "SCORE_NAMES": "scores",
    "head_scores": "scores",
    "head_score_parts": "scores",
    "ScoreParts": "scores",
    "merge_words": "words",
    "word_groups": "words",
}
# Names that moved to the capture layer: they still load from here for one release.
_MOVED = {
    "attention_x_gradient": "attnmap.attribution",
    "transform": "attnmap.attribution",
    "value_norm": "attnmap.attribution",
    "capture_ids": "attnmap.probes",
    "repeat_ids": "attnmap.probes",
    "repeat_probe": "attnmap.probes",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        deprecated(f"attnmap.analysis.{name}", f"{_MOVED[name]}.{name}")
        return getattr(importlib.import_module(_MOVED[name]), name)
    mod = _NAMES.get(name)
    if mod is None:
        raise AttributeError(f"module 'attnmap.analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))
