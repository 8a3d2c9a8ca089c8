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


#: Facts of one trained model that an ensemble's own JSON must not claim (each member's are
#: in ``member_facts`` and in its own directory).
PER_MODEL_KEYS = ("card", "seed", "epoch", "val_acc", "val_acc_ungated")


def save_ensemble(path: Path, members: Sequence[Path], origins: Sequence[str] | None = None,
                  extra: dict[str, Any] | None = None) -> Path:
    """Write an ensemble checkpoint of the checkpoints ``members`` (copied into ``path``, which
    must not exist or be an empty directory; written in a sibling directory and renamed into
    place, so a failure leaves nothing behind). Its JSON is the first member's shared facts
    (model configuration, classes, preset, training config, gates), the member directories, and
    each member's origin, seed and validation accuracy; per-model facts and the model card are
    left out (a card must be measured on the ensemble). The members must be distinct checkpoints
    of one model configuration and class names; loading checks that again. ``origins`` replaces
    the members' paths as what each was copied from (when they are temporary); ``extra`` adds
    facts to the ensemble's JSON."""
    path = Path(path)
    if origins is not None and len(origins) != len(members):
        raise CheckpointError(f"{len(origins)} origins for {len(members)} members")
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise CheckpointError(f"{path} exists and is not an empty directory; choose a new one")
    metas = [read_meta(m) for m in members]
    if any(MEMBERS in m for m in metas):
        raise CheckpointError("an ensemble's member cannot itself be an ensemble")
    weights = [(Path(m) / WEIGHTS).read_bytes() for m in members]
    if len(set(weights)) < len(weights):
        raise CheckpointError("the same weights are given twice: an ensemble's members must be "
                              "different trained models")
    model = Ensemble([load(m)[0] for m in members])  # refuses mismatched configurations
    if any(m["class_names"] != metas[0]["class_names"] for m in metas):
        raise CheckpointError("ensemble members name their classes differently")
    tmp_dir = path.with_name(f".{path.name}.partial")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    try:
        subs = []
        for i, src in enumerate(members):
            sub = f"{MEMBERS}/{i}"
            (tmp_dir / sub).mkdir(parents=True)
            for name in (WEIGHTS, CONFIG):
                shutil.copy2(Path(src) / name, tmp_dir / sub / name)
            subs.append(sub)
        meta = {k: v for k, v in metas[0].items() if k not in PER_MODEL_KEYS}
        meta.update({
            MEMBERS: subs,
            "member_facts": [{"copied_from": origin, "seed": m.get("seed"),
                              "val_acc": m.get("val_acc")}
                             for origin, m in zip(origins or [str(Path(s).resolve())
                                                              for s in members],
                                                  metas, strict=True)],
            "dependency": dict(zip(model.cfg.modalities, model.dependency_ema.tolist(),
                                   strict=True)),
            **(extra or {}),
        })
        (tmp_dir / CONFIG).write_text(json.dumps(meta, indent=2))
        if path.exists():
            path.rmdir()  # empty, checked above
        tmp_dir.rename(path)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return path


def member_dirs(path: Path, meta: dict[str, Any] | None = None) -> list[Path]:
    """An ensemble's member directories, checked: at least two, each a relative path inside
    ``path`` to an ordinary checkpoint (not an ensemble, same classes)."""
    meta = read_meta(path) if meta is None else meta
    if MEMBERS not in meta:
        raise CheckpointError(f"{path} is one model, not an ensemble")
    subs = meta[MEMBERS]
    if not isinstance(subs, list) or len(subs) < 2:
        raise CheckpointError(f"{path}/{CONFIG}: {MEMBERS} = {subs!r}; expected a list of at "
                              "least 2 member directories")
    root = Path(path).resolve()
    out = []
    for sub in subs:
        d = (root / str(sub)).resolve()
        if Path(str(sub)).is_absolute() or d == root or root not in d.parents:
            raise CheckpointError(f"{path}/{CONFIG}: member {sub!r} is not a directory inside "
                                  f"{path}")
        m_meta = read_meta(d)
        if MEMBERS in m_meta or m_meta["class_names"] != meta["class_names"]:
            raise CheckpointError(f"{d} is not a member of {path}: a nested ensemble or other "
                                  "class names")
        out.append(d)
    return out


def model_dirs(path: Path, meta: dict[str, Any] | None = None) -> list[Path]:
    """The directories of the trained models a checkpoint holds: an ensemble's members
    (checked as ``member_dirs``), or the checkpoint itself."""
    meta = read_meta(path) if meta is None else meta
    return member_dirs(path, meta) if MEMBERS in meta else [Path(path)]


def load(path: Path, device: str | torch.device = "cpu"
         ) -> tuple[FusionNet | Ensemble, dict[str, Any]]:
    """Rebuild the model stored at ``path`` in eval mode, with no other information needed (an
    ensemble checkpoint as one ``Ensemble`` of its members)."""
    meta = read_meta(path)
    if MEMBERS in meta:
        members = [load(d, device)[0] for d in member_dirs(path, meta)]
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
    meta = read_meta(path)
    if MEMBERS in meta:
        raise CheckpointError(f"{path} is an ensemble of {len(meta[MEMBERS])} models; {what} "
                              f"works on one: run it on each member ({path}/{MEMBERS}/<i>) and "
                              "build the ensemble again (`udml ensemble`)")
    model, meta = load(path, device)
    assert isinstance(model, FusionNet)
    return model, meta
