"""Level-indexed sensor-domain degradation families for images, waveforms and MFCC frames.

Every family takes a batch ``x`` (leading axis = sample), one integer level per sample and a
``numpy.random.Generator``; it returns a new float32 array and never modifies its input.

* Level 1 (``CLEAN``) returns the sample unchanged, bit for bit.
* Levels 2..10 grow strictly in severity along the family's own axis (noise, blur, washout, ...).
* Level 11 (``PURE_NOISE``) is the family's own information-free endpoint: uniform noise, a flat
  frame, a black frame, an all-NaN window, the microphone's self-noise alone, ... Its severity is
  at least that of level 10.

Audio conventions: NaN in a waveform is a missing sample (no measurement). Every audio family
keeps the input's NaN positions NaN and ``gap`` adds new ones; all statistics are NaN-aware. SNRs
are measured against the clean speech's *active* power (``active_power``), which callers pass as
``ref_power`` when the window already holds background noise.

The formulas are documented in ``docs/corruption.md``; change both together.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import cv2
import numpy as np
from scipy import signal

from udml_stream.errors import UdmlError

CLEAN = 1
PURE_NOISE = 11
LEVELS = tuple(range(CLEAN, PURE_NOISE + 1))

SAMPLE_RATE = 16000
#: Every family per modality, in a fixed order (the order of docs/corruption.md's table).
FAMILIES: dict[str, tuple[str, ...]] = {
    "image": ("gaussian", "blur", "motion", "occlusion", "covered", "glare", "saltpepper",
              "warp", "lowres", "readout"),
    "audio": ("gaussian", "babble", "interference", "gap", "clipping", "muffle", "attenuation",
              "tonal"),
    "mfcc": ("gaussian", "dropout", "burst"),
}
#: Corruption kind the training loop injects (the estimator learns its level): the benchmark's
#: training kind, so trained checkpoints and the published results stay comparable.
TRAIN_KINDS: dict[str, str] = {"image": "gaussian", "audio": "gaussian", "mfcc": "gaussian"}
#: Kinds training never sees, used only by evaluation: every family except the training one.
EVAL_KINDS: dict[str, tuple[str, ...]] = {
    m: tuple(f for f in fams if f != TRAIN_KINDS[m]) for m, fams in FAMILIES.items()
}

#: Sensor read noise of the camera families that model the exposure chain, in 0..255 units.
READ_NOISE_STD = 2.0
#: Microphone self-noise floor: white noise at −70 dBFS RMS (RMS relative to full scale 1.0).
MIC_FLOOR_DBFS = -70.0
#: Floor returned by ``active_power`` for a window without energy (silence or all missing).
POWER_FLOOR = 1e-10
#: A family on one sample: (sample, level 2..11, rng, reference power) -> new sample.
_Fn = Callable[[np.ndarray, int, np.random.Generator, float], np.ndarray]
_FRAME = 320  # 20 ms at 16 kHz: the frame of active_power
_ACTIVE_DB = 30.0  # frames within this many dB of the loudest count as active speech
_GAP_SEG = 800  # 50 ms at 16 kHz: the unit the gap family drops
_L11_SNR_DB = -15.0  # the noise families' level-11 power relative to ref_power

# ---- level → severity maps (documented in docs/corruption.md; change both together) ----


def image_noise_std(level: int) -> float:
    """Gaussian pixel-noise std in 0..255 units: 10·1.4^(L−2) for L = 2..10 (10 … 148)."""
    return 0.0 if level <= CLEAN else 10.0 * 1.4 ** (level - 2)


def blur_sigma(level: int, size: int) -> float:
    """Gaussian defocus sigma in pixels: 0.015·(L−1)·min(H, W) (0.42 … 3.8 px at 28 px)."""
    return 0.0 if level <= CLEAN else 0.015 * (level - 1) * size


def motion_length(level: int, size: int) -> float:
    """Motion-blur streak length in pixels: 0.05·(L−1)·min(H, W) (1.4 … 12.6 px at 28 px)."""
    return 0.0 if level <= CLEAN else 0.05 * (level - 1) * size


def occlusion_fraction(level: int) -> float:
    """Share of the frame under the dark rectangle: 0.1·(L−1) (0.1 … 0.9)."""
    return 0.0 if level <= CLEAN else 0.1 * (level - 1)


def covered_gain(level: int) -> float:
    """Brightness gain of a covered lens: 10^(−4·(L−1)/20), −4 dB per level (0.63 … 0.016)."""
    return 1.0 if level <= CLEAN else 10.0 ** (-4.0 * (level - 1) / 20.0)


def glare_amount(level: int) -> float:
    """Washout a(L) = 1 − 0.05^((L−1)/9): the remaining contrast 1 − a falls geometrically
    from 1 to 0.05 at L10 (a = 0.28 at L2, 0.95 at L10)."""
    return 0.0 if level <= CLEAN else 1.0 - 0.05 ** ((level - 1) / 9.0)


def saltpepper_fraction(level: int) -> float:
    """Share of pixels replaced by a dead (0) or hot (255) value: 0.09·(L−1) (0.09 … 0.81)."""
    return 0.0 if level <= CLEAN else 0.09 * (level - 1)


def warp_params(level: int, size: int) -> tuple[float, float]:
    """Tilt bound in degrees, 6·(L−1) (6 … 54°), and RMS of the smooth displacement field in
    pixels, 0.3·(L−1)·min(H, W)/28 (0.3 … 2.7 px at 28 px)."""
    if level <= CLEAN:
        return 0.0, 0.0
    return 6.0 * (level - 1), 0.3 * (level - 1) * size / 28.0


def lowres_share(level: int) -> float:
    """Side of a low-resolution mode's frame relative to the full frame: 0.8^(L−1) (0.8 …
    0.13; 22 … 4 px for a 28 px frame)."""
    return 1.0 if level <= CLEAN else 0.8 ** (level - 1)


def readout_share(level: int) -> float:
    """Share of the frame's lines or blocks a read-out fault damages: 0.1·(L−1) (0.1 … 0.9)."""
    return 0.0 if level <= CLEAN else 0.1 * (level - 1)


