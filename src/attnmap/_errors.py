"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class AttnmapError(Exception):
    """A problem with the user's input: the message names it and the way out."""


class AttnmapWarning(UserWarning):
    """Something the user should know (e.g. input truncated) that does not stop the run."""


class AttnmapDeprecationWarning(AttnmapWarning, DeprecationWarning):
    """A name or option that still works for one release; the message names its successor."""


def deprecated(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that `old` is deprecated in favour of `new` (works for one more release)."""
    import warnings

    warnings.warn(f"{old} is deprecated and will be removed in the next release; use {new}",
                  AttnmapDeprecationWarning, stacklevel=stacklevel)
