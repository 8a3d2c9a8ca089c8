"""Program: does any encoder layer see that a stream is broken?

The typicality gate reads the final embedding. This asks the same of every convolution block of
each encoder: per block, the spatial mean and standard deviation of every channel, one Gaussian
(shrunk covariance) fitted on clean validation input (one half of the split, two natural draws),
and the Mahalanobis distance of the other half's samples under every training family at levels
6 and 11 and every held-out degradation (``udml eval-unseen``) at severities 2 and 5. Reported:
the share of samples beyond the clean 99th percentile and the median distance over that
percentile. Validation split only. Not part of the test suite (about five minutes on one core):

    python -m training.probe_layers checkpoints/default/members/0 --out docs/results/layers_val.json
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from udml_stream import corrupt
from udml_stream.evaluate import unseen
from udml_stream.evaluate.field import run_pass
from udml_stream.model import checkpoint
from udml_stream.train.typgate import fit_centres

log = logging.getLogger(__name__)


def gaussian(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and precision of ``x`` ``[N, d]`` under the typicality gate's shrunk covariance
    (``typgate.fit_centres`` with one class)."""
    means, prec = fit_centres(x, torch.zeros(len(x), dtype=torch.long), 1)
    return means[0].double(), prec.double()


def distance(x: torch.Tensor, g: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mahalanobis distance of each row of ``x`` under ``g``."""
    r = x.double() - g[0]
    return torch.einsum("bd,de,be->b", r, g[1], r).clamp(min=0).sqrt()


def main(ckpt: Path, out: Path | None, seed: int = 0,
         cache_dir: Path = Path("data_cache")) -> dict[str, Any]:
    """Per modality, condition and block: share beyond the clean 99th percentile and median
    distance ÷ that percentile (JSON-ready)."""
    from udml_stream.train.trainer import load_data_for_checkpoint

    torch.set_num_threads(1)
    model, meta = checkpoint.load_one(ckpt, torch.device("cpu"), "probing encoder layers")
    val = load_data_for_checkpoint(meta, cache_dir).splits["val"]
    feats: dict[str, list[torch.Tensor]] = {}

    def hook(name: str) -> Callable[[nn.Module, Any, torch.Tensor], None]:
        def keep(mod: nn.Module, inp: Any, o: torch.Tensor) -> None:
            o = o.float()
            feats.setdefault(name, []).append(torch.cat([o.mean((2, 3)), o.flatten(2).std(2)], 1))
        return keep

    blocks: dict[str, list[str]] = {}
    for m in val.tables:
        for i, layer in enumerate(model.enc[m]):
            if isinstance(layer, nn.Sequential):  # a convolution block (conv, norm, ReLU)
                layer.register_forward_hook(hook(f"{m}/block{i}"))
                blocks.setdefault(m, []).append(f"{m}/block{i}")

    def collect(s: int = seed, **kw: Any) -> dict[str, torch.Tensor]:
        feats.clear()
        run_pass(model, val, s, **kw)
        return {k: torch.cat(v) for k, v in feats.items()}

    rows = np.random.default_rng(seed + 5).permutation(len(val))
    fit, held = rows[: len(rows) // 2], rows[len(rows) // 2:]
    first, second = collect(seed), collect(seed + 1)
    fitted = {k: gaussian(torch.cat([first[k][fit], second[k][fit]])) for k in first}
    q99 = {k: float(torch.quantile(distance(second[k][held], fitted[k]), 0.99)) for k in first}
    result: dict[str, Any] = {"checkpoint": str(ckpt), "split": "val", "conditions": {}}

    def report(name: str, m: str, f: dict[str, torch.Tensor]) -> None:
        cells = {}
        for k in blocks[m]:
            d = distance(f[k][held], fitted[k])
            cells[k] = {"beyond_q99": float((d > q99[k]).float().mean()),
                        "median_over_q99": float(d.median() / q99[k])}
        result["conditions"][name] = cells
        log.info("%-28s %s", name, "  ".join(
            f"{k}: {100 * c['beyond_q99']:5.1f}% / {c['median_over_q99']:.2f}"
            for k, c in cells.items()))

    for m in val.tables:
        for fam in corrupt.FAMILIES[m]:
            for lv in (6, corrupt.PURE_NOISE):
                report(f"trained {m}/{fam}@{lv}", m,
                       collect(levels={m: lv}, kinds={m: fam}, tag=f"{m}/{fam}@{lv}"))
        for deg in unseen.degradations(m):
            for s in (2, 5):
                report(f"held-out {m}/{deg.name}@{s}", m,
                       collect(edit=unseen.edit(deg, s), tag=f"unseen/{m}/{deg.name}@{s}"))
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
    main(a.checkpoint, a.out, cache_dir=a.cache_dir)
