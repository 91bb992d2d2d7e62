"""The colormaps the viewer paints with, taken from matplotlib so a page and a PNG agree.

A colormap travels in the payload header as 256 RGB entries (768 bytes, base64): entry ``i``
is what matplotlib draws for a value in ``[i/256, (i+1)/256)`` of the scale (matplotlib's own
rule: entry ``floor(t * 256)``, the top of the scale in the last entry), as the bytes that
``cmap(value, bytes=True)`` gives. The viewer looks values up with the same rule.
"""

from __future__ import annotations

import base64
from functools import lru_cache
from typing import Any

import numpy as np

from .._errors import AttnmapError

DEFAULT_CMAP = "Blues"  # plot.py's default, so `render` and `html` look alike
DIVERGING_CMAP = "RdBu_r"  # diff.py's A − B map: blue below 0, red above
LUT_SIZE = 256


def check_cmap(name: str) -> str:
    """`name` if matplotlib knows the colormap, else a one-line error naming the way out."""
    import matplotlib as mpl

    if not isinstance(name, str) or name not in mpl.colormaps:
        raise AttnmapError(f"unknown colormap {name!r}; try Blues, viridis, magma or Greys "
                           "(any name in matplotlib.colormaps)")
    return name


@lru_cache(maxsize=16)
def lut(name: str) -> bytes:
    """The 256 × RGB table of colormap `name` as bytes, entry-major."""
    import matplotlib as mpl

    cm = mpl.colormaps[check_cmap(name)]
    # Middle of each of 256 equal bins: for a 256-entry map (most of matplotlib's) entry i is
    # exactly the map's own entry i; coarser maps land on the entry that covers the bin.
    x = (np.arange(LUT_SIZE) + 0.5) / LUT_SIZE
    rgb = np.asarray(cm(x, bytes=True), dtype=np.uint8)[:, :3]  # [entry, channel]
    return rgb.tobytes()


def lut_entry(name: str) -> dict[str, Any]:
    """The header's form of a colormap: ``{"name", "lut"}`` with the table in base64."""
    return {"name": name, "lut": base64.b64encode(lut(name)).decode("ascii")}
