"""Ensembles: several checkpoints of one configuration served and evaluated as one model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from udml_stream.cli.main import app
from udml_stream.data import avdigits
from udml_stream.data.batching import make_batch
from udml_stream.errors import CheckpointError
from udml_stream.evaluate import card
from udml_stream.model import checkpoint
from udml_stream.model.ensemble import Ensemble, _looks
from udml_stream.model.rules.udml import LOOKS_PROB
from udml_stream.serve.runner import FusionRunner
from udml_stream.train.trainer import to_torch

ROOT = Path(__file__).resolve().parents[1]
#: One trained model: the shipped ensemble's first member (seed 1 of the field recipe).
SHIPPED = ROOT / "checkpoints" / "default" / "members" / "0"


def _batch(n: int = 6) -> dict[str, torch.Tensor]:
    """Camera frames (a bright square on black, some frames black) and 1 s windows (tones,
    some of them silence): inputs on which the gates and the heads differ between samples."""
    rng = np.random.default_rng(0)
    frames = np.zeros((n, 120, 160, 3), np.float32)
    for i in range(0, n, 2):
        frames[i, 30 + i:70 + i, 50:100] = 200.0
    t = np.arange(16000) / 16000
    waves = np.stack([0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) if i % 3 else
                      1e-4 * rng.standard_normal(16000) for i in range(n)]).astype(np.float32)
    return {"image": torch.from_numpy(frames), "audio": torch.from_numpy(waves)}


def _second_model() -> torch.nn.Module:
    """The shipped model with its first convolution's weights perturbed: a member of the same
    configuration that answers differently."""
    m, _ = checkpoint.load(SHIPPED)
    torch.manual_seed(0)
    with torch.no_grad():
        w = next(p for n, p in m.named_parameters() if n.startswith("enc.image"))
        w.add_(0.5 * torch.randn_like(w))
    return m


def _second_checkpoint(path: Path) -> Path:
    """``_second_model`` written as a checkpoint beside the shipped one's facts."""
    meta = checkpoint.read_meta(SHIPPED)
    extra = {k: v for k, v in meta.items()
             if k not in ("format", "model", "class_names", "dependency", "card")}
    return checkpoint.save(_second_model(), path, meta["class_names"], {**extra, "seed": 7})


def test_looks_is_the_mean_transform_posterior_where_most_members_may_judge() -> None:
    t = torch.tensor
    probs = [t([[0.9, 0.1, 0.0, 0.0], [0.2, 0.7, 0.1, 0.0], [0.1, 0.9, 0.0, 0.0],
                [0.1, 0.9, 0.0, 0.0]]),
             t([[0.7, 0.3, 0.0, 0.0], [0.1, 0.1, 0.8, 0.0], [0.1, 0.9, 0.0, 0.0],
                [0.55, 0.45, 0.0, 0.0]]),
             t([[0.8, 0.2, 0.0, 0.0], [0.6, 0.2, 0.2, 0.0], [0.1, 0.9, 0.0, 0.0],
                [0.55, 0.45, 0.0, 0.0]])]
    yes, no = True, False
    judge = [t([yes, yes, yes, yes]), t([yes, yes, no, yes]), t([yes, yes, no, yes])]
    # Row 0: sure of upright. Row 1: each member sure of another transform, none at a mean of
    # 0.5. Row 2: all name a quarter turn, but only one member of three may judge. Row 3: two
    # members' own picks say upright, yet the mean posterior names the quarter turn (0.6).
    assert _looks(probs, judge).tolist() == [0.0, -1.0, -1.0, 1.0]
    # Two of three may judge: enough.
    two = [t([yes, yes, yes, yes]), t([yes, yes, yes, yes]), t([no, no, no, no])]
    assert _looks(probs, two).tolist() == [0.0, -1.0, 1.0, 1.0]
    # Two members, one may judge: not enough.
    assert _looks(probs[:2], [t([yes] * 4), t([no] * 4)]).tolist() == [-1.0] * 4


