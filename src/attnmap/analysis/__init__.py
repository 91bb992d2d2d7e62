"""Analysis of an AttentionRun: head census, relations, words, and methods beyond raw weights.

Everything here is numpy on a run, except :func:`value_norm` and
:func:`attention_x_gradient`, which run the model again (torch is imported inside them).
"""

from __future__ import annotations

from .methods import METHODS, attention_x_gradient, rollout, transform, value_norm
from .probe import capture_ids, repeat_ids, repeat_probe
from .relate import relate
from .scores import SCORE_NAMES, head_scores
from .words import merge_words, word_groups

__all__ = [
    "METHODS",
    "SCORE_NAMES",
    "attention_x_gradient",
    "capture_ids",
    "head_scores",
    "merge_words",
    "relate",
    "repeat_ids",
    "repeat_probe",
    "rollout",
    "transform",
    "value_norm",
    "word_groups",
]
