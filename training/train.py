"""Program: train one model from a TOML config and optionally export the selected checkpoint."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from udml_stream.model import checkpoint
from udml_stream.train.config import load_config, portable_paths
from udml_stream.train.distributed import LaunchSpec, launch
from udml_stream.train.trainer import TrainResult, train

log = logging.getLogger(__name__)


def main(config: Path, overrides: dict[str, Any], resume: bool, export: Path | None,
         spec: LaunchSpec | None = None) -> TrainResult | None:
    """Train as ``config`` (with dotted ``overrides``) says; copy the best checkpoint to ``export``.

    With ``spec`` naming more than one process in all, the run is distributed (DDP through
    torchrun, docs/distributed.md); then only node 0 returns a result (and exports).
    ``train.init_from`` naming an ensemble fine-tunes each member in turn (member i with seed
    ``train.seed + i``, in its own ``out_dir/member<i>``, resumable alike) and writes the ensemble
    of the fine-tuned members to ``out_dir/ensemble``: its result's ``members`` holds each
    member's, and its JSON's ``config`` is member 0's (each member's is in its directory)."""
    cfg = load_config(config, overrides)
    init = cfg.train.init_from
    if init is not None and (Path(init) / checkpoint.CONFIG).is_file() \
            and checkpoint.MEMBERS in checkpoint.read_meta(init):
        result = _finetune_ensemble(config, overrides, Path(init), Path(cfg.train.out_dir),
                                    cfg.train.seed, resume, spec)
    else:
        result = _train_one(config, overrides, resume, spec)
    if result is None:
        return None
    if export is not None:
        if export.exists():
            shutil.rmtree(export)
        shutil.copytree(result.best_path, export)
        # The stored training configs name this machine's folders: those under the working
        # directory (the checkout) are written relative to it.
        for meta_path in sorted(export.glob(f"**/{checkpoint.CONFIG}")):
            meta = json.loads(meta_path.read_text())
            if isinstance(meta.get("config"), dict):
                meta["config"] = portable_paths(meta["config"], Path.cwd())
                meta_path.write_text(json.dumps(meta, indent=2))
        log.info("exported %s", export)
    return result


def _train_one(config: Path, overrides: dict[str, Any], resume: bool,
               spec: LaunchSpec | None) -> TrainResult | None:
    if spec is not None and spec.world > 1:
        result = launch(config, overrides, resume, spec)
        if result is None:
            return None
    else:
        result = train(load_config(config, overrides), resume=resume)
    log.info("best epoch %d (val acc %.4f) in %.0f s → %s", result.best_epoch, result.best_score,
             result.seconds, result.best_path)
    return result


def _finetune_ensemble(config: Path, overrides: dict[str, Any], init: Path, out_dir: Path,
                       seed: int, resume: bool, spec: LaunchSpec | None) -> TrainResult | None:
    """Fine-tune every member of the ensemble ``init``; serve the results as one."""
    sources = checkpoint.member_dirs(init)
    results = []
    for i, src in enumerate(sources):
        log.info("fine-tuning member %d of %d (%s)", i + 1, len(sources), src)
        # Seed + i: each member draws its own batches and augmentation, as when it was trained.
        results.append(_train_one(config, {**overrides, "train.init_from": str(src),
                                           "train.seed": seed + i,
                                           "train.out_dir": str(out_dir / f"member{i}")},
                                  resume, spec))
    if any(r is None for r in results):
        return None  # another machine of a distributed run (it took part in every member's)
    results = [r for r in results if r is not None]
    path = out_dir / "ensemble"
    shutil.rmtree(path, ignore_errors=True)  # rebuilt from the members' selected checkpoints
    checkpoint.save_ensemble(path, [r.best_path for r in results],
                             origins=[f"{src} fine-tuned ({r.best_path})"
                                      for src, r in zip(sources, results, strict=True)],
                             extra={"init_from": {"path": str(init)}})
    log.info("the ensemble of %d fine-tuned members → %s", len(results), path)
    return TrainResult(path, -1, float(np.mean([r.best_score for r in results])), [],
                       sum(r.seconds for r in results), members=results)