def test_a_turned_camera_is_judged_by_an_ensemble_of_two_shipped_members(
        field_data: avdigits.AVDigits) -> None:
    """Real test frames turned a quarter: the members judge some, and the ensemble's looks is
    the mean posterior where both may judge (not a case the synthetic batch reaches)."""
    a, b = (checkpoint.load(ROOT / "checkpoints" / "default" / "members" / str(i))[0]
            for i in (0, 1))
    split = field_data.splits["test"].subset(96, seed=0)
    ones = {m: np.ones(len(split), np.int64) for m in field_data.modalities}
    batch = make_batch(split, np.arange(len(split)), ones, np.random.default_rng(0))
    inputs, present, _, _ = to_torch(batch, torch.device("cpu"))
    inputs = {**inputs, "image": torch.rot90(inputs["image"], 1, dims=(1, 2))}
    with torch.no_grad():
        oa, ob, oe = a(inputs, present), b(inputs, present), Ensemble([a, b]).eval()(inputs,
                                                                                     present)
    p_top, k_top = ((oa.aux["transform_p/image"] + ob.aux["transform_p/image"]) / 2).max(1)
    both = oa.aux["may_judge/image"] & ob.aux["may_judge/image"]
    want = torch.where(both & (p_top >= LOOKS_PROB), k_top.float(), torch.full_like(p_top, -1.0))
    assert torch.equal(oe.aux["looks/image"], want)
    assert int((want == 1).sum()) >= 5  # a quarter turn counter-clockwise, named


def test_the_ensemble_answers_with_the_mean_of_its_members_posteriors() -> None:
    a, _ = checkpoint.load(SHIPPED)
    b = _second_model()
    ens = Ensemble([a, b]).eval()
    x = _batch()
    with torch.no_grad():
        oa, ob, oe = a(x), b(x), ens(x)
    assert not torch.allclose(oa.logits, ob.logits, atol=1e-3)  # the members differ
    mean = (torch.softmax(oa.logits, 1) + torch.softmax(ob.logits, 1)) / 2
    assert torch.allclose(torch.softmax(oe.logits, 1), mean, atol=1e-6)
    for m in ("image", "audio"):
        assert torch.allclose(oe.multipliers[m], (oa.multipliers[m] + ob.multipliers[m]) / 2)
        assert torch.allclose(oe.sigma_hat[m], (oa.sigma_hat[m] + ob.sigma_hat[m]) / 2)
        assert torch.allclose(oe.aux[f"gate/{m}"], (oa.aux[f"gate/{m}"] + ob.aux[f"gate/{m}"]) / 2)
        # looks: the mean transform posterior where both members may judge (two members: more
        # than half is both), else −1 (judged on real frames in the test below)
        p_top, k_top = ((oa.aux[f"transform_p/{m}"] + ob.aux[f"transform_p/{m}"]) / 2).max(1)
        both = oa.aux[f"may_judge/{m}"] & ob.aux[f"may_judge/{m}"]
        want = torch.where(both & (p_top >= LOOKS_PROB), k_top.float(),
                           torch.full_like(p_top, -1.0))
        assert torch.equal(oe.aux[f"looks/{m}"], want)
    head = (torch.softmax(oa.aux["head_logits"], 1) + torch.softmax(ob.aux["head_logits"], 1)) / 2
    assert torch.allclose(torch.softmax(oe.aux["head_logits"], 1), head, atol=1e-6)
    # A conflict: the averaged heads disagree where some member's conflict rule answered.
    tops = torch.stack([oe.unimodal_logits[m].argmax(1) for m in ("image", "audio")], 1)
    pres = torch.stack([oe.present[m] for m in ("image", "audio")], 1)
    disagree = pres.all(1) & (tops[:, 0] != tops[:, 1])
    assert torch.equal(oe.aux["conflict"], disagree & (oa.aux["conflict"] | ob.aux["conflict"]))
    # Identical members: the ensemble is the member, conflicts included.
    same = Ensemble([a, checkpoint.load(SHIPPED)[0]]).eval()
    with torch.no_grad():
        os_ = same(x)
    assert torch.equal(os_.logits.argmax(1), oa.logits.argmax(1))
    assert torch.equal(os_.aux["conflict"], oa.aux["conflict"])