def audio_snr_db(level: int) -> float:
    """SNR in dB against the clean speech's active power: 30 − 5·(L−2) (30 dB … −10 dB)."""
    return float("inf") if level <= CLEAN else 30.0 - 5.0 * (level - 2)


def gap_fraction(level: int) -> float:
    """Share of the window dropped (NaN), in 1-3 runs of 50 ms segments: 0.1·(L−1) (0.1 … 0.9;
    1 at L11)."""
    return 0.0 if level <= CLEAN else 0.1 * (level - 1)


def clip_threshold_db(level: int) -> float:
    """Clipping threshold relative to the window's peak in dB: −4·(L−1) (−4 … −36 dB)."""
    return 0.0 if level <= CLEAN else -4.0 * (level - 1)


def muffle_cutoff_hz(level: int) -> float:
    """Low-pass cutoff in Hz, geometric from 6 kHz at L2 to 150 Hz at L10:
    6000·(150/6000)^((L−2)/8) (×0.63 per level)."""
    return float("inf") if level <= CLEAN else 6000.0 * (150.0 / 6000.0) ** ((level - 2) / 8.0)


def attenuation_db(level: int) -> float:
    """Speech gain in dB as the talker moves away: −6·(L−1) (−6 … −54 dB)."""
    return 0.0 if level <= CLEAN else -6.0 * (level - 1)


def mfcc_noise_std(level: int) -> float:
    """Noise std on z-scored MFCC frames: 0.15·1.4^(L−2) for L = 2..10 (0.15 … 2.2)."""
    return 0.0 if level <= CLEAN else 0.15 * 1.4 ** (level - 2)


def fraction(level: int) -> float:
    """Share of MFCC frames hit (dropped pairs, burst length): 0.08·(L−1)."""
    return 0.0 if level <= CLEAN else 0.08 * (level - 1)


# One line per family: (severity at level L as text, the level-11 endpoint). Drives the docs table.
_DESCRIBE: dict[str, dict[str, tuple[Callable[[int], str], str]]] = {
    "image": {
        "gaussian": (lambda lv: f"std {image_noise_std(lv):.1f}", "uniform noise 0..255"),
        "blur": (lambda lv: f"σ {blur_sigma(lv, 28):.2f} px @28", "frame mean everywhere"),
        "motion": (lambda lv: f"{motion_length(lv, 28):.1f} px @28", "frame mean everywhere"),
        "occlusion": (lambda lv: f"area {occlusion_fraction(lv):.1f}", "whole frame 0"),
        "covered": (lambda lv: f"gain {covered_gain(lv):.3f}", "exactly 0 (black)"),
        "glare": (lambda lv: f"a {glare_amount(lv):.2f}", "all 255"),
        "saltpepper": (lambda lv: f"{saltpepper_fraction(lv):.2f} of pixels",
                       "every pixel 0 or 255"),
        "warp": (lambda lv: "tilt ≤{:.0f}°, {:.1f} px @28".format(*warp_params(lv, 28)),
                 "pixels scrambled"),
        "lowres": (lambda lv: f"{round(28 * lowres_share(lv))} px @28", "frame mean everywhere"),
        "readout": (lambda lv: f"{readout_share(lv):.1f} of lines or blocks",
                    "uniform 0..255 at every pixel site"),
    },
    "audio": {
        "gaussian": (lambda lv: f"SNR {audio_snr_db(lv):+.0f} dB", "white noise at ref·10^1.5"),
        "babble": (lambda lv: f"SNR {audio_snr_db(lv):+.0f} dB", "babble at ref·10^1.5"),
        "interference": (lambda lv: f"SNR {audio_snr_db(lv):+.0f} dB",
                         "hum + whistle at ref·10^1.5"),
        "gap": (lambda lv: f"{gap_fraction(lv):.1f} NaN", "all NaN"),
        "clipping": (lambda lv: f"thr {clip_threshold_db(lv):+.0f} dB", "clipped white noise"),
        "muffle": (lambda lv: f"fc {muffle_cutoff_hz(lv):.0f} Hz", "mic floor only"),
        "attenuation": (lambda lv: f"gain {attenuation_db(lv):+.0f} dB", "mic floor only"),
        "tonal": (lambda lv: f"SNR {audio_snr_db(lv):+.0f} dB", "machine tones at ref·10^1.5"),
    },
    "mfcc": {
        "gaussian": (lambda lv: f"std {mfcc_noise_std(lv):.2f}", "N(0, 1) frames"),
        "dropout": (lambda lv: f"{fraction(lv):.2f} of frames 0", "N(0, 1) frames"),
        "burst": (lambda lv: f"{fraction(lv):.2f} burst", "N(0, 1) frames"),
    },
}


