"""Batches of corrupted sensor-domain samples: the one path training and evaluation share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from udml_stream import corrupt
from udml_stream.data.avdigits import Split


@dataclass
class Batch:
    """Corrupted inputs, the levels and presence actually applied, and the labels."""

    inputs: dict[str, np.ndarray]
    levels: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    labels: np.ndarray
    rows: np.ndarray


def draw_training_levels(
    n: int, modalities: tuple[str, ...], rng: np.random.Generator, clean_fraction: float
) -> dict[str, np.ndarray]:
    """The noisy-mixture schedule: a ``clean_fraction`` of samples clean, the rest with each
    modality's level drawn independently and uniformly from 1..11 (fresh on every call)."""
    clean = rng.random(n) < clean_fraction
    return {
        m: np.where(clean, corrupt.CLEAN, rng.integers(corrupt.CLEAN, corrupt.PURE_NOISE + 1, n))
        for m in modalities
    }


def make_batch(
    split: Split,
    rows: np.ndarray,
    levels: Mapping[str, np.ndarray],
    rng: np.random.Generator,
    kinds: Mapping[str, str] | None = None,
    missing: tuple[str, ...] = (),
) -> Batch:
    """Gather ``rows`` of ``split`` and corrupt each modality at its per-sample level.

    ``kinds`` picks the corruption per modality (default: the training kind); a modality named
    in ``missing`` is absent for every sample of the batch (its input is left out entirely).
    """
    raw = split.batch(rows)
    inputs, present = {}, {}
    for m, x in raw.items():
        present[m] = np.full(len(rows), m not in missing)
        if m in missing:
            continue
        kind = (kinds or {}).get(m, corrupt.TRAIN_KINDS[m])
        inputs[m] = corrupt.apply(m, kind, x, levels[m], rng)
    return Batch(inputs, {m: np.asarray(v) for m, v in levels.items()}, present,
                 split.labels[rows], rows)
