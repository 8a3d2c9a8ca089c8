"""An exponential moving average of a model's weights during training (``train.weight_ema``).

Averaging the weights of the last few thousand steps lands nearer the middle of the region
SGD wanders in than any single step does, which usually generalises a little better; the
average is what validation scores, what the best checkpoint holds and what the gates are
calibrated on, while the optimiser keeps stepping the live weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    """A shadow copy of ``model`` whose floating-point parameters and buffers follow the live
    ones as ``shadow ← d·shadow + (1 − d)·live`` after each step, with the decay warmed up as
    ``d = min(decay, (1 + t) / (10 + t))`` over the first steps ``t`` (so the random
    initialisation does not linger); integer buffers (batch-norm step counts) are copied."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.steps = 0
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)
        self._pairs = list(zip(self.shadow.state_dict().values(), model.state_dict().values(),
                               strict=True))

    @torch.no_grad()
    def update(self) -> None:
        """Move the shadow one step toward the live weights."""
        d = min(self.decay, (1.0 + self.steps) / (10.0 + self.steps))
        self.steps += 1
        for s, v in self._pairs:
            if s.is_floating_point():
                s.lerp_(v, 1.0 - d)
            else:
                s.copy_(v)

    def state_dict(self) -> dict[str, object]:
        """The shadow's weights and the step count (for a resumable training state)."""
        return {"steps": self.steps, "shadow": self.shadow.state_dict()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore what ``state_dict`` gave, in place (the live-weight pairs stay valid)."""
        self.steps = int(state["steps"])  # type: ignore[arg-type]
        self.shadow.load_state_dict(state["shadow"])  # type: ignore[arg-type]
