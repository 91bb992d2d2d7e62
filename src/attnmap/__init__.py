"""attnmap: see where a transformer's attention goes.

Heavy modules (torch, transformers, matplotlib) load only when a function that needs them is
called, so ``import attnmap`` stays fast.
"""

from __future__ import annotations

from typing import Any

from ._errors import AttnmapError, AttnmapWarning
# Bound after the submodule import so that `attnmap.capture` stays the function.
from .capture import capture
from .run import AttentionRun, AttentionStack, load
from .tokens import Token

__version__ = "0.1.0"

__all__ = [
    "AttentionRun",
    "AttentionStack",
    "AttnmapError",
    "AttnmapWarning",
    "Token",
    "__version__",
    "capture",
    "heatmap",
    "load",
]


def heatmap(run: AttentionRun, layer: int = 0, head: int | str = 0, **kwargs: Any) -> Any:
    """The seed's heatmap of one head (or ``head="all"``) as a matplotlib Figure."""
    from .plot import heatmap as _heatmap

    return _heatmap(run, layer, head, **kwargs)
