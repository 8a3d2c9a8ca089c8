"""The corruption library: every family is identity at level 1, deterministic per seed, monotone
in severity over levels 2..11, information-free at level 11, and keeps missing samples NaN."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
from scipy import signal

from udml_stream import corrupt
from udml_stream.corrupt import core
from udml_stream.errors import UdmlError

ALL = [(m, f) for m in ("image", "audio", "mfcc") for f in corrupt.families(m)]
NOISE_FAMILIES = ("gaussian", "babble", "interference", "tonal")
SEG = 800  # the gap family's 50 ms segment


def _image() -> np.ndarray:
    """A textured frame (30..190 everywhere, so every family hits content) with a bright bar."""
    rng = np.random.default_rng(3)
    tex = cv2.GaussianBlur(rng.uniform(0, 255, (28, 28)).astype(np.float32), (0, 0), 2.0)
    tex = 30.0 + 160.0 * (tex - tex.min()) / (tex.max() - tex.min())
    tex[6:22, 12:16] = 250.0
    return tex[None].astype(np.float32)


def _speech(peak_dbfs: float = -20.0, n: int = 16000) -> np.ndarray:
    """A speech-like word: pink-tilted 100 Hz–7 kHz noise under a 4 Hz syllabic envelope in
    0.25..0.75 s, digital silence around it, peak at ``peak_dbfs``. ``[1, n]``."""
    rng = np.random.default_rng(987)
    f = np.fft.rfftfreq(n, 1 / 16000)
    spec = np.fft.rfft(rng.standard_normal(n))
    spec *= np.where((f > 100) & (f < 7000), 1 / np.sqrt(np.maximum(f, 100)), 0)
    t = np.arange(n) / 16000
    v = np.fft.irfft(spec, n) * np.clip(np.sin(2 * np.pi * 4 * t), 0, None)
    v *= (t > 0.25) & (t < 0.75)
    return (v / np.abs(v).max() * 10 ** (peak_dbfs / 20))[None].astype(np.float32)


def _sample(modality: str) -> np.ndarray:
    if modality == "image":
        return _image()
    if modality == "audio":
        return _speech()
    return np.random.default_rng(1).normal(size=(1, 64, 13)).astype(np.float32)


def _decorrelation(y: np.ndarray, x: np.ndarray) -> float:
    """1 − |corr(y, x)| over the samples both hold; a constant output carries nothing: 1."""
    ok = np.isfinite(y) & np.isfinite(x)
    a, b = y[ok].astype(np.float64), x[ok].astype(np.float64)
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return 1.0
    return 1.0 - abs(float(np.corrcoef(a, b)[0, 1]))


def _severity(modality: str, family: str, y: np.ndarray, x: np.ndarray) -> float:
    """The family's distortion score: what it destroys, on one sample."""
    if family == "gap":
        return float(np.isnan(y).mean())  # the share of the stream that is missing
    if family == "occlusion":
        return float(np.mean(y != x))  # the share of the frame hidden
    if modality == "mfcc":
        return float(np.mean((y - x) ** 2))
    # Correlation, not MSE: glare and covered compress contrast, which MSE does not rank.
    return _decorrelation(y, x)


def test_families_and_kinds() -> None:
    assert set(corrupt.FAMILIES) == {"image", "audio", "mfcc"}
    assert len(corrupt.families("image")) >= 7 and len(corrupt.families("audio")) >= 7
    for m, fams in corrupt.FAMILIES.items():
        assert corrupt.families(m) == corrupt.kinds_for(m) == fams == tuple(core._KINDS[m])
        assert corrupt.TRAIN_KINDS[m] == "gaussian"
        assert corrupt.EVAL_KINDS[m] == tuple(f for f in fams if f != "gaussian")
    with pytest.raises(UdmlError, match="radar"):
        corrupt.families("radar")
    rows = corrupt.severity_table()
    assert [r["level"] for r in rows] == list(corrupt.LEVELS)
    assert all(f"{m}/{f}" in rows[5] for m, f in ALL)


