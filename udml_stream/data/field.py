"""Natural input for the field model: what a robot's camera and microphone really send.

The benchmark presets weaken AV-Digits on purpose (PCA-reduced images, a fixed 0 dB audio
background). A robot sends something else: full-quality frames in which the digit fills some
part of a 640×480 picture, under any exposure, and speech at any level from a quiet far talker
(−46 dBFS peak) to a close one (−6 dBFS), with digital silence around it or a room's noise floor.
This module makes that input, seeded, for training and for the natural-input evaluation:

* ``render_camera_views``: each MNIST digit letterboxed into a camera frame at a random size and
  position, then through the fusion node's own crop/grey/resize path (``ImagePrep.pixels``);
* ``naturalise_image``: exposure (gain, offset) and a little sensor noise;
* ``writer_images`` / ``mic_response`` (training only): the variation between writers and between
  microphones that one data set does not hold: pen width and slant, a capsule's high- and
  low-pass corners;
* ``place_words`` (training with ``train.place_words``, and the pretext head's fit,
  ``train.pregate``): the word anywhere in the window where it fits whole;
* ``naturalise_audio``: a level and a room-noise floor of random colour, plus the active power
  of the clean speech (the reference for every SNR) and the degradation that the floor itself
  amounts to on the ``gaussian`` family's SNR scale (a loud floor under quiet speech *is* noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from udml_stream import corrupt
from udml_stream.corrupt.core import SAMPLE_RATE
from udml_stream.data.sources import voiced_span
from udml_stream.model.preprocess import ImagePrep


@dataclass(frozen=True)
class NaturalAudio:
    """Ranges the natural audio variation is drawn from (uniform in dB)."""

    peak_dbfs: tuple[float, float] = (-46.0, -6.0)
    floor_share: float = 2.0 / 3.0  # share of windows with a room-noise floor (the rest: none)
    floor_dbfs: tuple[float, float] = (-75.0, -55.0)  # RMS of the floor
    # Microphone response (training only, ``mic_response``): capsules and their mounts differ in
    # where their band starts and ends; one synthetic voice set has one flat response.
    eq_share: float = 0.5  # share of windows given each corner (drawn apart)
    highpass_hz: tuple[float, float] = (30.0, 400.0)  # log-uniform
    lowpass_hz: tuple[float, float] = (3000.0, 7500.0)  # log-uniform


@dataclass(frozen=True)
class NaturalImage:
    """Ranges of exposure and sensor noise (pixel units 0..255)."""

    gain: tuple[float, float] = (0.35, 1.0)
    offset: tuple[float, float] = (0.0, 50.0)
    noise_std: tuple[float, float] = (0.0, 4.0)
    # Geometric jitter (training only, ``jitter=True``): the cached camera views put each digit
    # at one size and place; a robot sees it anywhere, and 3,500 training digits seen in one
    # pose each are too few for the encoder to learn that (measured: docs/model-card.md).
    scale: tuple[float, float] = (0.8, 1.2)
    rotate_deg: float = 11.0
    shift_px: float = 2.0
    # Writers (training only, ``writer_images``): slant as a horizontal shear, and a broader pen
    # (grey-level dilation by one pixel at the model's resolution) on a share of the images.
    slant: float = 0.2
    pen_share: float = 0.3


def render_camera_views(images: np.ndarray, rng: np.random.Generator, size: int = 28,
                        frame_hw: tuple[int, int] = (480, 640),
                        scale: tuple[float, float] = (0.55, 1.0), chunk: int = 64) -> np.ndarray:
    """Each 28×28 digit as a camera would see it, back at the model's resolution ``[N, S, S]``.

    The digit is scaled (nearest neighbour, as the demo's video does) to ``scale`` × the frame
    height, placed at a random position of the centre square the fusion node crops, on a black
    BGR frame, and that frame goes through ``ImagePrep.pixels`` (crop, BT.601 grey, area resize).
    """
    import cv2

    prep = ImagePrep(size=size)
    h, w = frame_hw
    side = min(h, w)
    top0, left0 = (h - side) // 2, (w - side) // 2
    out = np.empty((images.shape[0], size, size), np.float32)
    for start in range(0, images.shape[0], chunk):
        batch = images[start : start + chunk]
        frames = np.zeros((batch.shape[0], h, w, 3), np.uint8)
        for i, img in enumerate(batch):
            px = round(rng.uniform(*scale) * side)
            big = cv2.resize(np.clip(img, 0, 255).astype(np.uint8), (px, px),
                             interpolation=cv2.INTER_NEAREST)
            top = top0 + int(rng.integers(0, side - px + 1))
            left = left0 + int(rng.integers(0, side - px + 1))
            frames[i, top : top + px, left : left + px] = big[..., None]
        with torch.no_grad():
            out[start : start + len(batch)] = prep.pixels(torch.from_numpy(frames))[:, 0].numpy()
    return out


def jitter_images(x: np.ndarray, rng: np.random.Generator,
                  spec: NaturalImage = NaturalImage()) -> np.ndarray:
    """Each image ``[B, H, W]`` scaled, rotated and shifted at random about its centre (black
    fills the uncovered border, as the camera view's background)."""
    import cv2

    b, h, w = x.shape
    scale = rng.uniform(*spec.scale, size=b)
    angle = rng.uniform(-spec.rotate_deg, spec.rotate_deg, size=b)
    shift = rng.uniform(-spec.shift_px, spec.shift_px, size=(b, 2))
    out = np.empty_like(x, dtype=np.float32)
    for i in range(b):
        m = cv2.getRotationMatrix2D((w / 2.0 - 0.5, h / 2.0 - 0.5), float(angle[i]), float(scale[i]))
        m[:, 2] += shift[i]
        out[i] = cv2.warpAffine(np.ascontiguousarray(x[i], dtype=np.float32), m, (w, h),
                                flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    return out


def writer_images(x: np.ndarray, rng: np.random.Generator,
                  spec: NaturalImage = NaturalImage()) -> np.ndarray:
    """Each image ``[B, H, W]`` slanted (a shear within ±``spec.slant`` about its centre) and,
    on a ``spec.pen_share`` of them, written with a broader pen (one pixel of dilation)."""
    import cv2

    b, h, w = x.shape
    shear = rng.uniform(-spec.slant, spec.slant, size=b)
    broad = rng.random(b) < spec.pen_share
    kernel = np.ones((2, 2), np.uint8)
    out = np.empty_like(x, dtype=np.float32)
    for i in range(b):
        img = np.ascontiguousarray(x[i], dtype=np.float32)
        if broad[i]:
            img = cv2.dilate(img, kernel)
        m = np.array([[1.0, shear[i], -shear[i] * (h / 2.0 - 0.5)], [0.0, 1.0, 0.0]])
        out[i] = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    return out


def mic_response(x: np.ndarray, rng: np.random.Generator, spec: NaturalAudio = NaturalAudio(),
                 sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Clean speech ``[B, N]`` through a random microphone: on a ``spec.eq_share`` of windows a
    2nd-order high-pass corner, on another (drawn apart) a 2nd-order low-pass corner, each
    log-uniform in its range."""
    from scipy import signal

    out = np.asarray(x, dtype=np.float64).copy()
    b = out.shape[0]
    hp = np.exp(rng.uniform(*np.log(spec.highpass_hz), size=b))
    lp = np.exp(rng.uniform(*np.log(spec.lowpass_hz), size=b))
    use_hp, use_lp = rng.random(b) < spec.eq_share, rng.random(b) < spec.eq_share
    for i in range(b):
        if use_hp[i]:
            out[i] = signal.sosfilt(signal.butter(2, hp[i], "highpass", fs=sample_rate,
                                                  output="sos"), out[i])
        if use_lp[i]:
            out[i] = signal.sosfilt(signal.butter(2, lp[i], "lowpass", fs=sample_rate,
                                                  output="sos"), out[i])
    return out.astype(np.float32)


def place_words(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each window ``[B, N]`` with its word moved to a uniformly random place where it fits
    whole. The cached windows centre the word (``sources.fit_window``); a live window ends at
    the frame's capture time, so the word lies anywhere in it. The word is the voiced span
    ``fit_window`` centred (``sources.voiced_span``); the window is rolled, so what lay around
    the word (zeros in the cache) fills the other side."""
    out = np.asarray(x, dtype=np.float32).copy()
    n = out.shape[1]
    for i in range(out.shape[0]):
        span = voiced_span(out[i])
        if span is None:
            continue
        start = int(rng.integers(0, n - (span[1] - span[0]) + 1))
        out[i] = np.roll(out[i], start - span[0])
    return out


def naturalise_image(x: np.ndarray, rng: np.random.Generator,
                     spec: NaturalImage = NaturalImage()) -> np.ndarray:
    """Random exposure and sensor noise per sample, on pixels 0..255 ``[B, H, W]``."""
    b = x.shape[0]
    shape = (b,) + (1,) * (x.ndim - 1)
    gain = rng.uniform(*spec.gain, size=shape).astype(np.float32)
    offset = rng.uniform(*spec.offset, size=shape).astype(np.float32)
    std = rng.uniform(*spec.noise_std, size=shape).astype(np.float32)
    noise = rng.standard_normal(x.shape, dtype=np.float32) * std
    return np.clip(np.rint(x * gain + offset + noise), 0.0, 255.0).astype(np.float32)


def coloured_noise(n: int, length: int, alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[n, length]`` unit-RMS noise with power spectrum ∝ 1/f^alpha (0 white, 1 pink, 2 brown)."""
    spec = np.fft.rfft(rng.standard_normal((n, length)), axis=1)
    f = np.arange(spec.shape[1], dtype=np.float64)
    f[0] = 1.0
    spec *= f[None, :] ** (-np.asarray(alpha, dtype=np.float64)[:, None] / 2.0)
    spec[:, 0] = 0.0
    x = np.fft.irfft(spec, n=length, axis=1)
    return (x / np.sqrt(np.mean(x**2, axis=1, keepdims=True) + 1e-20)).astype(np.float32)


#: The ``gaussian`` audio family's SNR scale: level 2 is 30 dB, each level 5 dB worse.
_SNR_L2, _SNR_STEP = 30.0, 5.0


def snr_to_level(snr_db: np.ndarray) -> np.ndarray:
    """The (fractional) ``gaussian``-family level an SNR amounts to: 1 above 35 dB, at most 10."""
    lv = 2.0 + (_SNR_L2 - np.asarray(snr_db, dtype=np.float64)) / _SNR_STEP
    return np.clip(np.where(snr_db >= _SNR_L2 + _SNR_STEP, 1.0, lv), 1.0, 10.0)


def naturalise_audio(
    x: np.ndarray,
    rng: np.random.Generator,
    spec: NaturalAudio = NaturalAudio(),
    peak_dbfs: float | None = None,
    floor_dbfs: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Put clean speech ``[B, N]`` at a level and over a room floor, as a microphone hears it.

    ``peak_dbfs`` / ``floor_dbfs`` fix the level and the floor RMS for every sample (the
    natural-input evaluation); left None they are drawn from ``spec`` (training); a floor of
    ``-inf`` means none.

    Returns:
        (clean speech at its level, the same with the floor, the clean speech's active power,
        the floor's level on the ``gaussian`` family's scale: 1 when negligible).
    """
    b, n = x.shape
    peak = np.nanmax(np.abs(x), axis=1).astype(np.float64) + 1e-12
    target = (np.full(b, peak_dbfs) if peak_dbfs is not None
              else rng.uniform(*spec.peak_dbfs, size=b))
    speech = (x * (10.0 ** (target / 20.0) / peak)[:, None]).astype(np.float32)
    ref = corrupt.active_power(speech)
    if floor_dbfs is not None:
        rms_db = np.full(b, floor_dbfs, dtype=np.float64)
    else:
        rms_db = rng.uniform(*spec.floor_dbfs, size=b)
        rms_db[rng.random(b) >= spec.floor_share] = -np.inf
    has = np.isfinite(rms_db)
    out = speech.copy()
    level = np.ones(b, dtype=np.float64)
    if has.any():
        alpha = rng.choice([0.0, 1.0, 2.0], size=int(has.sum()))
        floor = coloured_noise(int(has.sum()), n, alpha, rng)
        amp = (10.0 ** (rms_db[has] / 20.0)).astype(np.float32)
        out[has] = speech[has] + amp[:, None] * floor
        snr = 10.0 * np.log10(ref[has] / (10.0 ** (rms_db[has] / 10.0)))
        level[has] = snr_to_level(snr)
    return speech, out, ref, level
