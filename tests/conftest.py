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


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
