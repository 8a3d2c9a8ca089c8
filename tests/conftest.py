"""Shared fixtures: a small AV-Digits build (16 voices, one rendition) cached per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from udml_stream.data import avdigits

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
