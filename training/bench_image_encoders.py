"""Program: which image encoder, with or without pose jitter, learns the field preset's digits.

An image-only probe, so the answer is about the encoder and its data, not about fusion: each
candidate encoder, its spatial average (as ``FusionNet`` pools embeddings) and a linear classifier
train on clean natural camera views of the ``field`` preset (random exposure, as in training),
with or without a fresh random pose per draw (``data.field.jitter_images``), for the same number
of steps; accuracy is measured on the test split's camera views under a fixed random exposure.

    python training/bench_image_encoders.py [--steps 1500] [--out docs/results/image_encoders]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from udml_stream.data import avdigits
from udml_stream.data.field import jitter_images, naturalise_image
from udml_stream.model import encoders
from udml_stream.model.preprocess import ImagePrep

CANDIDATES = ("cnn_image_small", "cnn_image_deep")


def probe(name: str, jitter: bool, data: avdigits.AVDigits, steps: int, seed: int = 0
          ) -> dict[str, Any]:
    """Train ``name`` image-only for ``steps`` batches of 64; test accuracy and wall time."""
    torch.manual_seed(seed)
    prep = ImagePrep(norm="frame")
    enc = encoders.create(name)
    head = nn.Linear(enc.out_channels, 10)
    params = list(enc.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, 2e-3)
    train, test = data.splits["train"], data.splits["test"]
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    enc.train()
    for _ in range(steps):
        rows = rng.integers(0, len(train), 64)
        x = train.batch(rows)["image"]
        if jitter:
            x = jitter_images(x, rng)
        x = torch.from_numpy(naturalise_image(x, rng))
        logits = head(enc(prep.normalise(x[:, None])).mean(dim=(2, 3)))
        loss = F.cross_entropy(logits, torch.from_numpy(train.labels[rows]).long())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0
    enc.eval()
    xt = naturalise_image(test.batch(np.arange(len(test)))["image"], np.random.default_rng(1))
    with torch.no_grad():
        pred = head(enc(prep.normalise(torch.from_numpy(xt)[:, None])).mean(dim=(2, 3))).argmax(1)
    acc = float((pred.numpy() == test.labels).mean())
    return {"encoder": name, "jitter": jitter, "params": sum(p.numel() for p in params),
            "steps": steps, "test_acc": acc, "train_s": seconds}


def to_markdown(rows: list[dict[str, Any]], command: str) -> str:
    """The result table."""
    lines = [f"Command: `{command}`. Image only, clean natural camera views of the `field` preset "
             "(3,500 training digits, one cached view each; random exposure), batch 64, Adam "
             "2e-3, one torch thread; test: the 750 test views under a fixed random exposure.",
             "", "| encoder | pose jitter | parameters | steps | test accuracy % | train s |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['encoder']} | {'yes' if r['jitter'] else 'no'} | {r['params']:,} | "
                     f"{r['steps']} | {100 * r['test_acc']:.1f} | {r['train_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run every candidate with and without jitter; print and write the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--cache-dir", type=Path, default=Path("data_cache"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.steps <= 0:
        ap.error(f"--steps {args.steps}: expected a positive number")
    torch.set_num_threads(1)
    data = avdigits.load("field", args.cache_dir)
    rows = [probe(name, jitter, data, args.steps) for name in CANDIDATES for jitter in (False, True)]
    command = "python training/bench_image_encoders.py --steps " + str(args.steps)
    md = to_markdown(rows, command)
    print(md)
    if args.out is not None:
        args.out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows},
                                                            indent=1))
        args.out.with_suffix(".md").write_text(md)


if __name__ == "__main__":
    main()