@pytest.mark.parametrize(("modality", "family"), ALL)
def test_identity_determinism_and_input_untouched(modality: str, family: str) -> None:
    x = np.repeat(_sample(modality), 4, axis=0)
    if modality == "audio":
        x[:, 5000:5100] = np.nan  # missing samples in the input
    keep = x.copy()
    levels = np.array([1, 4, 10, 11])
    a = corrupt.apply(modality, family, x, levels, np.random.default_rng(42))
    b = corrupt.apply(modality, family, x, levels, np.random.default_rng(42))
    np.testing.assert_array_equal(x, keep)
    np.testing.assert_array_equal(a, b)  # NaN at equal positions compare equal
    assert a.dtype == np.float32 and a.shape == x.shape
    np.testing.assert_array_equal(a[0], x[0])  # level 1 is bit-identical
    np.testing.assert_array_equal(corrupt.apply(modality, family, x, 1, np.random.default_rng(0)), x)
    if modality == "image":
        assert a.min() >= 0.0 and a.max() <= 255.0


@pytest.mark.parametrize(("modality", "family"), ALL)
def test_severity_monotone_and_level_11_information_free(modality: str, family: str) -> None:
    draws = 6
    x = np.repeat(_sample(modality), draws, axis=0)
    top = corrupt.PURE_NOISE if modality != "mfcc" else 10  # MFCC level 11 is unchanged: N(0, 1)
    dist = []
    for lv in range(2, top + 1):
        y = corrupt.apply(modality, family, x, lv, np.random.default_rng(lv))
        dist.append(np.mean([_severity(modality, family, y[i], x[i]) for i in range(draws)]))
    assert all(d2 > d1 for d1, d2 in itertools.pairwise(dist[:9])), (family, dist)
    assert dist[-1] >= dist[8], (family, dist)  # level 11 at least as severe as level 10
    y = corrupt.apply(modality, family, x, 11, np.random.default_rng(0))
    for i in range(draws):
        info_free = (np.isnan(y[i]).all() or np.ptp(y[i]) == 0
                     or _decorrelation(y[i], x[i]) > 0.9)
        assert info_free, (family, i)


def test_large_colour_and_grey_frames() -> None:
    rng = np.random.default_rng(0)
    big = rng.uniform(0, 255, (1, 480, 640, 3)).astype(np.float32)
    grey = rng.uniform(0, 255, (2, 40, 30)).astype(np.float32)
    for family in corrupt.families("image"):
        for x in (big, grey):
            y = corrupt.apply("image", family, x, np.array([2, 10])[: len(x)], rng)
            assert y.shape == x.shape and y.dtype == np.float32
            assert y.min() >= 0.0 and y.max() <= 255.0


def test_image_endpoints() -> None:
    x = np.repeat(_image(), 2, axis=0)
    rng = np.random.default_rng(0)
    assert (corrupt.apply("image", "covered", x, 11, rng) == 0.0).all()
    assert (corrupt.apply("image", "glare", x, 11, rng) == 255.0).all()
    assert (corrupt.apply("image", "occlusion", x, 11, rng) == 0.0).all()
    for family in ("blur", "motion"):
        y = corrupt.apply("image", family, x, 11, rng)
        np.testing.assert_allclose(y, x.mean(), rtol=1e-5)
    sp = corrupt.apply("image", "saltpepper", x, 11, rng)
    assert set(np.unique(sp)) == {0.0, 255.0}
    covered = corrupt.apply("image", "covered", x, 6, rng)
    np.testing.assert_array_equal(covered, np.rint(covered))  # a uint8 sensor's read-out


def test_occlusion_area() -> None:
    x = _image()
    for lv in (2, 6, 10):
        hidden = [np.mean(corrupt.apply("image", "occlusion", x, lv, np.random.default_rng(s))
                          != x) for s in range(5)]
        np.testing.assert_allclose(hidden, core.occlusion_fraction(lv), atol=0.04)


