"""Program: would another answer on a conflict between the streams beat the fused head?

Where both streams are present and their unimodal heads name different classes, the switch rule
answers with the gated product of the streams' posteriors (``weighting.resolve_conflicts``), not
with the fused head. This scores, on the validation split (never test), that rule and two other
label-free answers for those samples only, against the fused head:

* ``confident``: the stream whose top softmax probability lies higher within its own clean
  validation distribution (a percentile) wins;
* ``product``: the product of the two unimodal posteriors (independent experts) decides;
* ``gated product`` (the shipped rule): as ``product``, each posterior raised to the power of
  its stream's openness under the switch rule's gates, so a stream they close has no say.

Conditions: clean input; a mixture with both streams degraded at once (random family and level
1..11 per sample and stream); every training family at levels 5, 7 and 9 in one stream; every
held-out degradation (``udml eval-unseen``) at every severity. Not part of the test suite (about
ten minutes on one core):

    python -m training.probe_conflict checkpoints/default --out docs/results/conflict_val.json
"""

from __future__ import annotations

import argparse
import json
import logging
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from udml_stream import corrupt, modalities
from udml_stream.data.avdigits import Split
from udml_stream.data.batching import Batch, make_batch
from udml_stream.evaluate import unseen
from udml_stream.evaluate.field import _batch, _natural_rng
from udml_stream.model import checkpoint
from udml_stream.model.fusion import FusionNet
from udml_stream.train.trainer import load_data_for_checkpoint, to_torch

log = logging.getLogger(__name__)

RULES = ("fused", "confident", "product", "gated product")
TRAINED_LEVELS = (5, 7, 9)


def families_of(split: Split, m: str) -> tuple[str, ...]:
    """The degradation families of stream ``m`` (a second camera's are a camera's)."""
    return corrupt.families(modalities.kind_of(m, split.kinds).corrupt)


def condition_batches(split: Split, seed: int, tag: str = "",
                      levels: dict[str, int] | None = None, kinds: dict[str, str] | None = None,
                      edit: Callable[..., None] | None = None, mixture: bool = False
                      ) -> Iterator[Batch]:
    """``split`` in batches of 250 under one condition, with ``run_pass``'s natural draws and
    corruption seeds: ``levels``/``kinds`` in one stream, ``edit`` (a held-out degradation), or
    ``mixture`` (both streams at once: a family and a level 1..11 per sample and stream)."""
    mods = tuple(split.tables)
    for start in range(0, len(split), 250):
        rows = np.arange(start, min(start + 250, len(split)))
        cond = np.random.default_rng([seed, start, zlib.crc32(tag.encode())])
        if mixture:
            lv = {m: cond.integers(corrupt.CLEAN, corrupt.PURE_NOISE + 1, len(rows))
                  for m in mods}
            b = make_batch(split, rows, lv, cond, {m: families_of(split, m) for m in mods})
        else:
            lv = {m: np.full(len(rows), (levels or {}).get(m, corrupt.CLEAN), np.int64)
                  for m in mods}
            b = _batch(split, rows, lv, _natural_rng(seed, start), cond, kinds, (), None)
        if edit is not None:
            edit(b, cond)
        yield b


@torch.no_grad()
def outputs(model: FusionNet, split: Split, seed: int, tag: str = "",
            levels: dict[str, int] | None = None, kinds: dict[str, str] | None = None,
            edit: Callable[..., None] | None = None, mixture: bool = False
            ) -> dict[str, Any]:
    """Labels, the fused head's argmax (``fused``), the served argmax (``shipped``: with the
    conflict rule), and per stream the unimodal softmax and presence, for one condition (the
    natural draws and corruption seeds of ``run_pass``)."""
    model.eval()
    mods = tuple(split.tables)
    ys, fused, shipped = [], [], []
    post: dict[str, list[np.ndarray]] = {m: [] for m in mods}
    pres: dict[str, list[np.ndarray]] = {m: [] for m in mods}
    for b in condition_batches(split, seed, tag, levels, kinds, edit, mixture):
        inputs, present, lvt, y = to_torch(b, "cpu")
        out = model(inputs, present, lvt)
        ys.append(y.numpy())
        # The fused head's own answer, and the rule's (they differ only on conflicts).
        fused.append(out.aux.get("head_logits", out.logits).argmax(1).numpy())
        shipped.append(out.logits.argmax(1).numpy())
        for m in mods:
            post[m].append(F.softmax(out.unimodal_logits[m].float(), dim=1).numpy())
            pres[m].append(out.present[m].numpy())
    return {"y": np.concatenate(ys), "fused": np.concatenate(fused),
            "shipped": np.concatenate(shipped),
            "post": {m: np.concatenate(v) for m, v in post.items()},
            "present": {m: np.concatenate(v) for m, v in pres.items()}}


