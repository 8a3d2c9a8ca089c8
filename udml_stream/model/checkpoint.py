"""Self-contained checkpoints: ``model.safetensors`` + ``config.json`` in one directory.

The JSON holds the model config (including preprocessing parameters), class names, the
dependency statistics (also a buffer in the weights) and free-form training facts. Loading never
unpickles: weights come from safetensors, everything else from JSON.

An ensemble checkpoint (``save_ensemble``, ``udml ensemble``) is a directory whose JSON lists
its members under ``members``: sub-directories, each a checkpoint of the same configuration.
``load`` returns it as one ``Ensemble`` (``udml_stream.model.ensemble``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from udml_stream.errors import CheckpointError
from udml_stream.model.ensemble import Ensemble
from udml_stream.model.fusion import FusionNet, ModelConfig

FORMAT = "udml-checkpoint/1"
#: State that a checkpoint may lack (the model's defaults stand in).
OPTIONAL_BUFFERS = ("gate_clean", "gate_broken", "conf_clean", "conf_broken", "typ_means",
                    "typ_prec", "typ_clean", "typ_broken", "pre_clean", "pre_broken")
#: Modules a checkpoint may lack (fitted after training; left unfitted, their gate stays open).
OPTIONAL_PREFIXES = ("pretext.",)
WEIGHTS, CONFIG = "model.safetensors", "config.json"
#: The JSON key of an ensemble checkpoint's member directories (relative to it).
MEMBERS = "members"


def save(model: FusionNet, path: Path, class_names: list[str], extra: dict[str, Any]) -> Path:
    """Write ``model`` to the directory ``path`` (created; files replaced atomically)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path / (WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"format": FORMAT})
    tmp.replace(path / WEIGHTS)
    dep = model.dependency_ema.detach().cpu().tolist()
    meta = {
        "format": FORMAT,
        "model": model.cfg.to_dict(),
        "class_names": list(class_names),
        "dependency": dict(zip(model.cfg.modalities, dep, strict=True)),
        **extra,
    }
    tmp = path / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(path / CONFIG)
    return path


def read_meta(path: Path) -> dict[str, Any]:
    """The checkpoint's JSON metadata."""
    cfg = Path(path) / CONFIG
    if not cfg.is_file():
        raise CheckpointError(f"{cfg} not found: a checkpoint is a directory holding "
                              f"{WEIGHTS} and {CONFIG} (written by `udml train`)")
    meta = json.loads(cfg.read_text())
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{cfg} has format {meta.get('format')!r}; expected {FORMAT!r}")
    return meta


def save_ensemble(path: Path, members: Sequence[Path]) -> Path:
    """Write an ensemble checkpoint of the checkpoints ``members`` (copied into ``path``): its
    JSON is the first member's facts (without a model card, which must be measured anew), the
    member directories, and each member's seed and validation accuracy. The members must share
    one model configuration and class names; loading it checks that again."""
    path = Path(path)
    metas = [read_meta(m) for m in members]
    if any(MEMBERS in m for m in metas):
        raise CheckpointError("an ensemble's member cannot itself be an ensemble")
    model = Ensemble([load(m)[0] for m in members])  # refuses mismatched configurations
    if any(m["class_names"] != metas[0]["class_names"] for m in metas):
        raise CheckpointError("ensemble members name their classes differently")
    if path.exists() and any(path.iterdir()):
        raise CheckpointError(f"{path} exists and is not empty; choose a new directory")
    subs = []
    for i, src in enumerate(members):
        sub = f"{MEMBERS}/{i}"
        (path / sub).mkdir(parents=True)
        for name in (WEIGHTS, CONFIG):
            shutil.copy2(Path(src) / name, path / sub / name)
        subs.append(sub)
    meta = {k: v for k, v in metas[0].items() if k != "card"}
    meta.update({
        MEMBERS: subs,
        "member_facts": [{"source": str(src), "seed": m.get("seed"), "val_acc": m.get("val_acc")}
                         for src, m in zip(members, metas, strict=True)],
        "dependency": dict(zip(model.cfg.modalities, model.dependency_ema.tolist(), strict=True)),
    })
    tmp = path / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(path / CONFIG)
    return path


def load(path: Path, device: str | torch.device = "cpu"
         ) -> tuple[FusionNet | Ensemble, dict[str, Any]]:
    """Rebuild the model stored at ``path`` in eval mode, with no other information needed (an
    ensemble checkpoint as one ``Ensemble`` of its members)."""
    meta = read_meta(path)
    if MEMBERS in meta:
        members = []
        for sub in meta[MEMBERS]:
            m, m_meta = load(Path(path) / sub, device)
            if not isinstance(m, FusionNet) or m_meta["class_names"] != meta["class_names"]:
                raise CheckpointError(f"{Path(path) / sub} is not a member of {path}: a nested "
                                      "ensemble or other class names")
            members.append(m)
        return Ensemble(members).to(device).eval(), meta
    model = FusionNet(ModelConfig.from_dict(meta["model"]))
    weights = Path(path) / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights} not found")
    state = load_file(str(weights), device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    # A switch-rule checkpoint saved before its gate was calibrated keeps the gate open.
    missing = [k for k in missing
               if k not in OPTIONAL_BUFFERS and not k.startswith(OPTIONAL_PREFIXES)]
    if missing or unexpected:
        raise CheckpointError(f"{weights} does not match its config: missing {missing}, "
                              f"unexpected {unexpected}")
    return model.to(device).eval(), meta


def load_one(path: Path, device: str | torch.device, what: str
             ) -> tuple[FusionNet, dict[str, Any]]:
    """As ``load``, for ``what`` (a task that changes one model's weights): an ensemble is
    refused with the way round it."""
    model, meta = load(path, device)
    if not isinstance(model, FusionNet):
        raise CheckpointError(f"{path} is an ensemble of {len(meta[MEMBERS])} models; {what} "
                              f"works on one: run it on each member ({path}/{MEMBERS}/<i>) and "
                              "build the ensemble again (`udml ensemble`)")
    return model, meta
