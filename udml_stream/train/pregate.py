"""Fitting the switch rule's pretext gate: a self-supervised head per stream, then its ends.

The σ̂, confidence and typicality gates all read what the stream's input *says*; a camera
turned on its side or a mirrored image still says a confident, typical digit. What such inputs
have lost is their *layout*: natural input comes one way up. The pretext head learns exactly
that, with no label and no model of any damage: shown clean training input through each of
four known transforms (``TRANSFORMS``: the rotations of a frame by quarter turns; a spectrogram
as it came, reversed in time, flipped in frequency, or both), it learns which transform was
applied, from the frozen encoder's map pooled to a small grid (``rules.udml.PretextHead``). At
serving it sees the input as it came, and its surprise −log p(untransformed) is the gate's
statistic: small for natural input, large for input no longer the right way up; input with
nothing in it lies in between (shipped: camera 2.33 nats, microphone 0.71).

The head is fitted on clean *training* input (natural variation and the training pose jitter,
two draws per sample, the four transforms of each), each word moved to a random place in its
window (``WordsPlaced``: live windows end at the frame's capture time, so their words are rarely
centred as the cached ones are); the ends are set on validation input with
``set_gate_ends`` as the other gates': open up to the 90th percentile of the clean surprise,
closed at the median over the training families of each family's median surprise on
information-free input, and left open where that does not lie beyond the open end. No degraded
input is used to fit the head; but its quarter turns are what the held-out ``rotate``
degradation does at 90° and 180° (``evaluate/unseen.py`` marks it near them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from udml_stream import corrupt, modalities
from udml_stream.data import avdigits
from udml_stream.data.batching import NaturalInput, make_batch
from udml_stream.data.field import place_words
from udml_stream.model.fusion import FusionNet
from udml_stream.model.preprocess import MISSING_ABSENT_FRACTION
from udml_stream.model.rules.udml import PRETEXT_CLASSES, PretextHead
from udml_stream.train.trainer import probe_one_stream, set_gate_ends, to_torch

log = logging.getLogger(__name__)

#: Each training sample is drawn this many times (natural variation differs per draw).
DRAWS = 2
#: Adam steps and minibatch size of the head's fit (a few seconds on one CPU core).
STEPS, BATCH = 1500, 512
LR, WEIGHT_DECAY = 3e-3, 1e-4
#: The clean-surprise percentile up to which the gate stays fully open.
CLEAN_QUANTILE = 0.90
#: Memory the fitting features of the widest stream may take (float32, every draw and
#: transform): a paper-size encoder (``resnet18``, 4,608 pooled features) over a large split
#: would otherwise hold gigabytes. The field model's 7,000 training samples take 123 MiB.
FEATURE_BUDGET_BYTES = 512 << 20


def _image(x: Tensor, k: int) -> Tensor:
    return torch.rot90(x, k, dims=(2, 3))


def _flips(time_dim: int, other_dim: int) -> Callable[[Tensor, int], Tensor]:
    """Transform ``k`` of a sequence: bit 0 reverses time, bit 1 the other axis."""

    def flip(x: Tensor, k: int) -> Tensor:
        dims = [d for bit, d in ((1, time_dim), (2, other_dim)) if k & bit]
        return torch.flip(x, dims=dims) if dims else x

    return flip


#: Per preprocessing kind, transform ``k`` (0..PRETEXT_CLASSES-1, 0 the identity) of a
#: preprocessed batch: a frame's quarter turns; a log-mel spectrogram [B, 1, frequency, time]
#: reversed in time and/or flipped in frequency; MFCC [B, coefficients, time, 1] reversed in
#: time and/or in coefficient order.
TRANSFORMS: dict[str, Callable[[Tensor, int], Tensor]] = {
    "image": _image, "logmel": _flips(3, 2), "mfcc": _flips(2, 1),
}


class WordsPlaced(avdigits.Split):
    """``split`` with the word of every audio window it gathers moved to a random place where
    it fits whole (``data.field.place_words``). The cached windows centre the word; a live
    window ends at the frame's capture time, so its word is rarely centred. Fitted on centred
    words only, the head read a word 0.2 s off as transformed, and its gate half closed a
    microphone that was 99% right (validation, docs/method.md). The placement draws from a
    generator of its own, so every other draw of the fit (the camera's included) is as before.
    Its ``rows`` and ``subset`` are plain splits: select first, then place.
    """

    def __init__(self, split: avdigits.Split, rng: np.random.Generator) -> None:
        super().__init__(**{f.name: getattr(split, f.name) for f in dataclasses.fields(split)})
        self.rng = rng

    def batch(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The split's own batch, each audio window's word placed at random."""
        raw = super().batch(rows)
        for m, x in raw.items():
            if modalities.kind_of(m, self.kinds).corrupt == "audio":
                raw[m] = place_words(x, self.rng)
        return raw


def pooled_map(model: FusionNet, m: str, x: Tensor) -> Tensor:
    """The encoder map of the preprocessed batch ``x`` pooled as the pretext head reads it."""
    # A turned or flipped view is strided: make it contiguous in the encoder weights' format.
    return PretextHead.pool(model.enc[m](x.contiguous(memory_format=torch.channels_last)))


def _fitting_rows(model: FusionNet, n: int, draws: int, seed: int) -> np.ndarray:
    """The samples of an ``n``-sample split the head is fitted on: all of them, or a seeded
    random subset whose features fit ``FEATURE_BUDGET_BYTES``."""
    widest = max(PretextHead.n_features(model.enc[m].out_channels) for m in model.cfg.modalities)
    most = max(1, FEATURE_BUDGET_BYTES // (4 * widest * PRETEXT_CLASSES * draws))
    if n <= most:
        return np.arange(n)
    log.info("pretext head fitted on %d of %d samples (features capped at %d MiB)", most, n,
             FEATURE_BUDGET_BYTES >> 20)
    return np.sort(np.random.default_rng([seed, n]).choice(n, most, replace=False))


@torch.no_grad()
def pretext_features(model: FusionNet, split: avdigits.Split,
                     kinds: dict[str, tuple[str, ...]] | None, natural: NaturalInput,
                     seed: int, device: torch.device, draws: int = DRAWS
                     ) -> dict[str, tuple[Tensor, Tensor]]:
    """Per modality, pooled maps ``[N, F]`` of clean ``split`` input under every transform and
    the transform indices ``[N]``."""
    model.eval()
    mods = model.cfg.modalities
    # The word anywhere in its window: the head must not learn "centred" as part of
    # "untransformed" (``WordsPlaced``).
    # Placed here with a generator of its own, whatever the training did: not twice.
    split = WordsPlaced(split, np.random.default_rng([seed, 1]))
    natural = dataclasses.replace(natural, place_words=False)
    rows = _fitting_rows(model, len(split), draws, seed)
    rng = np.random.default_rng(seed)
    feats: dict[str, list[Tensor]] = {m: [] for m in mods}
    labels: dict[str, list[Tensor]] = {m: [] for m in mods}
    for _ in range(draws):
        for start in range(0, len(rows), 256):
            r = rows[start : start + 256]
            clean = {m: np.full(len(r), corrupt.CLEAN, np.int64) for m in mods}
            b = make_batch(split, r, clean, rng, kinds, natural=natural)
            inputs, present, _, _ = to_torch(b, device)
            valid = model.input_valid(inputs)
            for m in mods:
                if m not in inputs:
                    continue
                # The rows the model itself counts present (a mostly missing window is absent).
                keep = present[m].bool() & (valid[m] >= 1.0 - MISSING_ABSENT_FRACTION)
                xp = model.prep[m](inputs[m])[keep]
                transform = TRANSFORMS[model.cfg.preprocess[m]["kind"]]
                for k in range(PRETEXT_CLASSES):
                    feats[m].append(pooled_map(model, m, transform(xp, k)).cpu())
                    labels[m].append(torch.full((xp.shape[0],), k))
    return {m: (torch.cat(feats[m]), torch.cat(labels[m])) for m in mods if feats[m]}


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    # The head's matrices are small: a second thread only waits on the first, and on a loaded
    # two-core machine the fit ran 10x slower with two (measured). One thread also keeps the
    # fit bit-identical whatever the caller's thread count.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@_one_thread()
def fit_head(model: FusionNet, m: str, x: Tensor, y: Tensor, seed: int) -> float:
    """Fit ``model.pretext[m]`` on pooled maps ``x`` and transform indices ``y``; returns its
    accuracy on them. Deterministic for a seed."""
    head = model.pretext[m].cpu()
    head.norm.running_mean.copy_(x.mean(dim=0))
    head.norm.running_var.copy_(x.var(dim=0))
    head.eval()  # the standardiser stays fixed; the head has no dropout or batch statistics
    gen = torch.Generator().manual_seed(seed)
    for layer in head.head:
        if isinstance(layer, torch.nn.Linear):
            bound = 1.0 / layer.in_features**0.5
            with torch.no_grad():
                layer.weight.uniform_(-bound, bound, generator=gen)
                layer.bias.uniform_(-bound, bound, generator=gen)
    opt = torch.optim.Adam(head.head.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    head.head.requires_grad_(True)  # frozen outside this fit (``PretextHead``)
    try:
        with torch.enable_grad():
            for _ in range(STEPS):
                idx = torch.randint(0, x.shape[0], (BATCH,), generator=gen)
                loss = F.cross_entropy(head(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        head.head.requires_grad_(False)
    with torch.no_grad():
        return float((head(x).argmax(dim=1) == y).float().mean())


def calibrate_pretext_gate(model: FusionNet, train: avdigits.Split, val: avdigits.Split,
                           kinds: dict[str, tuple[str, ...]] | None, natural: NaturalInput,
                           seed: int, device: torch.device, n: int = 500
                           ) -> dict[str, list[float]]:
    """Fit ``model.pretext`` on clean ``train`` input (with ``natural``, the training's
    natural variation) and set ``pre_clean`` / ``pre_broken`` per modality on ``val``; returns
    the ends and each head's fitting accuracy. A model without the switch rule is left alone."""
    if not hasattr(model, "pretext"):
        return {}
    feats = pretext_features(model, train, kinds, natural, seed + 20_041, device)
    accuracy = []
    for i, m in enumerate(model.cfg.modalities):
        x, y = feats[m]
        accuracy.append(fit_head(model, m, x, y, seed + 20_043 + i))
        log.info("pretext head for %s: %.3f of %d transformed training inputs told apart",
                 m, accuracy[-1], x.shape[0])
    model.to(device)
    # The ends are set on validation windows as cached (centred words): set on words placed
    # anywhere instead, the shipped members' open ends moved by at most 0.02 nats against
    # closed ends of 1.2-2.5 (session 20, docs/method.md), so the simpler draw stays.
    probes = probe_one_stream(model, val, kinds, seed + 20_047, device, n,
                              lambda res, m: res.aux["pretext/" + m])
    # On wherever information-free input lies beyond the open end. Unlike the typicality gate
    # this does not ask for it to lie beyond the clean 99th percentile: a few clean inputs are
    # inherently ambiguous to the head (a 0 or an 8 reads the same turned half-way), and the gate
    # being relative, closing such a one moves its weight to a healthy stream only (validation:
    # docs/method.md).
    ends = set_gate_ends(model, probes, ("pre_clean", "pre_broken"), CLEAN_QUANTILE,
                         lambda c, b, _: b > c, "pretext")
    return {**ends, "fit_accuracy": accuracy}
