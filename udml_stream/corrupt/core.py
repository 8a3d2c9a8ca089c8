"""Level-indexed sensor-domain corruptions for images, waveforms and MFCC frames.

Every function takes a batch ``x`` (leading axis = sample), one integer level per sample and a
``numpy.random.Generator``; it returns a new float32 array and never modifies its input. Level 1
returns the sample unchanged, level 11 (``PURE_NOISE``) replaces it with noise whatever the kind.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from udml_stream.errors import UdmlError

CLEAN = 1
PURE_NOISE = 11
LEVELS = tuple(range(CLEAN, PURE_NOISE + 1))

#: Corruption kinds the training loop injects (the estimator learns their level).
TRAIN_KINDS: dict[str, str] = {"image": "gaussian", "audio": "gaussian", "mfcc": "gaussian"}
#: Kinds training never sees, used only by evaluation.
EVAL_KINDS: dict[str, tuple[str, ...]] = {
    "image": ("occlusion", "blur"),
    "audio": ("dropout", "interference"),
    "mfcc": ("dropout", "burst"),
}

# ---- level → severity maps (documented in docs/corruption.md; change both together) ----


def image_noise_std(level: int) -> float:
    """Gaussian pixel-noise std in 0..255 units: 10·1.4^(L−2) for L = 2..10 (10 … 147)."""
    return 0.0 if level <= CLEAN else 10.0 * 1.4 ** (level - 2)


def audio_snr_db(level: int) -> float:
    """Signal-to-noise ratio in dB: 25 − 5·(L−2) for L = 2..10 (25 dB … −15 dB)."""
    return float("inf") if level <= CLEAN else 25.0 - 5.0 * (level - 2)


def mfcc_noise_std(level: int) -> float:
    """Noise std on z-scored MFCC frames: 0.15·1.4^(L−2) for L = 2..10 (0.15 … 2.2)."""
    return 0.0 if level <= CLEAN else 0.15 * 1.4 ** (level - 2)


def fraction(level: int) -> float:
    """Fraction of the stream hit (occluded area, dropped samples or frames): 0.08·(L−1)."""
    return 0.0 if level <= CLEAN else 0.08 * (level - 1)


def blur_sigma(level: int, size: int) -> float:
    """Gaussian blur sigma in pixels: 0.0125·(L−1)·min(H, W) (0.35 px per level at 28 px)."""
    return 0.0 if level <= CLEAN else 0.0125 * (level - 1) * size


def severity_table() -> list[dict[str, float | int]]:
    """Rows of the documented level → severity map, one per level (for docs and reports)."""
    return [
        {
            "level": lv,
            "image_noise_std": round(image_noise_std(lv), 2),
            "audio_snr_db": audio_snr_db(lv),
            "mfcc_noise_std": round(mfcc_noise_std(lv), 3),
            "fraction": round(fraction(lv), 2),
            "blur_sigma_28px": round(blur_sigma(lv, 28), 2),
        }
        for lv in range(CLEAN, PURE_NOISE)
    ]


# ---- pure noise (level 11) per modality ----


def _image_pure(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 255.0, size=x.shape).astype(np.float32)


def _audio_pure(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    return max(rms, 0.05) * rng.standard_normal(x.shape, dtype=np.float32)


def _mfcc_pure(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0.0, 1.0, size=x.shape).astype(np.float32)


# ---- per-sample corruption functions: (sample, level, rng) -> sample ----


def _image_gaussian(x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    noisy = x + rng.normal(0.0, image_noise_std(level), size=x.shape)
    return np.clip(noisy, 0.0, 255.0)


def _image_occlusion(x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    area = fraction(level)
    aspect = rng.uniform(0.6, 1.6)
    oh = min(h, max(1, round(np.sqrt(area * h * w * aspect))))
    ow = min(w, max(1, round(area * h * w / oh)))
    top = int(rng.integers(0, h - oh + 1))
    left = int(rng.integers(0, w - ow + 1))
    out = x.copy()
    out[top : top + oh, left : left + ow] = 0.0  # a dark object in front of the lens
    return out


def _image_blur(x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    sigma = blur_sigma(level, min(x.shape[:2]))
    return cv2.GaussianBlur(x.astype(np.float32), (0, 0), sigmaX=sigma, sigmaY=sigma)


def _noise_at_snr(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    p_sig = float(np.mean(x.astype(np.float64) ** 2))
    p_noise = float(np.mean(noise.astype(np.float64) ** 2)) or 1.0
    # A silent window still gets noise at a floor, so "noisy" never means "unchanged".
    p_sig = max(p_sig, 1e-4)
    scale = np.sqrt(p_sig / (p_noise * 10.0 ** (snr_db / 10.0)))
    return x + scale * noise


def _audio_gaussian(x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    # float32 draws: waveform noise is the largest random draw of a training batch.
    return _noise_at_snr(x, rng.standard_normal(x.shape, dtype=np.float32), audio_snr_db(level))


def _audio_interference(x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    # Mains-like hum with harmonics plus a drifting whistle: structured, not white.
    n = x.shape[-1]
    t = np.arange(n) / 16000.0
    f0 = rng.uniform(80.0, 300.0)
    hum = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 6))
    f1 = rng.uniform(600.0, 3000.0)
    whistle = np.sin(2 * np.pi * (f1 * t + 200.0 * t**2))
    return _noise_at_snr(x, hum + 0.5 * whistle, audio_snr_db(level))


def _segment_dropout(
    x: np.ndarray, level: int, rng: np.random.Generator, seg: int
) -> np.ndarray:
    n = x.shape[0]
    n_seg = max(1, n // seg)
    k = round(fraction(level) * n_seg)
    out = x.copy()
    for s in rng.choice(n_seg, size=k, replace=False):
        out[s * seg : (s + 1) * seg] = 0.0
    return out


def _audio_dropout(x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    return _segment_dropout(x, level, rng, seg=800)  # 50 ms at 16 kHz


def _mfcc_gaussian(x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    return x + rng.normal(0.0, mfcc_noise_std(level), size=x.shape)


def _mfcc_dropout(x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    return _segment_dropout(x, level, rng, seg=2)


def _mfcc_burst(x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    n = x.shape[0]
    length = max(1, round(fraction(level) * n))
    start = int(rng.integers(0, n - length + 1))
    out = x.copy()
    out[start : start + length] += rng.normal(0.0, 2.0, size=out[start : start + length].shape)
    return out


_Fn = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
_KINDS: dict[str, dict[str, _Fn]] = {
    "image": {"gaussian": _image_gaussian, "occlusion": _image_occlusion, "blur": _image_blur},
    "audio": {
        "gaussian": _audio_gaussian,
        "dropout": _audio_dropout,
        "interference": _audio_interference,
    },
    "mfcc": {"gaussian": _mfcc_gaussian, "dropout": _mfcc_dropout, "burst": _mfcc_burst},
}
_PURE: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "image": _image_pure,
    "audio": _audio_pure,
    "mfcc": _mfcc_pure,
}


def kinds_for(modality: str) -> tuple[str, ...]:
    """Names of the corruption kinds defined for ``modality``."""
    if modality not in _KINDS:
        raise UdmlError(f"unknown modality {modality!r}; expected one of {sorted(_KINDS)}")
    return tuple(_KINDS[modality])


def apply(
    modality: str,
    kind: str,
    x: np.ndarray,
    levels: np.ndarray | int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Corrupt a batch ``x`` of ``modality`` samples with ``kind`` at one level per sample.

    Args:
        modality: ``"image"`` (pixels 0..255, ``[B, H, W]`` or ``[B, H, W, C]``), ``"audio"``
            (16 kHz waveform in [-1, 1], ``[B, N]``) or ``"mfcc"`` (z-scored frames, ``[B, T, C]``).
        kind: one of ``kinds_for(modality)``.
        levels: an int for the whole batch or an int array of shape ``[B]`` in 1..11.
        rng: the seeded generator every random draw comes from.

    Returns:
        A new float32 array of the same shape.
    """
    fns = _KINDS.get(modality)
    if fns is None or kind not in fns:
        raise UdmlError(
            f"unknown corruption {modality}/{kind}; expected one of "
            + ", ".join(f"{m}/{k}" for m, ks in _KINDS.items() for k in ks)
        )
    lv = np.broadcast_to(np.asarray(levels, dtype=np.int64), (x.shape[0],))
    if lv.size and (lv.min() < CLEAN or lv.max() > PURE_NOISE):
        raise UdmlError(f"corruption levels must lie in {CLEAN}..{PURE_NOISE}, got {lv.min()}..{lv.max()}")
    out = x.astype(np.float32, copy=True)
    fn, pure = fns[kind], _PURE[modality]
    for i in np.flatnonzero(lv > CLEAN):
        sample = out[i]
        out[i] = pure(sample, rng) if lv[i] == PURE_NOISE else fn(sample, int(lv[i]), rng)
    return out
