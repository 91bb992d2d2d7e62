"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class AttnmapError(Exception):
    """A problem with the user's input: the message names it and the way out."""


class AttnmapWarning(UserWarning):
    """Something the user should know (e.g. input truncated) that does not stop the run."""
