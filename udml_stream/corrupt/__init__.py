"""The one corruption library: sensor-domain degradation families indexed by a level from 1 to 11.

Level 1 is clean, levels 2 to 10 grow in severity, level 11 is each family's information-free
endpoint. The same functions degrade training data, evaluation data and live streams; they work
on numpy arrays with a leading batch axis and take one level per sample and a seeded
``numpy.random.Generator``. Missing audio samples are NaN. See ``docs/corruption.md`` for the
families and their level → severity tables.
"""

from udml_stream.corrupt.core import (
    CLEAN,
    EVAL_KINDS,
    FAMILIES,
    LEVELS,
    PURE_NOISE,
    TRAIN_KINDS,
    active_power,
    apply,
    families,
    kinds_for,
    severity_table,
)

__all__ = [
    "CLEAN",
    "EVAL_KINDS",
    "FAMILIES",
    "LEVELS",
    "PURE_NOISE",
    "TRAIN_KINDS",
    "active_power",
    "apply",
    "families",
    "kinds_for",
    "severity_table",
]