def test_udml_ensemble_writes_a_checkpoint_every_command_serves(tmp_path: Path) -> None:
    second = _second_checkpoint(tmp_path / "second")
    out = tmp_path / "ens"
    r = CliRunner().invoke(app, ["ensemble", str(out), str(SHIPPED), str(second)])
    assert r.exit_code == 0, r.output
    meta = checkpoint.read_meta(out)
    assert meta["members"] == ["members/0", "members/1"]
    assert not set(checkpoint.PER_MODEL_KEYS) & set(meta)  # no member's facts as the ensemble's
    assert [f["seed"] for f in meta["member_facts"]] == [checkpoint.read_meta(SHIPPED)["seed"], 7]
    assert meta["member_facts"][1]["copied_from"] == str(second.resolve())
    model, _ = checkpoint.load(out)
    assert isinstance(model, Ensemble) and not model.training
    # Through the runner and its engine: the mean of the members' answers.
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[140:340, 220:420] = 220
    t = np.arange(16000) / 16000
    sample = {"image": frame, "audio": (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)}
    got, a, b = (FusionRunner(p, "cpu", 1).predict(sample) for p in (out, SHIPPED, second))
    assert np.allclose(got.probs, (np.array(a.probs) + np.array(b.probs)) / 2, atol=1e-5)
    assert got.weights == pytest.approx({m: (a.weights[m] + b.weights[m]) / 2 for m in a.weights},
                                        abs=1e-5)
    # The card names the members' weights, and says it is an ensemble.
    h = hashlib.sha256()
    for sub in meta["members"]:
        h.update((out / sub / checkpoint.WEIGHTS).read_bytes())
    assert card.weights_digest(out) == h.hexdigest()
    field = json.loads((ROOT / "docs" / "results" / "field.json").read_text())
    facts = card.build_card(meta, field, card.weights_digest(out))
    md = tmp_path / "card.md"
    card.write_markdown(facts, md, str(out))
    assert "An ensemble of 2 models trained alike" in md.read_text()


def test_mismatched_nested_or_misplaced_ensembles_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    second = str(_second_checkpoint(tmp_path / "second"))
    run = CliRunner().invoke
    r = run(app, ["ensemble", str(tmp_path / "a"), str(SHIPPED), str(ROOT / "checkpoints"
                                                                     / "field2cam")])
    assert r.exit_code != 0 and "another model configuration" in r.output
    r = run(app, ["ensemble", str(tmp_path / "b"), str(SHIPPED)])
    assert r.exit_code != 0 and "at least 2 members" in r.output
    r = run(app, ["ensemble", str(tmp_path / "b2"), str(SHIPPED), str(SHIPPED)])
    assert r.exit_code != 0 and "same weights are given twice" in r.output
    assert run(app, ["ensemble", str(tmp_path / "c"), str(SHIPPED), second]).exit_code == 0
    r = run(app, ["ensemble", str(tmp_path / "c"), str(SHIPPED), second])
    assert r.exit_code != 0 and "not an empty directory" in r.output
    (tmp_path / "file").write_text("x")
    r = run(app, ["ensemble", str(tmp_path / "file"), str(SHIPPED), second])
    assert r.exit_code != 0 and "not an empty directory" in r.output
    r = run(app, ["ensemble", str(tmp_path / "d"), str(tmp_path / "c"), str(SHIPPED)])
    assert r.exit_code != 0 and "cannot itself be an ensemble" in r.output
    # A failed copy leaves nothing behind, so the same command can simply run again.
    calls = {"n": 0}
    copy = checkpoint.shutil.copy2

    def failing_copy(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return copy(*args, **kwargs)

    monkeypatch.setattr(checkpoint.shutil, "copy2", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_ensemble(tmp_path / "e", [SHIPPED, Path(second)])
    monkeypatch.undo()
    assert not (tmp_path / "e").exists() and not (tmp_path / ".e.partial").exists()
    assert checkpoint.save_ensemble(tmp_path / "e", [SHIPPED, Path(second)]).is_dir()
    # Member lists that point outside the checkpoint, at itself, or name one member.
    meta = json.loads((tmp_path / "c" / checkpoint.CONFIG).read_text())
    for members, why in (([".", "members/0"], "not a directory inside"),
                         (["../second", "members/0"], "not a directory inside"),
                         (["members/0"], "at least 2")):
        (tmp_path / "c" / checkpoint.CONFIG).write_text(json.dumps({**meta, "members": members}))
        with pytest.raises(CheckpointError, match=why):
            checkpoint.load(tmp_path / "c")
    # Tasks that change one model's weights say how to go about an ensemble.
    with pytest.raises(CheckpointError, match="run it on each member"):
        checkpoint.load_one(tmp_path / "c", "cpu", "recalibrating the gates")


@pytest.mark.parametrize(("name", "members"), [("default", 3), ("default/members/0", 0)])
def test_the_committed_checkpoints_cards_were_measured_on_their_weights(name: str, members: int
                                                                       ) -> None:
    """A card (and its "where it breaks" part) names the weights it was measured on: after any
    change of weights both must be regenerated (`udml eval-field --card`, then `udml
    eval-unseen --card`)."""
    ck = ROOT / "checkpoints" / name  # the shipped ensemble, and its first member alone
    model, meta = checkpoint.load(ck)
    assert len(getattr(model, "members", ())) == members
    digest = card.weights_digest(ck)
    assert meta["card"]["weights_sha256"] == digest
    assert meta["card"]["held_out"]["weights_sha256"] == digest