def test_readout_damages_whole_lines_or_blocks_in_the_level_share() -> None:
    # `readout`: exactly a share 0.1·(L−1) of the frame's rows, columns or ~side/7 blocks reads
    # values unrelated to the scene; every other pixel is untouched.
    x = _image()  # 30..250: no fill value of the family coincides with a scene pixel
    layouts = set()
    for seed, lv in itertools.product(range(30), (3, 6, 9)):
        changed = corrupt.apply("image", "readout", x, lv, np.random.default_rng(seed))[0] != x[0]
        share = core.readout_share(lv)
        rows, cols = changed.all(axis=1), changed.all(axis=0)
        if (changed == rows[:, None]).all() and rows.any():
            layouts.add("rows")
            assert rows.sum() == round(share * 28)
        elif (changed == cols[None, :]).all() and cols.any():
            layouts.add("columns")
            assert cols.sum() == round(share * 28)
        else:
            layouts.add("blocks")
            cells = changed.reshape(7, 4, 7, 4).transpose(0, 2, 1, 3).reshape(49, 16)
            assert (cells.all(axis=1) | ~cells.any(axis=1)).all()  # whole cells only
            assert cells.all(axis=1).sum() == round(share * 49)
    assert layouts == {"rows", "columns", "blocks"}


def test_active_power() -> None:
    clean = _speech(-20.0)
    word = clean[0, 3840:12160].astype(np.float64)  # the word, on the 20 ms frame grid
    frames = word.reshape(-1, 320)
    energy = (frames**2).mean(axis=1)
    want = energy[energy >= energy.max() * 1e-3].mean()
    np.testing.assert_allclose(core.active_power(clean), [want], rtol=1e-5)
    holed = clean.copy()
    holed[0, 6000:6400] = np.nan  # NaN is ignored, not counted as silence
    assert abs(10 * np.log10(core.active_power(holed)[0] / want)) < 0.5
    floor = core.active_power(np.stack([np.zeros(16000), np.full(16000, np.nan)]))
    np.testing.assert_array_equal(floor, [core.POWER_FLOOR, core.POWER_FLOOR])


@pytest.mark.parametrize("peak_dbfs", [-46.0, -6.0])
def test_snr_map_against_clean_active_power(peak_dbfs: float) -> None:
    clean = np.repeat(_speech(peak_dbfs), 2, axis=0)
    ref = core.active_power(clean)
    # Background noise already in the window must not change the reference: the caller passes
    # the clean speech's power.
    noisy = clean + 0.3 * np.sqrt(ref[0]) * np.random.default_rng(9).standard_normal(clean.shape)
    noisy = noisy.astype(np.float32)
    for family in NOISE_FAMILIES:
        for x, ref_power in ((clean, None), (noisy, ref)):
            y = corrupt.apply("audio", family, x, np.array([2, 10]), np.random.default_rng(0),
                              ref_power=ref_power)
            added = np.mean((y.astype(np.float64) - x) ** 2, axis=1)
            snr = 10 * np.log10(ref / added)
            want = [core.audio_snr_db(2), core.audio_snr_db(10)]
            np.testing.assert_allclose(snr, want, atol=0.5, err_msg=family)
            assert core.audio_snr_db(2) == 30.0 and core.audio_snr_db(10) == -10.0


def test_audio_level_11_louder_than_level_10() -> None:
    x = np.repeat(_speech(-30.0), 2, axis=0)
    for family in NOISE_FAMILIES:
        y = corrupt.apply("audio", family, x, np.array([10, 11]), np.random.default_rng(0))
        p10 = np.mean((y[0].astype(np.float64) - x[0]) ** 2)
        p11 = np.mean(y[1].astype(np.float64) ** 2)
        assert p11 >= p10, family
        np.testing.assert_allclose(10 * np.log10(p11 / core.active_power(x[:1])[0]), 15.0,
                                   atol=0.5)


