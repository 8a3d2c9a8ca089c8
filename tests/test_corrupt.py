"""The corruption library: monotonic in level, deterministic per seed, level 1 is identity."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from udml_stream import corrupt
from udml_stream.errors import UdmlError


def _sample(modality: str) -> np.ndarray:
    rng = np.random.default_rng(1)
    if modality == "image":
        x = np.zeros((1, 28, 28), np.float32)
        x[0, 6:22, 12:16] = 255.0
        return x
    if modality == "audio":
        t = np.arange(16000) / 16000
        return (0.5 * np.sin(2 * np.pi * 440 * t) * (t > 0.3) * (t < 0.7))[None].astype(np.float32)
    return rng.normal(size=(1, 64, 13)).astype(np.float32)


@pytest.mark.parametrize("modality", ["image", "audio", "mfcc"])
def test_kinds_deterministic_identity_and_monotonic(modality: str) -> None:
    x = _sample(modality)
    for kind in corrupt.kinds_for(modality):
        same = corrupt.apply(modality, kind, x, 1, np.random.default_rng(0))
        np.testing.assert_array_equal(same, x)
        a = corrupt.apply(modality, kind, x, 7, np.random.default_rng(42))
        b = corrupt.apply(modality, kind, x, 7, np.random.default_rng(42))
        np.testing.assert_array_equal(a, b)
        # Distortion grows with level, averaged over draws to smooth out the randomness.
        dist = []
        for lv in (2, 4, 6, 8, 10):
            errs = [np.mean((corrupt.apply(modality, kind, x, lv, np.random.default_rng(s)) - x)
                            ** 2) for s in range(8)]
            dist.append(np.mean(errs))
        assert all(b2 > b1 for b1, b2 in itertools.pairwise(dist)), (kind, dist)


def test_level_11_is_pure_noise_and_input_untouched() -> None:
    x = _sample("image")
    keep = x.copy()
    y = corrupt.apply("image", "occlusion", x, 11, np.random.default_rng(0))
    np.testing.assert_array_equal(x, keep)
    assert abs(np.corrcoef(y.ravel(), x.ravel())[0, 1]) < 0.1


def test_per_sample_levels_and_snr_map() -> None:
    x = np.repeat(_sample("audio"), 3, axis=0)
    y = corrupt.apply("audio", "gaussian", x, np.array([1, 2, 10]), np.random.default_rng(0))
    np.testing.assert_array_equal(y[0], x[0])
    snr = [10 * np.log10(np.mean(x[i] ** 2) / np.mean((y[i] - x[i]) ** 2)) for i in (1, 2)]
    assert abs(snr[0] - corrupt.core.audio_snr_db(2)) < 0.5
    assert abs(snr[1] - corrupt.core.audio_snr_db(10)) < 0.5


def test_bad_arguments_are_named() -> None:
    x = _sample("image")
    with pytest.raises(UdmlError, match="image/sparkle"):
        corrupt.apply("image", "sparkle", x, 3, np.random.default_rng(0))
    with pytest.raises(UdmlError, match=r"1\.\.11"):
        corrupt.apply("image", "gaussian", x, 12, np.random.default_rng(0))
