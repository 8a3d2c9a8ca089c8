"""Calibrating the switch rule's typicality gate on validation data.

The σ̂ gate knows the degradations the estimator was trained on and the confidence gate watches
the stream's own top softmax probability; a stream broken in a way neither saw can keep both
looking clean (a mirrored camera still yields a confident digit, a high-passed microphone a
confident word). The typicality gate watches a third signal that needs no label and no model of
the damage: how far the stream's embedding lies from the embeddings of clean input. It fits
class centres and a shared, shrunk covariance of the embedding on clean validation input
(one half of the split), then, on the other half, opens the gate up to the 90th percentile of
the clean Mahalanobis distance to the nearest centre and closes it at the median, over the
training families, of each family's median distance on information-free input (level 11); a
stream whose information-free input does not lie beyond the 99th percentile of clean input keeps
the gate open. Everything comes from validation data and the training families.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from udml_stream import corrupt
from udml_stream.data import avdigits
from udml_stream.data.batching import make_batch
from udml_stream.model.fusion import FusionNet
from udml_stream.train.trainer import probe_one_stream, set_gate_ends, to_torch

log = logging.getLogger(__name__)

#: Weight of the scaled identity mixed into the within-class covariance (a 64-dimensional
#: covariance from a few hundred samples is otherwise near singular).
SHRINKAGE = 0.1
#: Each fitting sample is drawn this many times (natural variation differs per draw).
DRAWS = 3
#: The clean-distance percentile up to which the gate stays fully open.
CLEAN_QUANTILE = 0.90


def split_halves(val: avdigits.Split, seed: int) -> tuple[avdigits.Split, avdigits.Split]:
    """Two disjoint halves of ``val``: a gate's statistic is fitted on one, its thresholds set
    on the other (the fitting samples themselves would read too clean)."""
    rows = np.random.default_rng(seed).permutation(len(val))
    half = len(rows) // 2
    return val.rows(rows[:half]), val.rows(rows[half:])


def fit_centres(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Class centres ``[C, d]`` and the precision ``[d, d]`` of the shrunk within-class
    covariance of ``embeddings`` ``[N, d]``; a class without samples gets a centre at infinity
    (never the nearest)."""
    x, d = embeddings.double(), embeddings.shape[1]
    means = torch.full((num_classes, d), float("inf"), dtype=torch.float64)
    resid = []
    for c in range(num_classes):
        rows = x[labels == c]
        if rows.shape[0]:
            means[c] = rows.mean(dim=0)
            resid.append(rows - means[c])
    r = torch.cat(resid)
    cov = r.T @ r / max(r.shape[0] - len(resid), 1)
    cov = (1 - SHRINKAGE) * cov + SHRINKAGE * cov.trace() / d * torch.eye(d, dtype=cov.dtype)
    return means.float(), torch.linalg.inv(cov).float()


@torch.no_grad()
def calibrate_typicality_gate(model: FusionNet, val: avdigits.Split,
                              kinds: dict[str, tuple[str, ...]] | None, seed: int,
                              device: torch.device, n: int = 500) -> dict[str, list[float]]:
    """Fit ``model.typ_means`` / ``typ_prec`` and set ``typ_clean`` / ``typ_broken`` per
    modality (one stream degraded at a time, the others clean); returns the thresholds. A model
    without the switch rule is left alone."""
    if not hasattr(model, "typ_means"):
        return {}
    model.eval()
    fit, calib = split_halves(val, seed + 20_029)
    mods = model.cfg.modalities
    rng = np.random.default_rng(seed + 20_031)
    emb: dict[str, list[torch.Tensor]] = {m: [] for m in mods}
    labels: dict[str, list[torch.Tensor]] = {m: [] for m in mods}
    for _ in range(DRAWS):
        for start in range(0, len(fit), 256):
            r = np.arange(start, min(start + 256, len(fit)))
            clean = {m: np.full(len(r), corrupt.CLEAN, np.int64) for m in mods}
            b = make_batch(fit, r, clean, rng, kinds)
            inputs, present, levels, y = to_torch(b, device)
            res = model(inputs, present, levels)
            for m in mods:
                keep = res.present[m]
                emb[m].append(res.aux["embedding/" + m][keep].cpu())
                labels[m].append(y[keep].cpu())
    for i, m in enumerate(mods):
        means, prec = fit_centres(torch.cat(emb[m]), torch.cat(labels[m]), model.cfg.num_classes)
        model.typ_means[i], model.typ_prec[i] = means.to(device), prec.to(device)
    probes = probe_one_stream(model, calib, kinds, seed + 20_037, device, n,
                              lambda res, m: res.aux["typicality/" + m])
    # On only where information-free input lies beyond what clean input almost ever reaches
    # (its 99th percentile): a gate closing within the clean range would cut healthy streams.
    return set_gate_ends(model, probes, ("typ_clean", "typ_broken"), CLEAN_QUANTILE,
                         lambda c, b, clean: b > float(torch.quantile(clean, 0.99)), "typicality")