def severity_table() -> list[dict[str, int | str]]:
    """Rows of the documented level → severity map, one per level 1..11 (for docs and reports).

    Each row has ``"level"`` and one ``"<modality>/<family>"`` entry per family: the family's
    severity parameter at that level as text, or its information-free endpoint at level 11.
    """
    rows: list[dict[str, int | str]] = []
    for lv in LEVELS:
        row: dict[str, int | str] = {"level": lv}
        for m, fams in _DESCRIBE.items():
            for f, (text, endpoint) in fams.items():
                row[f"{m}/{f}"] = "clean" if lv == CLEAN else endpoint if lv == PURE_NOISE \
                    else text(lv)
        rows.append(row)
    return rows


# ---- audio helpers ----


def active_power(x: np.ndarray) -> np.ndarray:
    """Active speech power of each waveform in ``x`` (``[..., N]`` → ``[...]``), float64.

    The window is cut into 20 ms frames; a frame's energy is the mean square of its measured
    (non-NaN) samples; the power is the mean energy of the frames within 30 dB of the loudest
    one, so digital-silence padding and pauses do not dilute it. A window without energy (silent
    or all missing) gets ``POWER_FLOOR``.
    """
    a = np.asarray(x, dtype=np.float64)
    n = a.shape[-1]
    n_frames = max(1, -(-n // _FRAME))
    pad = n_frames * _FRAME - n
    # NaN padding: the short last frame counts only its real samples.
    a = np.concatenate([a, np.full((*a.shape[:-1], pad), np.nan)], axis=-1) if pad else a
    frames = a.reshape(*a.shape[:-1], n_frames, _FRAME)
    ok = np.isfinite(frames)
    count = ok.sum(axis=-1)
    sq_sum = (np.where(ok, frames, 0.0) ** 2).sum(axis=-1)
    energy = np.where(count > 0, sq_sum / np.maximum(count, 1), -np.inf)
    loudest = energy.max(axis=-1, keepdims=True)
    active = (count > 0) & (energy >= loudest * 10.0 ** (-_ACTIVE_DB / 10.0)) & (loudest > 0)
    n_active = active.sum(axis=-1)
    power = np.where(active, energy, 0.0).sum(axis=-1) / np.maximum(n_active, 1)
    return np.where(n_active > 0, np.maximum(power, POWER_FLOOR), POWER_FLOOR)


def _keep_nan(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out`` with the missing samples of ``x`` missing again (a replacement never invents
    a measurement where there was none)."""
    return np.where(np.isnan(x), np.float32(np.nan), out).astype(np.float32)


def _mix(x: np.ndarray, noise: np.ndarray, level: int, ref: float) -> np.ndarray:
    """Add ``noise`` at the level's SNR against ``ref`` (L2..10) or replace ``x`` by it at
    ``ref``·10^1.5 (L11). The noise is scaled by its own empirical power over the window, so the
    realised SNR is exact."""
    p_noise = float(np.mean(noise.astype(np.float64) ** 2)) or 1.0
    snr = _L11_SNR_DB if level == PURE_NOISE else audio_snr_db(level)
    scaled = (noise * np.sqrt(ref * 10.0 ** (-snr / 10.0) / p_noise)).astype(np.float32)
    return _keep_nan(x, scaled) if level == PURE_NOISE else x + scaled  # NaN + n stays NaN


def _mic_floor(n: int, rng: np.random.Generator) -> np.ndarray:
    return (10.0 ** (MIC_FLOOR_DBFS / 20.0) * rng.standard_normal(n)).astype(np.float32)


def babble_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Speech-shaped pink noise under a random syllabic envelope: one interfering talker."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    # Pink (power ∝ 1/f) between ~60 Hz and ~4 kHz, the band where speech energy lives.
    shape = np.where(f >= 60.0, 1.0 / np.sqrt(np.maximum(f, 100.0)), 0.0)
    shape /= np.sqrt(1.0 + (f / 4000.0) ** 4)
    pink = np.fft.irfft(spec * shape, n)
    # Envelope: alternating syllable peaks (0.6..1) and pauses (0.05..0.25) every half period of
    # a 3–6 Hz syllable rate, joined by half-cosine ramps so it is smooth.
    rate = rng.uniform(3.0, 6.0)
    step = 0.5 / rate
    t = np.arange(n) / SAMPLE_RATE - rng.uniform(0.0, step)
    pos = (t + step) / step  # ≥ 0 everywhere
    n_knots = int(pos.max()) + 2
    knots = np.where(np.arange(n_knots) % 2 == 0, rng.uniform(0.6, 1.0, n_knots),
                     rng.uniform(0.05, 0.25, n_knots))
    k = pos.astype(np.int64)
    w = (1.0 - np.cos(np.pi * (pos - k))) / 2.0
    env = knots[k] + (knots[k + 1] - knots[k]) * w
    return (pink * env).astype(np.float32)


def _interference_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Mains-like hum (random f0 80–300 Hz, 5 harmonics at 1/k) plus a chirping whistle."""
    t = np.arange(n) / SAMPLE_RATE
    f0 = rng.uniform(80.0, 300.0)
    hum = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 6))
    f1 = rng.uniform(600.0, 3000.0)
    whistle = np.sin(2 * np.pi * (f1 * t + 200.0 * t**2))  # rises 400 Hz per second
    return (hum + 0.5 * whistle).astype(np.float32)


#: ``tonal``: the kinds of machine sound a robot carries or meets, one drawn per window.
TONAL_SOURCES = ("sweep", "whine", "siren", "beeper")


def _tonal_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """A machine's tonal sound: one of ``TONAL_SOURCES`` drawn per window, on a third of the
    windows with a second one over it.

    ``interference``'s whistle rises 400 Hz/s; a motor spinning up, a siren or a reversing
    beeper moves faster or switches on and off, and the session-13 probe found the estimator
    blind to those (σ̂ below clean on every sample of a 300 → 3,300 Hz sweep at +10 dB).
    Frequencies are drawn log-uniform: a tone is as likely in any octave of the speech band.
    """
    t = np.arange(n) / SAMPLE_RATE
    dur = n / SAMPLE_RATE

    def loguni(lo: float, hi: float) -> float:
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))

    def tone(inst_phase: np.ndarray) -> np.ndarray:
        return np.sin(2 * np.pi * inst_phase + rng.uniform(0, 2 * np.pi))

    def one() -> np.ndarray:
        kind = TONAL_SOURCES[int(rng.integers(0, len(TONAL_SOURCES)))]
        if kind == "sweep":  # a linear sweep between two frequencies across the window
            fa, fb = loguni(150.0, 6000.0), loguni(150.0, 6000.0)
            return tone(fa * t + (fb - fa) * t**2 / (2 * dur))
        if kind == "whine":  # a motor: a harmonic stack whose fundamental drifts
            f0, drift = loguni(80.0, 1000.0), rng.uniform(-1500.0, 1500.0)
            # The fundamental stays within 40 Hz .. 4 kHz however long the window (at 1 s the
            # upper bound never binds), so the stack always keeps its first harmonic.
            drift = min(max(drift, (40.0 - f0) / dur), (4000.0 - f0) / dur)
            phase = f0 * t + drift * t**2 / 2
            top = f0 + max(0.0, drift * dur)
            stack = np.zeros(n)
            for k in range(1, int(rng.integers(2, 9))):
                if k * top < 7500.0:
                    stack = stack + tone(k * phase) / k
            return stack
        if kind == "siren":  # a slow frequency modulation about a centre
            fc, rate = loguni(400.0, 2500.0), rng.uniform(0.3, 4.0)
            depth = rng.uniform(0.1, 0.5) * fc
            return tone(fc * t - depth / (2 * np.pi * rate)
                        * np.cos(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)))
        # beeper: a steady tone switched on and off, 5 ms ramps so each edge is not a click;
        # a period no longer than the window, so a short window still holds a beep
        period, duty = rng.uniform(0.1, 1.0) * min(1.0, dur), rng.uniform(0.2, 0.7)
        on = ((t + rng.uniform(0, period)) % period) < duty * period
        ramp = max(1, int(0.005 * SAMPLE_RATE))
        gate = np.convolve(on.astype(np.float64), np.ones(ramp) / ramp, mode="same")
        return tone(loguni(400.0, 4000.0) * t) * gate

    out = one()
    if rng.random() < 1.0 / 3.0:
        out = out + rng.uniform(0.3, 1.0) * one()
    return out.astype(np.float32)