def test_tonal_is_tones_across_the_speech_band() -> None:
    # What sets `tonal` apart from the noise families: its power sits in a few narrow lines per
    # moment (spectral flatness far below white noise's ~0.56), and over many windows those
    # lines cover the speech band rather than one corner of it.
    rng = np.random.default_rng(4)
    peaks = []
    for _ in range(60):
        x = core._tonal_noise(16000, rng)
        assert x.dtype == np.float32 and np.isfinite(x).all() and np.abs(x).max() < 10
        f, _, z = signal.stft(x.astype(np.float64), fs=core.SAMPLE_RATE, nperseg=512)
        power = np.abs(z[:, 2:-2]) ** 2 + 1e-20
        sounding = power.sum(axis=0) > 0.01 * power.sum(axis=0).max()  # a beeper's gaps: none
        power = power[:, sounding]
        flatness = np.exp(np.mean(np.log(power), axis=0)) / np.mean(power, axis=0)
        assert np.median(flatness) < 0.05
        peaks.extend(f[np.argmax(power, axis=0)])
    # Each octave from 250 Hz to 4 kHz holds some window's strongest line.
    hist, _ = np.histogram(peaks, bins=[250, 500, 1000, 2000, 4000])
    assert (hist > 0).all(), hist
    # Any window length (a log set may cut other windows than 1 s): always sound, never NaN.
    for n in (800, 80000):
        for _ in range(40):
            x = core._tonal_noise(n, rng)
            assert x.shape == (n,) and np.isfinite(x).all() and np.mean(x**2) > 0.01


def test_gap_writes_nan_in_the_expected_fraction() -> None:
    x = np.repeat(_speech(), 3, axis=0)
    for lv in range(2, 12):
        y = corrupt.apply("audio", "gap", x, lv, np.random.default_rng(lv))
        for i in range(len(x)):
            lost = np.isnan(y[i])
            assert abs(lost.mean() - core.gap_fraction(lv)) <= SEG / x.shape[1] + 1e-9, lv
            np.testing.assert_array_equal(y[i][~lost], x[i][~lost])  # only NaN is written


@pytest.mark.parametrize("family", [f for f in corrupt.families("audio") if f != "gap"])
def test_audio_keeps_missing_samples_missing(family: str) -> None:
    x = np.repeat(_speech(), 10, axis=0)
    x[:, :300] = np.nan
    x[:, 7000:7400] = np.nan  # a hole inside the word
    y = corrupt.apply("audio", family, x, np.arange(2, 12), np.random.default_rng(0))
    np.testing.assert_array_equal(np.isnan(y), np.isnan(x))


def test_microphone_floor_and_clipping_endpoints() -> None:
    x = np.repeat(_speech(-12.0), 2, axis=0)
    peak = float(np.abs(x).max())
    for family in ("muffle", "attenuation"):
        y = corrupt.apply("audio", family, x, 11, np.random.default_rng(0))
        rms_db = 10 * np.log10(np.mean(y.astype(np.float64) ** 2))
        assert abs(rms_db - core.MIC_FLOOR_DBFS) < 0.5, family
    for lv in (2, 6, 10, 11):
        y = corrupt.apply("audio", "clipping", x, lv, np.random.default_rng(0))
        np.testing.assert_allclose(np.abs(y).max(axis=1), peak, rtol=1e-5)
    silent = np.zeros((1, 16000), np.float32)
    np.testing.assert_array_equal(
        corrupt.apply("audio", "clipping", silent, 6, np.random.default_rng(0)), silent)


def test_bad_arguments_are_named() -> None:
    x = _sample("image")
    with pytest.raises(UdmlError, match="image/sparkle"):
        corrupt.apply("image", "sparkle", x, 3, np.random.default_rng(0))
    with pytest.raises(UdmlError, match=r"1\.\.11"):
        corrupt.apply("image", "gaussian", x, 12, np.random.default_rng(0))
