"""Program: a checkpoint on voices, pitches and speaking rates it has never heard in any split.

The raw track speaks each digit with 12 espeak-ng variants per accent (96 voices, split by voice)
at pitch 25..79 and 130..199 words per minute. espeak-ng has about 98 variants: this synthesises
digits with variants the build never uses under any accent, first within the build's pitch and
rate ranges, then beyond them (deep and high voices, slow and fast talkers), pairs each with a
test-split image of its class through the same natural camera path as ``udml eval-field``, and
scores fused, audio-alone and image-alone (= audio dropped) accuracy. For checkpoints of the
raw track's ``field`` preset (one camera, one microphone, no added background noise). Not part
of the test suite (it synthesises a few thousand utterances):

    python -m training.fresh_voices checkpoints/default --out docs/results/fresh_voices.json
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
from udml_stream.data.sources import ACCENTS, Utterance, espeak_variants, synthesize_many
from udml_stream.evaluate.field import run_pass
from udml_stream.model import checkpoint
from udml_stream.train.trainer import load_data_for_checkpoint

log = logging.getLogger(__name__)

#: (name, pitch range, speed range in words per minute), both ends inclusive. The first is the
#: build's own range (``avdigits.build``); the others lie outside it.
CONDITIONS: tuple[tuple[str, tuple[int, int], tuple[int, int]], ...] = (
    ("build's ranges", (25, 79), (130, 199)),
    ("deep (pitch 0-15)", (0, 15), (130, 199)),
    ("high (pitch 85-99)", (85, 99), (130, 199)),
    ("slow (80-110 wpm)", (25, 79), (80, 110)),
    ("fast (230-320 wpm)", (25, 79), (230, 320)),
)


def fresh_voices(used: set[str], rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    """``n`` (accent, variant) pairs whose variant the build's voices ``used`` (``accent+variant``)
    never speak, under any accent."""
    heard = {v.split("+", 1)[1] for v in used}
    pool = [(a, v) for a in ACCENTS for v in espeak_variants() if v not in heard]
    pick = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
    return [pool[i] for i in pick]


def voice_split(test: avdigits.Split, waves: np.ndarray, labels: np.ndarray,
                rng: np.random.Generator, name: str) -> avdigits.Split:
    """``waves`` (float windows, full scale 1) each paired with a random test-split image of its class."""
    audio = "audio"
    by_class = {c: np.flatnonzero(test.labels == c) for c in range(10)}
    img = np.array([test.index["image"][rng.choice(by_class[int(c)])] for c in labels])
    return avdigits.Split(name, labels, {"image": test.tables["image"], audio: waves},
                          {"image": img, audio: np.arange(len(labels))}, test.natural, test.kinds)


def main(ckpt: Path, out: Path | None, n: int = 500, voices: int = 60, seed: int = 0,
         cache_dir: Path = Path("data_cache"), workers: int = 2) -> dict[str, Any]:
    """Per condition: fused, audio-alone and image-alone accuracy on ``n`` fresh utterances from
    ``voices`` voices whose variant the build never uses."""
    torch.set_num_threads(1)
    model, meta = checkpoint.load(ckpt, torch.device("cpu"))
    data = load_data_for_checkpoint(meta, cache_dir)
    test = data.splits["test"]
    audio = "audio"
    used = {v for vs in dict(data.info.get("voices", {})).values() for v in vs}
    if not used or data.preset.name != "field" or set(test.tables) != {"image", "audio"}:
        raise SystemExit("fresh_voices scores checkpoints of the raw track's field preset (one "
                         f"camera, one microphone); this one is {data.preset.name!r} with "
                         f"streams {sorted(test.tables)}")
    rng = np.random.default_rng(seed)
    pool = fresh_voices(used, rng, voices)
    result: dict[str, Any] = {"checkpoint": str(ckpt), "seed": seed, "voices": voices,
                              "conditions": {}}
    for name, (p0, p1), (s0, s1) in (("test split", (0, 0), (0, 0)), *CONDITIONS):
        if name == "test split":
            split = test
        else:
            labels = rng.integers(0, 10, size=n)
            utts = []
            for d in labels:
                accent, variant = pool[int(rng.integers(0, len(pool)))]
                utts.append(Utterance(int(d), accent, variant, int(rng.integers(p0, p1 + 1)),
                                      int(rng.integers(s0, s1 + 1))))
            # As the raw track's table: the int16 windows as float, full scale 1.
            waves = synthesize_many(utts, avdigits.WINDOW_SAMPLES, workers=workers
                                    ).astype(np.float32) / 32768.0
            split = voice_split(test, waves, labels.astype(np.int64), rng, name)
        row = {"n": len(split),
               "fused": float(run_pass(model, split, seed).correct.mean()),
               "audio_alone": float(run_pass(model, split, seed, missing=("image",))
                                    .correct.mean()),
               "image_alone": float(run_pass(model, split, seed, missing=(audio,))
                                    .correct.mean())}
        row["fused_minus_dropped"] = row["fused"] - row["image_alone"]
        result["conditions"][name] = row
        log.info("%s: %s", name, {k: round(v, 4) for k, v in row.items()})
    if out is not None:
        out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--cache-dir", type=Path, default=Path("data_cache"))
    a = ap.parse_args()
    print(json.dumps(main(a.checkpoint, a.out, a.n, cache_dir=a.cache_dir), indent=1))
