"""Program: a second probe set of degradations, to look for holes on the validation split.

``udml eval-unseen`` holds 30 degradations no training family covers; the model has been
measured (and gated) against them for several sessions, so they no longer say much about what
nobody has looked at yet. This set was written in session 13, after those, from kinds of damage
a robot's sensors meet and neither set held: camera artefacts (edges only, lines, spots, glass,
shear, an inverted stripe, a far-away digit, a thin pen, an upside-down camera, dead blocks and
columns, vignetting, flicker bands, interlacing, moiré, hot pixels, a lighting gradient, a
double exposure, a strongly compressed frame, raindrops) and microphone ones (a compressor,
tremolo, a repeating buffer, byte-swapped samples, ring modulation, machine tones, a µ-law codec,
a fading gain, rumble, door slams, a fan, dropped stretches spliced, bit errors, a crowd, a
chopped connection). It is scored like the held-out set (``evaluate.unseen.unseen_sweep``:
every sample degraded in one stream, paired with its own clean pass), three severities each,
on *validation* by default: it is for finding holes, not for reporting.

Its first run found one: the session-12 checkpoint was blind to machine tones (a fast sweep left
σ̂ below clean on every sample, fused 14.6 pt below dropping the microphone). The ``tonal``
training family was written after that finding, so every tone here one of its sources makes,
or of their kind (tone pairs, a warble, a whistle, a sawtooth), is marked *near* it; a melody
(discrete notes) is not. Other entries that share a kind of damage with a trained family (a
crowd with ``babble``, hot pixels with ``saltpepper``, ...) or with the pretext head's
transforms (an upside-down camera) are marked *near* those, as in the held-out set. The
``readout`` camera family (session 14) was written after this set's camera holes (a stripe,
flicker bands, frosted glass): dead blocks, flicker bands and dead columns are near it; the
inverted stripe, the glass and the rest are not.

    python -m training.probe_fresh checkpoints/default --out docs/results/probe_fresh_val
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from scipy import signal
from scipy.ndimage import uniform_filter1d

from udml_stream.corrupt.core import SAMPLE_RATE, babble_noise
from udml_stream.errors import UdmlError
from udml_stream.evaluate.unseen import (
    PRETEXT,
    Context,
    Degradation,
    add_at_snr,
    fill_missing,
    remark_missing,
    render_markdown,
    summary,
    unseen_sweep,
)
from udml_stream.model import checkpoint
from udml_stream.train.trainer import load_data_for_checkpoint

log = logging.getLogger(__name__)

_SR = SAMPLE_RATE
_Rng = np.random.Generator


# ---- camera (model-resolution pixels 0..255, [H, W]) ----

def _hi(x: np.ndarray) -> float:
    return float(np.percentile(x, 99))


def _edges(x: np.ndarray, t: int, rng: _Rng, ctx: Context) -> np.ndarray:
    # An edge-detector output mode: only the outline of the digit survives.
    u8 = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return cv2.Canny(u8, t, 2 * t).astype(np.float32)


def _lines(x: np.ndarray, n: int, rng: _Rng, ctx: Context) -> np.ndarray:
    out = x.astype(np.float32).copy()
    h, w = x.shape
    for _ in range(n):  # zigzag lines as bright as the ink
        pts = np.stack([np.linspace(0, w - 1, 5), rng.uniform(0, h - 1, 5)], 1).astype(np.int32)
        cv2.polylines(out, [pts], False, _hi(x), 1)
    return out


def _spots(x: np.ndarray, n: int, rng: _Rng, ctx: Context) -> np.ndarray:
    out = x.astype(np.float32).copy()
    h, w = x.shape
    for _ in range(n):  # spatter on the lens
        cv2.circle(out, (int(rng.integers(0, w)), int(rng.integers(0, h))),
                   int(rng.integers(1, 3)), _hi(x), -1)
    return out


def _glass(x: np.ndarray, d: int, rng: _Rng, ctx: Context) -> np.ndarray:
    # Frosted glass: each pixel swapped with a random neighbour within d, twice, then softened.
    out = x.astype(np.float32).copy()
    h, w = x.shape
    for _ in range(2):
        for i in range(h - d - 1, d, -1):
            for j in range(w - d - 1, d, -1):
                dy, dx = rng.integers(-d, d + 1, 2)
                out[i, j], out[i + dy, j + dx] = out[i + dy, j + dx], out[i, j]
    return cv2.GaussianBlur(out, (3, 3), 0.7)


def _shear(x: np.ndarray, s: float, rng: _Rng, ctx: Context) -> np.ndarray:
    h, w = x.shape
    s *= 1.0 if rng.random() < 0.5 else -1.0
    m = np.array([[1.0, s, -s * (h / 2 - 0.5)], [0.0, 1.0, 0.0]], np.float32)
    return cv2.warpAffine(x.astype(np.float32), m, (w, h), borderMode=cv2.BORDER_REPLICATE)


def _stripe(x: np.ndarray, width: int, rng: _Rng, ctx: Context) -> np.ndarray:
    # A band of columns read out inverted (a faulty ADC channel).
    out = x.astype(np.float32).copy()
    lo, hi = np.percentile(x, [1, 99])
    c = x.shape[1] // 2 + int(rng.integers(-4, 5))
    cols = slice(max(0, c - width // 2), c + (width + 1) // 2)
    out[:, cols] = lo + hi - out[:, cols]
    return out


def _far(x: np.ndarray, scale: float, rng: _Rng, ctx: Context) -> np.ndarray:
    h, w = x.shape
    m = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), 0.0, scale)
    # warpAffine has no area filter (INTER_AREA acts as bilinear there): bilinear, said plainly.
    return cv2.warpAffine(x.astype(np.float32), m, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def _thin(x: np.ndarray, k: int, rng: _Rng, ctx: Context) -> np.ndarray:
    return cv2.erode(x.astype(np.float32), np.ones((k, k), np.uint8))


def _upside_down(x: np.ndarray, share: float, rng: _Rng, ctx: Context) -> np.ndarray:
    # A share of the frames flipped top to bottom (a mount or driver setting).
    return x[::-1].astype(np.float32).copy() if rng.random() < share else x.astype(np.float32)


def _blocks(x: np.ndarray, n: int, rng: _Rng, ctx: Context) -> np.ndarray:
    out = x.astype(np.float32).copy()
    h, w = x.shape
    lo = float(np.percentile(x, 1))
    for _ in range(n):  # dead 4×4 blocks (a broken decoder's macroblocks)
        i, j = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
        out[i:i + 4, j:j + 4] = lo
    return out


def _vignette(x: np.ndarray, k: float, rng: _Rng, ctx: Context) -> np.ndarray:
    h, w = x.shape
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - h / 2, xx - w / 2) / (h / 2)
    return (x * np.clip(1 - k * r**2, 0, 1)).astype(np.float32)


def _flicker(x: np.ndarray, amp: float, rng: _Rng, ctx: Context) -> np.ndarray:
    # Mains flicker under a rolling shutter: horizontal bands.
    h, _ = x.shape
    bands = amp * np.sin(np.arange(h)[:, None] * 0.9 + rng.uniform(0, 2 * np.pi))
    return np.clip(x + bands, 0, 255).astype(np.float32)


def _interlace(x: np.ndarray, shift: int, rng: _Rng, ctx: Context) -> np.ndarray:
    out = x.astype(np.float32).copy()
    out[1::2] = np.roll(out[1::2], shift, axis=1)  # odd field from a moment later
    return out


def _dead_columns(x: np.ndarray, n: int, rng: _Rng, ctx: Context) -> np.ndarray:
    out = x.astype(np.float32).copy()
    cols = rng.choice(x.shape[1], n, replace=False)
    out[:, cols] = np.where(rng.random(n) < 0.5, 0.0, _hi(x))
    return out


def _moire(x: np.ndarray, amp: float, rng: _Rng, ctx: Context) -> np.ndarray:
    h, w = x.shape
    yy, xx = np.mgrid[:h, :w]
    a = rng.uniform(0, np.pi)
    return np.clip(x + amp * np.sin((xx * np.cos(a) + yy * np.sin(a)) * 2.2), 0, 255
                   ).astype(np.float32)


def _hot_pixels(x: np.ndarray, share: float, rng: _Rng, ctx: Context) -> np.ndarray:
    out = x.astype(np.float32).copy()
    out[rng.random(x.shape) < share] = 255.0
    return out


def _light_gradient(x: np.ndarray, k: float, rng: _Rng, ctx: Context) -> np.ndarray:
    h, w = x.shape
    a = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[:h, :w]
    g = ((xx - w / 2) * np.cos(a) + (yy - h / 2) * np.sin(a)) / (w / 2)
    return np.clip(x * (1 - k / 2 + k / 2 * g) + k * 80 * (g + 1) / 2, 0, 255).astype(np.float32)


def _double_exposure(x: np.ndarray, shift: int, rng: _Rng, ctx: Context) -> np.ndarray:
    return (0.5 * x + 0.5 * np.roll(x, (shift, shift), axis=(0, 1))).astype(np.float32)


def _small_jpeg(x: np.ndarray, quality: int, rng: _Rng, ctx: Context) -> np.ndarray:
    # A 112 px stream (4× the model's side) compressed hard, then brought to the model's side.
    big = np.clip(cv2.resize(x.astype(np.float32), (112, 112)), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise UdmlError(f"OpenCV could not JPEG-encode a 112 px frame at quality {quality}")
    return cv2.resize(cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE).astype(np.float32), x.shape[::-1],
                      interpolation=cv2.INTER_AREA)


def _raindrops(x: np.ndarray, n: int, rng: _Rng, ctx: Context) -> np.ndarray:
    out = x.astype(np.float32).copy()
    h, w = x.shape
    for _ in range(n):
        cv2.circle(out, (int(rng.integers(0, w)), int(rng.integers(0, h))), 1,
                   float(rng.uniform(120, 255)), -1)
    return cv2.GaussianBlur(out, (3, 3), 0.6)


# ---- microphone (16 kHz window in [-1, 1], NaN = missing) ----

def _t(n: int) -> np.ndarray:
    return np.arange(n) / _SR


def _mixed(x: np.ndarray, noise: np.ndarray, snr_db: float, ctx: Context) -> np.ndarray:
    # A missing sample stays missing by itself (NaN + noise is NaN), as in the held-out set.
    return add_at_snr(x, noise, snr_db, ctx.ref_power)


def _compressor(x: np.ndarray, p: float, rng: _Rng, ctx: Context) -> np.ndarray:
    f, miss = fill_missing(x)
    peak = float(np.max(np.abs(f))) or 1.0
    return remark_missing(miss, np.sign(f) * peak * (np.abs(f) / peak) ** p)


def _tremolo(x: np.ndarray, depth: float, rng: _Rng, ctx: Context) -> np.ndarray:
    f, miss = fill_missing(x)
    lfo = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 8) * _t(f.size))
    return remark_missing(miss, f * (1 - depth * lfo))


def _stutter(x: np.ndarray, share: float, rng: _Rng, ctx: Context) -> np.ndarray:
    # A driver that re-sends its previous 20 ms buffer instead of a fresh one.
    f, miss = fill_missing(x)
    out = f.copy()
    for s in range(320, f.size, 320):
        if rng.random() < share:
            out[s:s + 320] = out[s - 320:s]
    return remark_missing(miss, out)


def _byteswap(x: np.ndarray, share: float, rng: _Rng, ctx: Context) -> np.ndarray:
    # 16-bit samples read with the wrong byte order, on a share of 20 ms buffers.
    f, miss = fill_missing(x)
    q = np.clip(np.rint(f * 32767), -32768, 32767).astype(np.int16)
    swapped = q.byteswap().astype(np.float64) / 32768
    bad = np.repeat(rng.random(f.size // 320 + 1) < share, 320)[: f.size]
    return remark_missing(miss, np.where(bad, swapped, f))


def _ring_mod(x: np.ndarray, hz: float, rng: _Rng, ctx: Context) -> np.ndarray:
    f, miss = fill_missing(x)
    return remark_missing(miss, f * np.cos(2 * np.pi * hz * _t(f.size)))


def _mulaw(x: np.ndarray, bits: int, rng: _Rng, ctx: Context) -> np.ndarray:
    f, miss = fill_missing(x)
    mu = 255.0
    y = np.sign(f) * np.log1p(mu * np.abs(np.clip(f, -1, 1))) / np.log1p(mu)
    q = np.round(y * 2 ** (bits - 1)) / 2 ** (bits - 1)
    return remark_missing(miss, np.sign(q) * ((1 + mu) ** np.abs(q) - 1) / mu)


def _fade(x: np.ndarray, db: float, rng: _Rng, ctx: Context) -> np.ndarray:
    f, miss = fill_missing(x)
    g = 10 ** (np.linspace(0, -db, f.size) / 20)
    return remark_missing(miss, f * (g if rng.random() < 0.5 else g[::-1]))


def _tone_noise(kind: str, n: int, rng: _Rng) -> np.ndarray:
    t = _t(n)
    if kind == "sweep":
        return np.sin(2 * np.pi * (300 * t + 1500 * t**2))
    if kind == "beeper":
        return np.sin(2 * np.pi * 2500 * t) * ((t * 4) % 1 < 0.5)
    if kind == "whine":
        return sum(np.sin(2 * np.pi * k * (150 * t + 400 * t**2)) / k for k in range(1, 8))
    if kind == "dtmf":
        out = np.zeros(n)
        for s in range(0, n, 1600):
            seg = slice(s, s + 1000)
            out[seg] = (np.sin(2 * np.pi * rng.choice([697, 770, 852, 941]) * t[seg])
                        + np.sin(2 * np.pi * rng.choice([1209, 1336, 1477]) * t[seg]))
        return out
    if kind == "warble":
        return np.sin(2 * np.pi * (1500 * t - 400 / (2 * np.pi * 15) * np.cos(2 * np.pi * 15 * t)))
    if kind == "whistle":
        return np.sin(2 * np.pi * 6500 * t)
    if kind == "sawtooth":
        return signal.sawtooth(2 * np.pi * (200 * t + 500 * t**2))
    if kind == "melody":
        out, s = np.zeros(n), 0
        while s < n:
            d = int(rng.uniform(0.15, 0.3) * _SR)
            f0 = 220 * 2 ** (int(rng.integers(0, 24)) / 12)
            tt = np.arange(min(d, n - s)) / _SR
            out[s:s + tt.size] = sum(np.sin(2 * np.pi * k * f0 * tt) / k**1.5
                                     for k in range(1, 6)) * np.exp(-tt * 6)
            s += d
        return out
    raise UdmlError(f"unknown tone {kind!r}")


def _tones(kind: str) -> Callable[[np.ndarray, float, _Rng, Context], np.ndarray]:
    def fn(x: np.ndarray, snr_db: float, rng: _Rng, ctx: Context) -> np.ndarray:
        return _mixed(x, _tone_noise(kind, x.shape[0], rng), snr_db, ctx)
    return fn


def _rumble(x: np.ndarray, snr_db: float, rng: _Rng, ctx: Context) -> np.ndarray:
    walk = np.cumsum(rng.standard_normal(x.shape[0]))
    # Take out the walk's drift (its 50 ms moving mean, edges reflected: a zero-padded mean
    # would leave a step at each end that carries much of the power).
    walk -= uniform_filter1d(walk, 801, mode="reflect")
    low = signal.sosfilt(signal.butter(2, 200, fs=_SR, output="sos"), walk)
    return _mixed(x, low, snr_db, ctx)


def _slams(x: np.ndarray, snr_db: float, rng: _Rng, ctx: Context) -> np.ndarray:
    n = x.shape[0]
    noise = np.zeros(n)
    for _ in range(3):  # decaying noise bursts: doors, footsteps, a dropped tool
        s = int(rng.integers(0, n - 1600))
        length = min(int(rng.integers(1600, 4000)), n - s)
        noise[s:s + length] += rng.standard_normal(length) * np.exp(-np.arange(length) / 600)
    return _mixed(x, noise, snr_db, ctx)


def _fan(x: np.ndarray, snr_db: float, rng: _Rng, ctx: Context) -> np.ndarray:
    n = x.shape[0]
    f = np.fft.rfftfreq(n, 1 / _SR)
    pink = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) / np.sqrt(np.maximum(f, 20)), n)
    blade = rng.uniform(80, 200)
    noise = pink / pink.std() + sum(0.7 * np.sin(2 * np.pi * k * blade * _t(n)) for k in (1, 2, 3))
    return _mixed(x, noise, snr_db, ctx)


def _spliced(x: np.ndarray, share: float, rng: _Rng, ctx: Context) -> np.ndarray:
    # 25 ms lost out of a share of 100 ms stretches and the rest spliced together, unmarked
    # (a transport that drops packets and does not say so); the window's end is left silent.
    f, miss = fill_missing(x)
    keep = np.ones(f.size, bool)
    for s in range(0, f.size, 1600):
        if rng.random() < share:
            keep[s:s + 400] = False
    out = np.zeros_like(f)
    kept = f[keep]
    out[: kept.size] = kept
    return remark_missing(miss, out)


def _bit_errors(x: np.ndarray, rate: float, rng: _Rng, ctx: Context) -> np.ndarray:
    f, miss = fill_missing(x)
    q = np.clip(np.rint(f * 32767), -32768, 32767).astype(np.int16)
    flips = ((rng.random((q.size, 16)) < rate) * (1 << np.arange(16))).sum(1).astype(np.uint16)
    return remark_missing(miss, (q.view(np.uint16) ^ flips).view(np.int16).astype(np.float64) / 32768)


def _crowd(x: np.ndarray, snr_db: float, rng: _Rng, ctx: Context) -> np.ndarray:
    return _mixed(x, sum(babble_noise(x.shape[0], rng) for _ in range(6)), snr_db, ctx)


def _chopped(x: np.ndarray, hz: float, rng: _Rng, ctx: Context) -> np.ndarray:
    # A loose connector: the signal on and off at hz, unmarked.
    f, miss = fill_missing(x)
    return remark_missing(miss, f * (((_t(f.size) * hz + rng.random()) % 1) < 0.5))


_D = Degradation
_SNR = (10.0, 0.0, -10.0)
#: The probe set, camera first. Three severities each (1 = mildest).
DEGRADATIONS: tuple[Degradation, ...] = (
    _D("image", "edges", "an edge-detector output mode", "Canny {}", (50, 100, 200), _edges),
    _D("image", "lines", "zigzag lines as bright as the ink", "{} lines", (1, 3, 6), _lines),
    _D("image", "spots", "spatter on the lens", "{} spots", (5, 15, 40), _spots),
    _D("image", "glass", "frosted glass", "±{} px", (1, 2, 3), _glass),
    _D("image", "shear", "a sheared view", "shear {}", (0.4, 0.7, 1.0), _shear, near="warp"),
    _D("image", "stripe", "a band of columns read out inverted", "{} px", (4, 8, 14), _stripe),
    _D("image", "far", "the digit far away", "×{}", (0.6, 0.45, 0.3), _far, near="warp"),
    _D("image", "thin", "a thin pen", "erode {} px", (2, 3, 4), _thin),
    _D("image", "upside_down", "frames flipped top to bottom", "{:.0%} of frames",
       (0.3, 0.6, 1.0), _upside_down, near=PRETEXT),
    _D("image", "blocks", "dead 4×4 blocks", "{} blocks", (5, 12, 25), _blocks, near="readout"),
    _D("image", "vignette", "dark corners", "k {}", (0.3, 0.6, 0.9), _vignette),
    _D("image", "flicker", "mains flicker bands", "±{} grey", (30, 80, 160), _flicker,
       near="readout"),
    _D("image", "interlace", "interlaced fields out of step", "{} px", (1, 2, 4), _interlace),
    _D("image", "dead_columns", "dead or stuck columns", "{} columns", (2, 5, 10), _dead_columns,
       near="readout"),
    _D("image", "moire", "a moiré pattern", "±{} grey", (40, 90, 160), _moire),
    _D("image", "hot_pixels", "hot pixels", "{:.0%} of pixels", (0.02, 0.05, 0.12), _hot_pixels,
       near="saltpepper"),
    _D("image", "light_gradient", "light from one side", "k {}", (0.5, 1.0, 1.8), _light_gradient),
    _D("image", "double_exposure", "a double exposure", "{} px apart", (2, 4, 7), _double_exposure),
    _D("image", "small_jpeg", "a small, hard-compressed stream", "quality {}", (20, 8, 2),
       _small_jpeg, near="lowres"),
    _D("image", "raindrops", "raindrops on the lens", "{} drops", (10, 30, 80), _raindrops),
    _D("audio", "compressor", "a dynamic-range compressor", "|x|^{}", (0.5, 0.25, 0.1), _compressor),
    _D("audio", "tremolo", "a gain wobbling at 3–8 Hz", "depth {}", (0.5, 0.8, 1.0), _tremolo),
    _D("audio", "stutter", "a driver re-sending its last 20 ms", "{:.0%} of buffers",
       (0.2, 0.5, 0.8), _stutter),
    _D("audio", "byteswap", "samples read with the wrong byte order", "{:.0%} of buffers",
       (0.1, 0.4, 1.0), _byteswap),
    _D("audio", "ring_mod", "ring modulation", "{} Hz", (100, 500, 1500), _ring_mod),
    _D("audio", "mulaw", "a µ-law codec at few bits", "{} bit", (6, 4, 2), _mulaw),
    _D("audio", "fade", "a gain fading across the window", "{} dB", (20, 40, 60), _fade),
    _D("audio", "sweep", "a tone sweeping 300 → 3,300 Hz", "SNR {:+} dB", _SNR, _tones("sweep"),
       near="tonal"),
    _D("audio", "beeper", "a 2.5 kHz reversing beeper", "SNR {:+} dB", _SNR, _tones("beeper"),
       near="tonal"),
    _D("audio", "whine", "a motor spinning up", "SNR {:+} dB", _SNR, _tones("whine"), near="tonal"),
    _D("audio", "dtmf", "DTMF tone pairs", "SNR {:+} dB", _SNR, _tones("dtmf"), near="tonal"),
    _D("audio", "warble", "an alarm warbling at 15 Hz", "SNR {:+} dB", _SNR, _tones("warble"),
       near="tonal"),
    _D("audio", "whistle", "a 6.5 kHz whistle", "SNR {:+} dB", _SNR, _tones("whistle"),
       near="tonal"),
    _D("audio", "sawtooth", "a sawtooth sweeping up", "SNR {:+} dB", _SNR, _tones("sawtooth"),
       near="tonal"),
    _D("audio", "melody", "music: random notes", "SNR {:+} dB", _SNR, _tones("melody")),
    _D("audio", "rumble", "low-frequency rumble", "SNR {:+} dB", _SNR, _rumble),
    _D("audio", "slams", "door slams", "SNR {:+} dB", _SNR, _slams),
    _D("audio", "fan", "a fan: pink noise and blade tones", "SNR {:+} dB", _SNR, _fan,
       near="interference"),
    _D("audio", "spliced", "25 ms lost and spliced, unmarked", "{:.0%} of 100 ms",
       (0.2, 0.5, 0.9), _spliced),
    _D("audio", "bit_errors", "bit errors on the link", "{} per bit", (0.001, 0.01, 0.05),
       _bit_errors),
    _D("audio", "crowd", "a crowd of six talkers", "SNR {:+} dB", _SNR, _crowd, near="babble"),
    _D("audio", "chopped", "a loose connector", "{} Hz", (2, 6, 15), _chopped),
)

_ABOUT = ("A probe set written in session 13 (`training/probe_fresh.py`), after the held-out "
          "set of `udml eval-unseen`: degradations in neither, scored the same way. For "
          "finding holes on validation, not for reporting. Those marked *near* share a kind of "
          "damage with a trained family or the pretext head's transforms; those near `tonal` "
          "are the machine tones whose finding led to that training family, and those near "
          "`readout` (session 14) are camera faults of the kind that family, written after "
          "this set's camera holes, draws.")


def main(ckpt: Path, out: Path | None, split: str = "val", limit: int = 500, seed: int = 0,
         cache_dir: Path = Path("data_cache")) -> dict[str, Any]:
    """Score ``ckpt`` on the first ``limit`` samples of ``split`` under every probe degradation;
    with ``out`` write ``out.json`` and ``out.md``. Returns the result."""
    torch.set_num_threads(1)
    model, meta = checkpoint.load(ckpt, torch.device("cpu"))
    data = load_data_for_checkpoint(meta, cache_dir)
    rows = data.splits[split]
    if limit:
        rows = rows.rows(np.arange(min(limit, len(rows))))
    result: dict[str, Any] = unseen_sweep(model, rows, seed, DEGRADATIONS)
    result.update({"checkpoint": str(ckpt), "method": meta["model"]["method"], "seed": seed,
                   "n_test": len(rows), "split": split})
    result["summary"] = summary(result)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        cmd = f"python -m training.probe_fresh {ckpt} --out {out}" + (
            f" --split {split}" if split != "val" else "")
        out.with_suffix(".md").write_text(
            render_markdown(result, cmd, title="Probe set", about=_ABOUT))
        log.info("wrote %s and %s", out.with_suffix(".json"), out.with_suffix(".md"))
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--split", default="val", choices=("val", "test"))
    ap.add_argument("--limit", type=int, default=500, help="first N samples (0 = all)")
    ap.add_argument("--cache-dir", type=Path, default=Path("data_cache"))
    a = ap.parse_args()
    s = main(a.checkpoint, a.out, a.split, a.limit, cache_dir=a.cache_dir)["summary"]
    print(json.dumps({k: s[k] for k in ("worst", "worst_vs_dropped")}, indent=1))
