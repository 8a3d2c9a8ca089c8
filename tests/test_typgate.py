"""The switch rule's typicality gate: a stream whose embedding lies far from every clean class
centre loses its weight; an unfitted gate changes nothing; calibration fits centres on one half
of validation and sets the thresholds on the other."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from udml_stream.model import checkpoint
from udml_stream.model.rules import Udml
from udml_stream.train.typgate import calibrate_typicality_gate, fit_centres

from .test_confgate import _inputs, _switch_model

CKPT = Path(__file__).parent.parent / "checkpoints" / "default"
#: The shipped checkpoint is an ensemble: each of its members carries its own gates.
MEMBERS = checkpoint.member_dirs(CKPT)


def test_fit_centres_recovers_the_class_means_and_an_inverse_covariance() -> None:
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(np.repeat(np.arange(3), 400))
    true = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    x = true[labels] + torch.from_numpy(rng.normal(0, 1, (1200, 2))).float()
    means, prec = fit_centres(x, labels, num_classes=4)
    assert torch.allclose(means[:3], true, atol=0.15)
    assert torch.isinf(means[3]).all()  # a class never seen is never the nearest centre
    # Unit within-class variance: the precision is close to the identity.
    assert torch.allclose(prec, torch.eye(2), atol=0.15)


def test_typicality_ignores_a_class_without_centre() -> None:
    class Net:  # what Udml.typicality reads of the model
        cfg = type("Cfg", (), {"modalities": ("image",)})()
        typ_means = torch.tensor([[[0.0, 0.0], [float("inf"), float("inf")]]])
        # Off-diagonal terms make inf − inf appear in the quadratic form.
        typ_prec = torch.tensor([[[1.0, -0.5], [-0.5, 1.0]]])

    d = Udml.typicality(Net(), {"image": torch.tensor([[3.0, 4.0], [0.0, 0.0]])})
    assert torch.isfinite(d).all()
    assert torch.allclose(d[:, 0], torch.tensor([13.0 ** 0.5, 0.0]))


@torch.no_grad()
def test_a_far_embedding_loses_its_weight_and_an_unfitted_gate_changes_nothing(small_data
                                                                                ) -> None:
    model = _switch_model(small_data)
    inputs, present, levels, _ = _inputs(small_data)
    open_out = model(inputs, present, levels)
    i_img, i_aud = model.cfg.modalities.index("image"), model.cfg.modalities.index("audio")
    d = model.cfg.embed_dim
    # Centres far from every image embedding, at the audio embeddings' own mean for audio.
    emb = {m: open_out.aux["embedding/" + m] for m in model.cfg.modalities}
    model.typ_means[i_img] = 1e3
    model.typ_means[i_aud] = emb["audio"].mean(dim=0)
    model.typ_prec[:] = torch.eye(d)
    typ = Udml.typicality(model, emb)
    model.typ_clean[i_img], model.typ_broken[i_img] = 1.0, 2.0  # every image sample beyond
    model.typ_clean[i_aud] = float(typ[:, i_aud].max()) + 1.0  # every audio sample within
    model.typ_broken[i_aud] = float(typ[:, i_aud].max()) + 2.0
    gated = model(inputs, present, levels)
    assert torch.all(gated.multipliers["image"] == 0)
    assert torch.all(gated.multipliers["audio"] > 0)
    # Back to zeros (a checkpoint without the calibration): the ungated answer, bit for bit.
    for name in ("typ_means", "typ_prec", "typ_clean", "typ_broken"):
        getattr(model, name).zero_()
    again = model(inputs, present, levels)
    assert torch.equal(again.logits, open_out.logits)


def test_calibration_sets_information_free_beyond_clean(small_data) -> None:
    model = _switch_model(small_data)
    got = calibrate_typicality_gate(model, small_data.splits["val"], None, 0,
                                    torch.device("cpu"), n=64)
    assert torch.isfinite(model.typ_prec).all() and model.typ_prec.abs().sum() > 0
    # An untrained encoder may not set broken input apart: then its gate stays open (0, 0).
    for clean, broken in zip(got["clean"], got["broken"], strict=True):
        assert (clean == broken == 0.0) or broken > clean > 0


@pytest.mark.parametrize("ck", MEMBERS, ids=lambda p: f"member{p.name}")
def test_the_shipped_checkpoint_carries_a_fitted_typicality_gate(ck: Path) -> None:
    model, meta = checkpoint.load(ck, torch.device("cpu"))
    clean, broken = model.typ_clean.tolist(), model.typ_broken.tolist()
    assert meta["typicality_gate"] == {"clean": pytest.approx(clean),
                                       "broken": pytest.approx(broken)}
    # Every gate that is on opens below where it closes. A member's calibration may leave a
    # stream's gate off, where information-free input does not lie beyond its clean 99th
    # percentile (session 21's member 2: both streams); the ensemble's are checked below.
    assert all(c == b == 0 or b > c > 0 for c, b in zip(clean, broken, strict=True))
    assert torch.isfinite(model.typ_prec).all()


def test_the_shipped_ensemble_has_a_typicality_gate_on_for_each_stream() -> None:
    on = []  # per member, per stream: is its typicality gate on?
    for ck in MEMBERS:
        model, _ = checkpoint.load(ck, torch.device("cpu"))
        on.append([b > c > 0 for c, b in zip(model.typ_clean.tolist(),
                                             model.typ_broken.tolist(), strict=True)])
    # For each stream, at least one member's typicality gate acts.
    assert all(any(row[i] for row in on) for i in range(len(on[0]))), on
