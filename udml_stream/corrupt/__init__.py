"""The one corruption library: sensor-domain degradations indexed by a level from 1 to 11.

Level 1 is clean, levels 2 to 10 grow in severity, level 11 replaces the stream with pure noise.
The same functions degrade training data, evaluation data and live streams; they work on numpy
arrays with a leading batch axis and take one level per sample and a seeded ``numpy.random.Generator``.
See ``docs/corruption.md`` for the level → severity tables.
"""

from udml_stream.corrupt.core import (
    CLEAN,
    EVAL_KINDS,
    LEVELS,
    PURE_NOISE,
    TRAIN_KINDS,
    apply,
    kinds_for,
    severity_table,
)

__all__ = [
    "CLEAN",
    "EVAL_KINDS",
    "LEVELS",
    "PURE_NOISE",
    "TRAIN_KINDS",
    "apply",
    "kinds_for",
    "severity_table",
]
