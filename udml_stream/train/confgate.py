"""Calibrating the switch rule's confidence gate on validation data.

The σ̂ gate (``trainer.calibrate_gate``) closes a stream whose estimated noise reaches that of
information-free input. It knows the degradations the estimator was trained on; a stream broken
in a way it never saw can keep a clean-looking σ̂. The confidence gate watches a second, generic
signal of the same stream: the top softmax probability of its unimodal logits. It is fully open
from the 25th percentile of that confidence on clean validation input up, and closed at the
median, over the training families, of each family's median confidence on information-free
input (level 11). Both values come from validation data and the training families only.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from udml_stream.data import avdigits
from udml_stream.model.fusion import FusionNet
from udml_stream.train.trainer import probe_one_stream, set_gate_ends

log = logging.getLogger(__name__)

#: Below this gap between clean and information-free confidence the gate stays open.
MIN_SPAN = 0.05


@torch.no_grad()
def calibrate_confidence_gate(model: FusionNet, val: avdigits.Split,
                              kinds: dict[str, tuple[str, ...]] | None, seed: int,
                              device: torch.device, n: int = 500) -> dict[str, list[float]]:
    """Set ``model.conf_clean`` / ``model.conf_broken`` per modality (one stream degraded at a
    time, the other clean); returns them. A model without the switch rule is left alone."""
    if not hasattr(model, "conf_clean"):
        return {}
    probes = probe_one_stream(
        model, val, kinds, seed + 20_023, device, n,
        lambda res, m: F.softmax(res.unimodal_logits[m].float(), dim=1).amax(dim=1))
    return set_gate_ends(model, probes, ("conf_clean", "conf_broken"), 0.25,
                         lambda c, b, _: c >= b + MIN_SPAN, "confidence")