def score(o: dict[str, Any], clean_conf: dict[str, np.ndarray]) -> dict[str, float]:
    """Accuracy of each rule on one condition, and the share of samples in conflict."""
    mods = tuple(o["post"])
    a, b = mods
    top = {m: o["post"][m].argmax(1) for m in mods}
    conflict = o["present"][a] & o["present"][b] & (top[a] != top[b])
    pct = {m: np.searchsorted(clean_conf[m], o["post"][m].max(1)) / len(clean_conf[m])
           for m in mods}
    confident = o["fused"].copy()
    confident[conflict] = np.where(pct[a] >= pct[b], top[a], top[b])[conflict]
    product = o["fused"].copy()
    joint = np.log(o["post"][a] + 1e-9) + np.log(o["post"][b] + 1e-9)
    product[conflict] = joint.argmax(1)[conflict]
    y = o["y"]
    return {"fused": float(np.mean(o["fused"] == y)), "confident": float(np.mean(confident == y)),
            "product": float(np.mean(product == y)), "gated product": float(np.mean(o["shipped"] == y)),
            "conflict": float(np.mean(conflict))}


def main(ckpt: Path, out: Path | None, seed: int = 0,
         cache_dir: Path = Path("data_cache")) -> dict[str, Any]:
    """Every condition's accuracy under each rule, and the group means (JSON-ready)."""
    torch.set_num_threads(1)
    model, meta = checkpoint.load(ckpt, torch.device("cpu"))
    val = load_data_for_checkpoint(meta, cache_dir).splits["val"]
    mods = tuple(val.tables)
    if set(mods) != {"image", "audio"}:
        raise SystemExit(f"probe_conflict compares two streams, image and audio; this "
                         f"checkpoint has {sorted(mods)}")
    # The clean confidence distribution comes from other natural draws than the scored ones.
    clean_conf = {m: np.sort(np.concatenate([
        outputs(model, val, s)["post"][m].max(1) for s in (seed + 5, seed + 6)])) for m in mods}
    conds: dict[str, dict[str, float]] = {}

    def run(name: str, **kw: Any) -> None:
        conds[name] = score(outputs(model, val, seed, tag=name, **kw), clean_conf)
        log.info("%-28s %s", name, "  ".join(f"{k} {100 * v:6.2f}"
                                             for k, v in conds[name].items()))

    run("clean")
    run("mixture", mixture=True)
    for m in mods:
        for fam in corrupt.FAMILIES[m]:
            for lv in TRAINED_LEVELS:
                run(f"trained {m}/{fam}@{lv}", levels={m: lv}, kinds={m: fam})
    for deg in unseen.degradations():
        for s in deg.severities:
            run(f"held-out {deg.modality}/{deg.name}@{s}", edit=unseen.edit(deg, s))
    groups = {"trained": "trained ", "held-out image": "held-out image/",
              "held-out audio": "held-out audio/"}
    summary = {g: {r: float(np.mean([v[r] for k, v in conds.items() if k.startswith(p)]))
                   for r in RULES} for g, p in groups.items()}
    summary["mixture"] = {r: conds["mixture"][r] for r in RULES}
    result = {"checkpoint": str(ckpt), "split": "val", "seed": seed, "n": len(val),
              "summary": summary, "conditions": conds}
    if out is not None:
        out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--cache-dir", type=Path, default=Path("data_cache"))
    a = ap.parse_args()
    print(json.dumps(main(a.checkpoint, a.out, cache_dir=a.cache_dir)["summary"], indent=1))
