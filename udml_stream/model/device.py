"""Which torch device a program runs on; shared by serving and training (serving must not import
the training package for it: the fusion node would load the data and loss modules it never uses)."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; any other name as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
