"""The `dominant` preset (docs/results/dominance.md): weaker images, the same clean speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from udml_stream.data import avdigits
from udml_stream.train.config import load_config

from .conftest import SMALL

ROOT = Path(__file__).resolve().parents[1]


def test_dominant_preset_weakens_only_the_images(cache_dir: Path) -> None:
    dom = avdigits.load("dominant", cache_dir, **SMALL)
    imb = avdigits.load("imbalanced", cache_dir, **SMALL)
    assert "dominant" in avdigits.PRESETS
    assert dom.modalities == ("image", "audio")
    # Fewer principal components kept than the imbalanced preset's 25% of the energy ...
    assert dom.preset.image_pca_energy < imb.preset.image_pca_energy
    assert dom.info["image_pcs"] < imb.info["image_pcs"]
    rows = np.arange(8)
    a, b = dom.splits["train"].batch(rows), imb.splits["train"].batch(rows)
    assert not np.array_equal(a["image"], b["image"])
    # ... while the speech is exactly the imbalanced preset's clean speech (40 dB floor).
    np.testing.assert_array_equal(a["audio"], b["audio"])
    np.testing.assert_array_equal(dom.splits["test"].labels, imb.splits["test"].labels)


def test_dominance_config_names_the_preset() -> None:
    cfg = load_config(ROOT / "configs" / "dominance.toml")
    assert cfg.data.preset == "dominant"
    assert cfg.train.threads == 1
