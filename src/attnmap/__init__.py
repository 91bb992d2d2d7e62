"""attnmap: see where a transformer's attention goes.

Heavy modules (torch, transformers, matplotlib) load only when a function that needs them is
called, so ``import attnmap`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._errors import AttnmapError, AttnmapWarning
from .capturing import capture
from .run import AttentionRun, AttentionStack, load, set_display
from .tokens import Token

__version__ = "0.1.0"


def _notebook_display(run: AttentionRun) -> dict[str, Any]:
    from .viewer import mimebundle

    return mimebundle(run)


set_display(_notebook_display)  # a run shows itself in a notebook through the viewer

# Public names that live in modules with heavier imports, loaded on first use.
_LAZY = {
    "heatmap": "attnmap.plot:heatmap",
    "show": "attnmap.viewer:show",
    "to_html": "attnmap.viewer:to_html",
    "head_scores": "attnmap.analysis:head_scores",
    "relate": "attnmap.analysis:relate",
    "rollout": "attnmap.analysis:rollout",
    "merge_words": "attnmap.analysis:merge_words",
    "transform": "attnmap.attribution:transform",
    "from_arrays": "attnmap.arrays:from_arrays",
    "generate": "attnmap.generating:generate",
}

__all__ = [
    "AttentionRun",
    "AttentionStack",
    "AttnmapError",
    "AttnmapWarning",
    "Token",
    "__version__",
    "capture",
    "load",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'attnmap' has no attribute {name!r}")
    mod, attr = target.split(":")
    value = getattr(importlib.import_module(mod), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
