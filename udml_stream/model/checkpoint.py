"""Self-contained checkpoints: ``model.safetensors`` + ``config.json`` in one directory.

The JSON holds the model config (including preprocessing parameters), class names, the
dependency statistics (also a buffer in the weights) and free-form training facts. Loading never
unpickles: weights come from safetensors, everything else from JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from udml_stream.errors import CheckpointError
from udml_stream.model.fusion import FusionNet, ModelConfig

FORMAT = "udml-checkpoint/1"
#: State that a checkpoint may lack (the model's defaults stand in).
OPTIONAL_BUFFERS = ("gate_clean", "gate_broken", "conf_clean", "conf_broken", "typ_means",
                    "typ_prec", "typ_clean", "typ_broken", "pre_clean", "pre_broken")
#: Modules a checkpoint may lack (fitted after training; left unfitted, their gate stays open).
OPTIONAL_PREFIXES = ("pretext.",)
WEIGHTS, CONFIG = "model.safetensors", "config.json"


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


def load(path: Path, device: str | torch.device = "cpu") -> tuple[FusionNet, dict[str, Any]]:
    """Rebuild the model stored at ``path`` in eval mode, with no other information needed."""
    meta = read_meta(path)
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
