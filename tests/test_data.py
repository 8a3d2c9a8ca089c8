"""AV-Digits: deterministic builds, voice-disjoint splits, class pairing, presets."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from udml_stream.data import avdigits
from udml_stream.errors import DatasetError

from .conftest import SMALL


def test_build_is_deterministic_per_seed(cache_dir: Path, tmp_path: Path) -> None:
    spec = avdigits.BuildSpec(track="raw", **SMALL)
    again = avdigits.build(spec, tmp_path)
    with np.load(spec.path(cache_dir)) as a, np.load(again) as b:
        assert a.files == b.files
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    other = avdigits.BuildSpec(track="real", seed=1)
    with np.load(avdigits.build(other, tmp_path)) as c, \
            np.load(avdigits.BuildSpec(track="real").path(cache_dir)) as d:
        assert not np.array_equal(c["pairs_train"], d["pairs_train"])


def test_concurrent_cache_writes_do_not_collide(tmp_path: Path) -> None:
    # Two seeds started together build the same cache at once. With one shared temporary name
    # the second rename found the file gone (FileNotFoundError, session 13); now both land.
    target = tmp_path / "cache.npz"
    both_writing = threading.Barrier(2, timeout=10)
    errors: list[BaseException] = []

    def write(value: int) -> None:
        def save(tmp: Path) -> None:
            np.savez(tmp, x=np.full(4, value))
            both_writing.wait()  # both temporary files exist before either is renamed
        try:
            avdigits.write_atomically(target, save)
        except BaseException as e:  # the test reports whatever a writer raised
            errors.append(e)

    threads = [threading.Thread(target=write, args=(v,)) for v in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not errors
    with np.load(target) as z:
        assert z["x"][0] in (1, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.npz"]  # no temporary left
    # A save that wrote elsewhere (np.savez appends .npz to another suffix) raises, and the
    # target is not replaced by the empty temporary file.
    with pytest.raises(DatasetError, match="nothing was written"):
        avdigits.write_atomically(tmp_path / "cache.bin", lambda tmp: np.savez(tmp, x=np.ones(2)))
    assert not (tmp_path / "cache.bin").exists()
    for p in tmp_path.glob("cache.bin.*"):
        p.unlink()  # what np.savez wrote under its own name


def test_raw_track_splits_by_voice_and_pairs_by_class(small_data: avdigits.AVDigits) -> None:
    voices = small_data.info["voices"]
    assert not set(voices["train"]) & set(voices["test"])
    assert not set(voices["val"]) & set(voices["test"])
    for split in small_data.splits.values():
        assert len(split) > 0
        assert set(np.unique(split.labels)) == set(range(10))
    with np.load(small_data.info["cache"]) as z:
        p = z["pairs_test"]
        np.testing.assert_array_equal(z["image_labels"][p[:, 0]], z["audio_labels"][p[:, 1]])
        assert set(z["image_split"][p[:, 0]]) == {2}


def test_presets_weaken_images_and_load_is_deterministic(cache_dir: Path) -> None:
    a = avdigits.load("imbalanced", cache_dir, **SMALL)
    b = avdigits.load("balanced", cache_dir, **SMALL)
    assert a.info["image_pcs"] < b.info["image_pcs"]
    a2 = avdigits.load("imbalanced", cache_dir, **SMALL)
    rows = np.arange(5)
    for m in a.modalities:
        np.testing.assert_array_equal(a.splits["train"].batch(rows)[m],
                                      a2.splits["train"].batch(rows)[m])
    real = avdigits.load("real", cache_dir)
    assert real.modalities == ("image", "mfcc")
    assert real.splits["test"].batch(rows)["mfcc"].shape == (5, avdigits.MFCC_FRAMES, 13)


def test_unknown_preset_is_named(cache_dir: Path) -> None:
    with pytest.raises(DatasetError, match="'nope'"):
        avdigits.load("nope", cache_dir)