@functools.lru_cache(maxsize=16)
def _lowpass_sos(cutoff_hz: float) -> np.ndarray:
    return signal.butter(4, cutoff_hz, btype="lowpass", fs=SAMPLE_RATE, output="sos")


def _nan_peak(x: np.ndarray) -> float:
    finite = x[np.isfinite(x)]
    return float(np.abs(finite).max()) if finite.size else 0.0


# ---- image families: (sample [H, W] or [H, W, C], level 2..11, rng) -> sample ----


def _frame_mean(x: np.ndarray) -> np.ndarray:
    """Each channel's mean everywhere: what an infinitely defocused or smeared lens shows."""
    return np.broadcast_to(x.mean(axis=(0, 1), keepdims=True), x.shape).astype(np.float32)


def _sensor(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Read noise and 8-bit quantisation of the camera: the floor a faint or washed-out scene
    sinks into, so contrast lost to the exposure is information lost."""
    noisy = x + rng.normal(0.0, READ_NOISE_STD, size=x.shape)
    return np.rint(np.clip(noisy, 0.0, 255.0))


def _image_gaussian(x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    if level == PURE_NOISE:
        return rng.uniform(0.0, 255.0, size=x.shape)
    return np.clip(x + rng.normal(0.0, image_noise_std(level), size=x.shape), 0.0, 255.0)


def _image_blur(x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    if level == PURE_NOISE:
        return _frame_mean(x)
    sigma = blur_sigma(level, min(x.shape[:2]))
    return cv2.GaussianBlur(x, (0, 0), sigmaX=sigma, sigmaY=sigma,
                            borderType=cv2.BORDER_REFLECT)


def _motion_kernel(length: float, angle: float) -> np.ndarray:
    """A normalised line of ``length`` pixels through the kernel's centre at ``angle``, drawn
    with bilinear weights so sub-pixel lengths (low levels) still blur a little."""
    size = 2 * (int(np.ceil(length / 2.0)) + 1) + 1
    c = (size - 1) / 2.0
    s = np.linspace(-length / 2.0, length / 2.0, max(32, 8 * int(np.ceil(length))))
    px, py = c + s * np.cos(angle), c + s * np.sin(angle)
    x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
    fx, fy = px - x0, py - y0
    k = np.zeros((size, size), np.float64)
    for dy, dx, wgt in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)),
                        (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(k, (y0 + dy, x0 + dx), wgt)
    return (k / k.sum()).astype(np.float32)


def _image_motion(x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    if level == PURE_NOISE:
        return _frame_mean(x)
    kernel = _motion_kernel(motion_length(level, min(x.shape[:2])), rng.uniform(0.0, np.pi))
    return cv2.filter2D(x, -1, kernel, borderType=cv2.BORDER_REFLECT)


def _image_occlusion(x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    if level == PURE_NOISE:
        return np.zeros_like(x)
    h, w = x.shape[:2]
    area = occlusion_fraction(level)
    # Height from a random aspect ratio, kept in [area·h, h] so that the width fits too and the
    # rectangle really covers the level's area.
    oh = round(np.clip(np.sqrt(area * h * w * rng.uniform(0.6, 1.6)), area * h, h))
    oh = max(1, oh)
    ow = min(w, max(1, round(area * h * w / oh)))
    top = int(rng.integers(0, h - oh + 1))
    left = int(rng.integers(0, w - ow + 1))
    out = x.copy()
    out[top : top + oh, left : left + ow] = 0.0  # a dark object in front of the lens
    return out


def _image_covered(x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    if level == PURE_NOISE:
        return np.zeros_like(x)  # lens cap on: no light, and a black frame reads exactly 0
    return _sensor(x * covered_gain(level), rng)


def _image_glare(x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    if level == PURE_NOISE:
        return np.full_like(x, 255.0)  # saturated everywhere
    return _sensor(x + (255.0 - x) * glare_amount(level), rng)


def _image_saltpepper(x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    p = 1.0 if level == PURE_NOISE else saltpepper_fraction(level)
    # Per pixel site (all channels together): a dead or hot photosite reads black or white.
    hit = rng.random((h, w)) < p
    value = np.where(rng.random((h, w)) < 0.5, 0.0, 255.0)
    if x.ndim == 3:
        hit, value = hit[..., None], value[..., None]
    return np.where(hit, value, x)


def _image_warp(x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    if level == PURE_NOISE:
        # A scrambled frame buffer: every pixel of the frame, none where it belongs.
        flat = x.reshape(h * w, -1)
        return flat[rng.permutation(h * w)].reshape(x.shape)
    tilt, rms = warp_params(level, min(h, w))
    # A tilted camera and a wobbling, distorting view (loose mount, a warped protective window,
    # heat shimmer): a random rotation within ±tilt, then a smooth random displacement field
    # (correlation length about a quarter of the frame) scaled to the level's RMS.
    angle = rng.uniform(-tilt, tilt)
    rot = cv2.getRotationMatrix2D((w / 2.0 - 0.5, h / 2.0 - 0.5), angle, 1.0)
    smooth = max(1.0, min(h, w) / 4.0)
    field = [cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), smooth)
             for _ in range(2)]
    scale = rms / max(1e-6, float(np.sqrt(np.mean(field[0] ** 2 + field[1] ** 2))))
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    # The displacement is applied after the rotation: sample the rotated frame at the displaced
    # grid, both in one remap (the inverse rotation maps output to input coordinates).
    dx, dy = gx + scale * field[0], gy + scale * field[1]
    inv = cv2.invertAffineTransform(rot)
    map_x = (inv[0, 0] * dx + inv[0, 1] * dy + inv[0, 2]).astype(np.float32)
    map_y = (inv[1, 0] * dx + inv[1, 1] * dy + inv[1, 2]).astype(np.float32)
    # Replicated border: a tilted camera still sees the scene's background, not black corners.
    return cv2.remap(np.ascontiguousarray(x, np.float32), map_x, map_y, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE).reshape(x.shape)


def _image_lowres(x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    if level == PURE_NOISE:
        return _frame_mean(x)
    h, w = x.shape[:2]
    r = lowres_share(level)
    sw, sh = max(1, round(w * r)), max(1, round(h * r))
    # A low-resolution mode (binning, a digital zoom): area-averaged down, bilinear back up.
    # The coarse grid lies wherever the scene happens to fall on it: a random sub-cell offset
    # (replicated border), so the loss does not depend on the frame's alignment with it.
    ox, oy = rng.uniform(0.0, w / sw), rng.uniform(0.0, h / sh)
    shift = np.float32([[1, 0, -ox], [0, 1, -oy]])
    src = np.ascontiguousarray(x, np.float32)
    moved = cv2.warpAffine(src, shift, (w, h), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
    small = cv2.resize(moved, (sw, sh), interpolation=cv2.INTER_AREA)
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    back = cv2.warpAffine(big, shift, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)
    return back.reshape(x.shape)


#: ``readout``: the kinds of fault in a camera's read-out and link, one drawn per frame.
READOUT_FAULTS = ("stuck_lines", "noisy_lines", "bands", "lost_blocks")


def _exact_runs(n: int, k: int, unit: int, rng: np.random.Generator) -> np.ndarray:
    """A mask over ``n`` lines with exactly ``k`` set: runs of 1–3 ``unit`` lines at random
    places (a failing read-out channel takes out neighbouring lines together; runs may overlap
    and merge), then the surplus over ``k`` given back at random set lines, which can split a
    run. At the model's 28 px ``unit`` is one line; on a full camera frame many runs end up in
    pieces (kept so: the shipped checkpoint was trained on exactly these draws)."""
    hit = np.zeros(n, bool)
    while hit.sum() < k:
        start = int(rng.integers(0, n))
        hit[start : start + int(rng.integers(1, 4)) * unit] = True
    extra = np.flatnonzero(hit)
    if extra.size > k:  # the runs overshot: give back lines at random, from any run
        hit[rng.choice(extra, extra.size - k, replace=False)] = False
    return hit


def _readout_damage(h: int, w: int, share: float,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Where a read-out fault hits a ``h``×``w`` frame and what it reads there instead: a mask
    over round(``share``·n) of the n rows, columns or blocks (blocks at the right and bottom
    edges may be cut short) and the values it shows, with no trace of the scene (the kind is
    one of ``READOUT_FAULTS``, drawn here)."""
    kind = READOUT_FAULTS[int(rng.integers(0, len(READOUT_FAULTS)))]
    fill = np.zeros((h, w), np.float64)
    if kind == "lost_blocks":
        # A lost packet of a compressed stream: whole macroblocks the decoder fills with a flat
        # grey or a smeared ramp (its concealment), about a seventh of the frame's side each.
        side = max(2, round(min(h, w) / 7.0))
        gh, gw = -(-h // side), -(-w // side)
        chosen = rng.permutation(gh * gw)[: round(share * gh * gw)]
        cells = np.zeros(gh * gw, bool)
        cells[chosen] = True
        mask = np.kron(cells.reshape(gh, gw), np.ones((side, side), bool))[:h, :w]
        for c in chosen:
            r0, c0 = (c // gw) * side, (c % gw) * side
            block = fill[r0 : r0 + side, c0 : c0 + side]
            lo, hi = rng.uniform(0.0, 255.0, 2)
            ramp = np.linspace(lo, hi, block.shape[1]) if rng.random() < 0.5 else np.full(
                block.shape[1], lo)
            block[:] = ramp[None, :]
        return mask, fill
    rows = bool(rng.integers(0, 2))
    n, m = (h, w) if rows else (w, h)
    k = round(share * n)
    if kind == "bands":
        # Flicker or banding gone to saturation: periodic bands (1.5–6 per frame) read out
        # white (or black); the band's lines are those where the wave is highest, exactly
        # ``k`` of them.
        wave = np.sin(2 * np.pi * (np.arange(n) / n * rng.uniform(1.5, 6.0) + rng.uniform(0, 1)))
        hit = np.zeros(n, bool)
        hit[np.argsort(-wave, kind="stable")[:k]] = True
        line_fill = np.full((n, m), 255.0 if rng.random() < 0.7 else 0.0)
    else:
        hit = _exact_runs(n, k, max(1, n // 28), rng)
        if kind == "stuck_lines":  # each dead or stuck line reads one value: 0, 255 or a grey
            value = rng.choice([0.0, 255.0, -1.0], size=n)
            value = np.where(value < 0, rng.uniform(0.0, 255.0, n), value)
            line_fill = np.broadcast_to(value[:, None], (n, m))
        else:  # noisy_lines: lines whose transfer failed, read out as uniform garbage
            line_fill = rng.uniform(0.0, 255.0, (n, m))
    # Broadcast views, transposed for columns: ``np.where`` reads them as they are.
    mask = np.broadcast_to(hit[:, None], (n, m))
    return (mask, line_fill) if rows else (mask.T, line_fill.T)


def _image_readout(x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    if level == PURE_NOISE:
        # Nothing read out but garbage: uniform values at every pixel site (a stuck or striped
        # frame would also be free of the scene, but a few dozen random line values can
        # correlate with it by chance).
        fill = rng.uniform(0.0, 255.0, (h, w))
        return np.broadcast_to(fill[..., None] if x.ndim == 3 else fill, x.shape).copy()
    mask, fill = _readout_damage(h, w, readout_share(level), rng)
    if x.ndim == 3:  # a pixel site reads one value on every channel
        mask, fill = mask[..., None], fill[..., None]
    return np.where(mask, fill.astype(np.float32), x)


# ---- audio families: (sample [N], level 2..11, rng, ref power) -> sample ----


def _audio_gaussian(x: np.ndarray, level: int, rng: np.random.Generator, ref: float) -> np.ndarray:
    # float32 draws: waveform noise is the largest random draw of a training batch.
    return _mix(x, rng.standard_normal(x.shape, dtype=np.float32), level, ref)


def _audio_babble(x: np.ndarray, level: int, rng: np.random.Generator, ref: float) -> np.ndarray:
    return _mix(x, babble_noise(x.shape[0], rng), level, ref)


def _audio_interference(
    x: np.ndarray, level: int, rng: np.random.Generator, ref: float
) -> np.ndarray:
    return _mix(x, _interference_noise(x.shape[0], rng), level, ref)


def _audio_tonal(x: np.ndarray, level: int, rng: np.random.Generator, ref: float) -> np.ndarray:
    return _mix(x, _tonal_noise(x.shape[0], rng), level, ref)


def _audio_gap(x: np.ndarray, level: int, rng: np.random.Generator, ref: float) -> np.ndarray:
    out = x.copy()
    if level == PURE_NOISE:
        out[:] = np.nan
        return out
    n = x.shape[0]
    n_seg = max(1, n // _GAP_SEG)
    k = round(gap_fraction(level) * n_seg)
    # Real dropouts come in runs (a buffer underrun, a USB reconnect): the k missing 50 ms
    # segments form 1 to 3 contiguous runs at random places, not k scattered crumbs.
    runs = min(k, int(rng.integers(1, 4)))
    if runs:
        cuts = np.sort(rng.choice(np.arange(1, k), size=runs - 1, replace=False)) if runs > 1 \
            else np.array([], dtype=np.int64)
        lengths = np.diff(np.concatenate([[0], cuts, [k]]))
        # Place the runs left to right with random spacing in the segments left over.
        spare = n_seg - k
        gaps = np.diff(np.concatenate([[0], np.sort(rng.integers(0, spare + 1, runs))]))
        pos = 0
        for length, skip in zip(lengths, gaps, strict=True):
            pos += int(skip)
            out[pos * _GAP_SEG : (pos + int(length)) * _GAP_SEG] = np.nan  # missing, not silent
            pos += int(length)
    return out


def _audio_clipping(x: np.ndarray, level: int, rng: np.random.Generator, ref: float) -> np.ndarray:
    peak = _nan_peak(x)
    if peak <= 0.0:
        return x.copy()  # nothing to overdrive: silence stays silence
    if level == PURE_NOISE:
        # No speech left: white noise at the speech's peak, driven through the same chain.
        src = _keep_nan(x, peak * rng.standard_normal(x.shape, dtype=np.float32))
        thr = peak * 10.0 ** (-4.0 * (PURE_NOISE - 1) / 20.0)
    else:
        src, thr = x, peak * 10.0 ** (clip_threshold_db(level) / 20.0)
    return (np.clip(src, -thr, thr) * (peak / thr)).astype(np.float32)  # NaN stays NaN


def _audio_muffle(x: np.ndarray, level: int, rng: np.random.Generator, ref: float) -> np.ndarray:
    floor = _mic_floor(x.shape[0], rng)
    if level == PURE_NOISE:
        return _keep_nan(x, floor)
    # Zero phase (forward and backward): a covering hand takes the high band away, it does not
    # delay the speech. An IIR filter would smear one NaN over the whole window, so missing
    # samples are filtered as 0 and marked missing again.
    low = signal.sosfiltfilt(_lowpass_sos(muffle_cutoff_hz(level)), np.where(np.isnan(x), 0.0, x))
    return _keep_nan(x, low + floor)


def _audio_attenuation(
    x: np.ndarray, level: int, rng: np.random.Generator, ref: float
) -> np.ndarray:
    floor = _mic_floor(x.shape[0], rng)
    if level == PURE_NOISE:
        return _keep_nan(x, floor)
    return x * np.float32(10.0 ** (attenuation_db(level) / 20.0)) + floor


# ---- MFCC kinds (the real track's features; unchanged) ----


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


def _mfcc_pure(fn: Callable[[np.ndarray, int, np.random.Generator], np.ndarray]) -> _Fn:
    """Level 11 of every MFCC kind: standard normal frames (the z-scored features' prior)."""

    def wrapped(x: np.ndarray, level: int, rng: np.random.Generator, ref: float) -> np.ndarray:
        if level == PURE_NOISE:
            return rng.normal(0.0, 1.0, size=x.shape)
        return fn(x, level, rng)

    return wrapped


def _no_ref(fn: Callable[[np.ndarray, int, np.random.Generator], np.ndarray]) -> _Fn:
    return lambda x, level, rng, ref: fn(x, level, rng)


_KINDS: dict[str, dict[str, _Fn]] = {
    "image": {
        "gaussian": _no_ref(_image_gaussian),
        "blur": _no_ref(_image_blur),
        "motion": _no_ref(_image_motion),
        "occlusion": _no_ref(_image_occlusion),
        "covered": _no_ref(_image_covered),
        "glare": _no_ref(_image_glare),
        "saltpepper": _no_ref(_image_saltpepper),
        "warp": _no_ref(_image_warp),
        "lowres": _no_ref(_image_lowres),
        "readout": _no_ref(_image_readout),
    },
    "audio": {
        "gaussian": _audio_gaussian,
        "babble": _audio_babble,
        "interference": _audio_interference,
        "gap": _audio_gap,
        "clipping": _audio_clipping,
        "muffle": _audio_muffle,
        "attenuation": _audio_attenuation,
        "tonal": _audio_tonal,
    },
    "mfcc": {
        "gaussian": _mfcc_pure(_mfcc_gaussian),
        "dropout": _mfcc_pure(_mfcc_dropout),
        "burst": _mfcc_pure(_mfcc_burst),
    },
}


def families(modality: str) -> tuple[str, ...]:
    """Every degradation family of ``modality``, in the documented order of ``FAMILIES``."""
    if modality not in FAMILIES:
        raise UdmlError(f"unknown modality {modality!r}; expected one of {sorted(FAMILIES)}")
    return FAMILIES[modality]


def kinds_for(modality: str) -> tuple[str, ...]:
    """Names of the corruption kinds defined for ``modality`` (the same as ``families``)."""
    return families(modality)


def apply(
    modality: str,
    kind: str,
    x: np.ndarray,
    levels: np.ndarray | int,
    rng: np.random.Generator,
    ref_power: np.ndarray | float | None = None,
) -> np.ndarray:
    """Corrupt a batch ``x`` of ``modality`` samples with family ``kind`` at one level per sample.

    Args:
        modality: ``"image"`` (pixels 0..255, ``[B, H, W]`` or ``[B, H, W, C]``), ``"audio"``
            (16 kHz waveform in [-1, 1], ``[B, N]``, NaN = missing sample) or ``"mfcc"``
            (z-scored frames, ``[B, T, C]``).
        kind: one of ``families(modality)``.
        levels: an int for the whole batch or an int array of shape ``[B]`` in 1..11.
        rng: the seeded generator every random draw comes from (samples are drawn in order).
        ref_power: audio only: per-sample power (``[B]`` or a scalar) the SNRs refer to; pass
            ``active_power`` of the clean speech when ``x`` already holds background noise.
            ``None`` computes ``active_power(x)``.

    Returns:
        A new float32 array of the same shape; level-1 samples are bit-identical to ``x``.
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
    todo = np.flatnonzero(lv > CLEAN)
    if modality == "audio" and todo.size:
        ref = active_power(out) if ref_power is None else np.broadcast_to(
            np.asarray(ref_power, dtype=np.float64), (x.shape[0],))
        # A missing, zero or negative reference means "no speech": the power floor.
        ref = np.where(np.isfinite(ref) & (ref > 0), ref, POWER_FLOOR)
    else:
        ref = np.zeros(x.shape[0])
    fn = fns[kind]
    for i in todo:
        out[i] = fn(out[i], int(lv[i]), rng, float(ref[i]))
    return out
