"""Batches of corrupted sensor-domain samples: the one path training and evaluation share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from udml_stream import corrupt, modalities
from udml_stream.data.avdigits import Split
from udml_stream.data.field import (
    NaturalAudio,
    jitter_images,
    mic_response,
    naturalise_audio,
    naturalise_image,
    place_words,
    writer_images,
)


@dataclass
class Batch:
    """Corrupted inputs, the levels and presence actually applied, and the labels.

    ``levels`` are the estimator's targets: the injected level, raised where the natural
    variation itself degraded the sample (a loud room floor under quiet speech), hence float.
    """

    inputs: dict[str, np.ndarray]
    levels: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    labels: np.ndarray
    rows: np.ndarray
    families: dict[str, np.ndarray] = field(default_factory=dict)  # per-sample family names
    # Active power of the clean speech behind each audio sample (natural splits): the reference
    # every SNR of a later corruption is measured against.
    ref_power: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class NaturalInput:
    """Fixed natural conditions for a batch of a natural split (None: drawn at random)."""

    peak_dbfs: float | None = None
    floor_dbfs: float | None = None  # RMS of the room floor; -inf: none
    exposure: bool = True  # random exposure and sensor noise on the images
    jitter: bool = False  # a random pose per image too (training: data.field.jitter_images)
    # Writers and microphones too (training: data.field.writer_images / mic_response).
    sensor: bool = False
    # The word anywhere in its window where it fits whole (training: data.field.place_words).
    place_words: bool = False


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


def _corrupt_mixed(modality: str, kinds: str | tuple[str, ...], x: np.ndarray,
                   levels: np.ndarray, rng: np.random.Generator,
                   ref_power: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Corrupt each sample with one family: ``kinds`` names it, or lists those to draw from.
    ``modality`` is the stream's corruption key (its kind: ``image`` for ``image2`` too)."""
    if isinstance(kinds, str):
        fams = np.full(x.shape[0], kinds, dtype=object)
    else:
        fams = np.asarray(kinds, dtype=object)[rng.integers(0, len(kinds), x.shape[0])]
    out = np.empty_like(x, dtype=np.float32)
    for fam in dict.fromkeys(fams.tolist()):
        idx = np.flatnonzero(fams == fam)
        ref = None if ref_power is None else ref_power[idx]
        out[idx] = corrupt.apply(modality, fam, x[idx], levels[idx], rng, ref_power=ref)
    return out, fams.astype(str)


def make_batch(
    split: Split,
    rows: np.ndarray,
    levels: Mapping[str, np.ndarray],
    rng: np.random.Generator,
    kinds: Mapping[str, str | tuple[str, ...]] | None = None,
    missing: tuple[str, ...] = (),
    natural: NaturalInput | None = None,
) -> Batch:
    """Gather ``rows`` of ``split`` and corrupt each modality at its per-sample level.

    ``kinds`` picks the corruption family per modality (default: the benchmark's training kind
    of the stream's modality kind, ``udml_stream.modalities``);
    a tuple of families draws one per sample. A modality named in ``missing`` is absent for every
    sample of the batch (its input is left out entirely). On a natural split (the field preset)
    the clean samples first get natural variation (level, room floor, exposure: ``natural`` fixes
    it), and audio SNRs are measured against the clean speech.
    """
    raw = split.batch(rows)
    inputs, present, out_levels, fams, refs = {}, {}, {}, {}, {}
    nat = natural or NaturalInput()
    # Natural variation first, for every modality, missing or not: a sample then gets the same
    # level, floor and exposure whichever streams a condition drops or corrupts (paired scores).
    kind = {m: modalities.kind_of(m, split.kinds).corrupt for m in raw}
    for m, x in raw.items():
        lv = np.asarray(levels[m])
        out_levels[m] = lv
        if split.natural and kind[m] == "audio":
            if nat.place_words:  # where the word lies comes first: the rest acts on the window
                x = place_words(x, rng)
            if nat.sensor:  # the microphone's response acts on the speech, before level and room
                x = mic_response(x, rng)
            _, raw[m], refs[m], floor_level = naturalise_audio(
                x, rng, NaturalAudio(), nat.peak_dbfs, nat.floor_dbfs)
            out_levels[m] = np.maximum(lv, floor_level).astype(np.float32)
        elif split.natural and kind[m] == "image":
            if nat.sensor:  # the writer's pen and slant come before the camera's pose
                x = writer_images(x, rng)
            if nat.jitter:  # the pose first: exposure and sensor noise act on the posed view
                x = jitter_images(x, rng)
            raw[m] = naturalise_image(x, rng) if nat.exposure else x
    for m, x in raw.items():
        present[m] = np.full(len(rows), m not in missing)
        if m in missing:
            continue
        fam = (kinds or {}).get(m, corrupt.TRAIN_KINDS[kind[m]])
        inputs[m], fams[m] = _corrupt_mixed(kind[m], fam, x, np.asarray(levels[m]), rng,
                                            refs.get(m))
    return Batch(inputs, out_levels, present, split.labels[rows], rows, fams, refs)
