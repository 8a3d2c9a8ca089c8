"""The switch rule's pretext gate: a self-supervised head tells which known transform an input
went through; at serving, a stream whose input it finds transformed (not the right way up)
loses its weight, as far as another stream is healthy; an unfitted gate changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from udml_stream.data import avdigits
from udml_stream.data.batching import NaturalInput, make_batch
from udml_stream.data.field import place_words
from udml_stream.evaluate import unseen
from udml_stream.model import checkpoint
from udml_stream.model.rules.udml import PRETEXT_CLASSES
from udml_stream.model.rules.weighting import gate_openness
from udml_stream.train.pregate import (
    TRANSFORMS,
    WordsPlaced,
    calibrate_pretext_gate,
    fit_head,
)
from udml_stream.train.trainer import to_torch

from .test_confgate import _inputs, _switch_model

CKPT = Path(__file__).parent.parent / "checkpoints" / "default"
#: The shipped checkpoint is an ensemble: each of its members carries its own gates.
MEMBERS = checkpoint.member_dirs(CKPT)


@pytest.mark.parametrize("kind,shape", [("image", (2, 1, 6, 6)), ("logmel", (2, 1, 5, 7)),
                                        ("mfcc", (2, 4, 7, 1))])
def test_the_transforms_are_distinct_and_the_first_is_the_identity(
        kind: str, shape: tuple[int, ...]) -> None:
    x = torch.arange(float(np.prod(shape))).reshape(shape)  # no symmetry at all
    out = [TRANSFORMS[kind](x, k) for k in range(PRETEXT_CLASSES)]
    assert torch.equal(out[0], x)
    for i in range(PRETEXT_CLASSES):
        assert out[i].shape == x.shape
        for j in range(i):
            assert not torch.equal(out[i], out[j]), (kind, i, j)


def test_fit_head_learns_separable_transforms_and_is_deterministic(small_data) -> None:
    model = _switch_model(small_data)
    n_feat = model.pretext["image"].norm.num_features
    g = torch.Generator().manual_seed(0)
    y = torch.arange(800) % PRETEXT_CLASSES
    centres = 3.0 * torch.randn(PRETEXT_CLASSES, n_feat, generator=g) + 5.0
    x = centres[y] + torch.randn(800, n_feat, generator=g)
    threads = torch.get_num_threads()
    acc = fit_head(model, "image", x, y, seed=1)
    assert acc > 0.99
    # Frozen again after the fit (training never updates it), the caller's threads restored.
    assert not any(p.requires_grad for p in model.pretext.parameters())
    assert torch.get_num_threads() == threads
    first = [p.clone() for p in model.pretext["image"].parameters()]
    fit_head(model, "image", x, y, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(first, model.pretext["image"].parameters(),
                                                 strict=True))
    # Its surprise at an untransformed input is small, at a transformed one large.
    with torch.no_grad():
        s = model.pretext["image"].surprise(x)
    assert float(s[y == 0].mean()) < 0.1 < 2.0 < float(s[y != 0].mean())


@torch.no_grad()
def test_a_surprising_stream_loses_its_weight_and_an_unfitted_gate_changes_nothing(
        small_data) -> None:
    model = _switch_model(small_data)
    inputs, present, levels, _ = _inputs(small_data)
    open_out = model(inputs, present, levels)
    i_img, i_aud = model.cfg.modalities.index("image"), model.cfg.modalities.index("audio")
    # The image head sure that every input was turned, the audio head sure that none was.
    for m, cls in (("image", 2), ("audio", 0)):
        last = model.pretext[m].head[-1]
        last.weight.zero_()
        last.bias.fill_(-20.0)
        last.bias[cls] = 20.0
    for i in (i_img, i_aud):
        model.pre_clean[i], model.pre_broken[i] = 1.0, 2.0
    gated = model(inputs, present, levels)
    assert torch.all(gated.aux["pretext/image"] > 30) and torch.all(gated.aux["pretext/audio"] < 1e-6)
    assert torch.all(gated.multipliers["image"] == 0)
    assert torch.all(gated.multipliers["audio"] > 0)
    # Back to zeros (a checkpoint without the calibration): the ungated answer, bit for bit.
    model.pre_clean.zero_()
    model.pre_broken.zero_()
    again = model(inputs, present, levels)
    assert torch.equal(again.logits, open_out.logits)


def test_calibration_fits_the_heads_and_sets_the_ends(small_data) -> None:
    model = _switch_model(small_data)
    before = {k: v.clone() for k, v in model.pretext.state_dict().items()}
    got = calibrate_pretext_gate(model, small_data.splits["train"].subset(64, seed=0),
                                 small_data.splits["val"], None, NaturalInput(), 0,
                                 torch.device("cpu"), n=64)
    # Even an untrained encoder's map tells quarter turns and flips apart better than chance.
    assert all(a > 1.0 / PRETEXT_CLASSES + 0.1 for a in got["fit_accuracy"])
    for clean, broken in zip(got["clean"], got["broken"], strict=True):
        assert (clean == broken == 0.0) or broken > clean >= 0
    assert model.pre_clean.tolist() == pytest.approx(got["clean"])
    assert model.pre_broken.tolist() == pytest.approx(got["broken"])
    after = model.pretext.state_dict()
    for m in model.cfg.modalities:  # weights and standardiser fitted
        for k in (f"{m}.head.0.weight", f"{m}.norm.running_mean"):
            assert not torch.equal(before[k], after[k]), k


@torch.no_grad()
def test_a_checkpoint_saved_before_the_pretext_gate_loads_and_answers_as_before(
        small_data, tmp_path: Path) -> None:
    model = _switch_model(small_data)
    inputs, present, levels, _ = _inputs(small_data)
    want = model(inputs, present, levels).logits
    checkpoint.save(model, tmp_path, [str(c) for c in range(10)], {})
    weights = tmp_path / checkpoint.WEIGHTS
    state = {k: v for k, v in load_file(str(weights)).items()
             if not k.startswith("pretext.") and k not in ("pre_clean", "pre_broken")}
    save_file(state, str(weights), metadata={"format": checkpoint.FORMAT})
    old, _ = checkpoint.load(tmp_path)
    assert not old.pre_clean.any() and not old.pre_broken.any()
    assert torch.equal(old(inputs, present, levels).logits, want)


@torch.no_grad()
@pytest.mark.parametrize("ck", MEMBERS, ids=lambda p: f"member{p.name}")
def test_the_shipped_checkpoint_closes_a_camera_turned_on_its_side(
        ck: Path, field_data: avdigits.AVDigits) -> None:
    model, meta = checkpoint.load(ck, torch.device("cpu"))
    assert meta["pretext_gate"]["clean"] == pytest.approx(model.pre_clean.tolist())
    assert meta["pretext_gate"]["broken"] == pytest.approx(model.pre_broken.tolist())
    i_img = model.cfg.modalities.index("image")
    assert model.pre_broken[i_img] > model.pre_clean[i_img] > 0
    split = field_data.splits["test"].subset(64, seed=2)
    ones = {m: np.ones(len(split), np.int64) for m in field_data.modalities}
    b = make_batch(split, np.arange(len(split)), ones, np.random.default_rng(0))
    inputs, present, _, _ = to_torch(b, torch.device("cpu"))
    upright = model(inputs, present)
    turned = model({**inputs, "image": torch.rot90(inputs["image"], 1, dims=(1, 2))}, present)
    # Upright frames: the camera's pretext gate open on most; turned a quarter: closed on most.
    lo, hi = float(model.pre_clean[i_img]), float(model.pre_broken[i_img])
    assert float((upright.aux["pretext/image"] <= lo).float().mean()) > 0.8
    assert float((turned.aux["pretext/image"] >= hi).float().mean()) > 0.7
    assert float(turned.aux["gate/image"].mean()) < float(upright.aux["gate/image"].mean()) - 0.5


@torch.no_grad()
@pytest.mark.parametrize("ck", MEMBERS, ids=lambda p: f"member{p.name}")
def test_the_shipped_microphone_is_open_to_a_word_off_its_moment(
        ck: Path, field_data: avdigits.AVDigits) -> None:
    # A live window ends at the frame's capture time, so its word is rarely centred. Before the
    # head was fitted with words placed anywhere, a word 0.2 s off left the microphone's
    # pretext gate half open (member 0, validation: 0.50) though the microphone was 99% right.
    model, _ = checkpoint.load(ck, torch.device("cpu"))
    i_mic = model.cfg.modalities.index("audio")
    lo, hi = float(model.pre_clean[i_mic]), float(model.pre_broken[i_mic])
    split = field_data.splits["test"].subset(64, seed=2)
    ones = {m: np.ones(len(split), np.int64) for m in field_data.modalities}
    b = make_batch(split, np.arange(len(split)), ones, np.random.default_rng(0))
    unseen.edit(unseen.get("audio", "shift"), 2)(b, np.random.default_rng(1))  # 0.2 s off
    inputs, present, _, y = to_torch(b, torch.device("cpu"))
    out = model(inputs, present)
    assert float((out.unimodal_logits["audio"].argmax(1) == y).float().mean()) > 0.9
    openness = gate_openness(out.aux["pretext/audio"][:, None], torch.tensor([lo]),
                             torch.tensor([hi]))
    assert float(openness.mean()) > 0.85


def test_words_are_placed_whole_anywhere_in_their_window() -> None:
    n, rows = 100, 300
    x = np.zeros((rows, n), np.float32)
    x[:, 40:60] = np.arange(1, 21, dtype=np.float32)  # a word: 20 samples, none alike
    x[:, 38] = 0.01  # below 2% of the peak: room, not word (it moves with the window)
    x[-1] = 0.0  # a silent window stays as it was
    out = place_words(x, np.random.default_rng(0))
    starts = []
    for i in range(rows - 1):
        start = int(np.flatnonzero(out[i] >= 1.0)[0])
        np.testing.assert_array_equal(out[i], np.roll(x[i], start - 40))  # moved, not changed
        assert start + 20 <= n  # whole: never wrapped round the window's end
        starts.append(start)
    assert min(starts) <= 5 and max(starts) >= n - 25  # anywhere, ends included
    np.testing.assert_array_equal(out[-1], x[-1])


def test_the_fit_places_words_on_a_generator_of_its_own(
        field_data: avdigits.AVDigits) -> None:
    split = field_data.splits["train"].rows(np.arange(16))
    placed = WordsPlaced(split, np.random.default_rng(0))
    rows = np.arange(16)
    raw, got = split.batch(rows), placed.batch(rows)
    np.testing.assert_array_equal(got["image"], raw["image"])  # the camera as it was
    moved = 0
    for a, b in zip(raw["audio"], got["audio"], strict=True):
        lag = int(np.argmax(b != 0)) - int(np.argmax(a != 0))  # where the word now starts
        np.testing.assert_array_equal(np.roll(a, lag), b)  # each window is its own, rolled
        moved += lag != 0
    assert moved >= 14
    # The fit's other draws come from the caller's generator, untouched by the placement.
    one, two = np.random.default_rng(5), np.random.default_rng(5)
    ones = {m: np.ones(16, np.int64) for m in split.tables}
    b1 = make_batch(split, rows, ones, one, natural=NaturalInput())
    b2 = make_batch(placed, rows, ones, two, natural=NaturalInput())
    np.testing.assert_array_equal(b1.inputs["image"], b2.inputs["image"])
    assert one.random() == two.random()


def test_fitting_features_stay_within_their_memory_budget(small_data, monkeypatch) -> None:
    import udml_stream.train.pregate as pregate

    model = _switch_model(small_data)
    split = small_data.splits["train"].subset(40, seed=0)
    n_feat = max(model.pretext[m].norm.num_features for m in model.cfg.modalities)
    # A budget for 10 samples of the widest stream, two draws, every transform.
    monkeypatch.setattr(pregate, "FEATURE_BUDGET_BYTES", 4 * n_feat * PRETEXT_CLASSES * 2 * 10)
    feats = pregate.pretext_features(model, split, None, NaturalInput(), 0, torch.device("cpu"))
    for x, y in feats.values():
        assert x.shape[0] == y.shape[0] <= 10 * PRETEXT_CLASSES * 2
        assert torch.bincount(y).tolist() == [x.shape[0] // PRETEXT_CLASSES] * PRETEXT_CLASSES
    # Within the budget every sample is used (the shipped fit: all 7,000 training samples).
    monkeypatch.setattr(pregate, "FEATURE_BUDGET_BYTES", 1 << 30)
    feats = pregate.pretext_features(model, split, None, NaturalInput(), 0, torch.device("cpu"))
    assert all(x.shape[0] == len(split) * PRETEXT_CLASSES * 2 for x, _ in feats.values())


def test_the_joint_pretext_term_trains_encoders_and_heads_on_clean_input_only(
        small_data) -> None:
    from udml_stream.train.trainer import pretext_loss

    model = _switch_model(small_data).train()
    model.pretext.requires_grad_(True)  # as train() does with train.pretext_weight > 0
    inputs, present, levels, _ = _inputs(small_data)
    stats = {k: v.clone() for k, v in model.enc.state_dict().items() if "running" in k}
    assert stats  # the encoders hold batch norm
    loss = pretext_loss(model, inputs, present, levels)
    # Batch norm's running statistics (what evaluation uses) are not pulled toward transformed
    # inputs.
    assert all(torch.equal(v, model.enc.state_dict()[k]) for k, v in stats.items())
    # An untrained head is near chance over the transforms.
    assert abs(float(loss.detach()) - float(np.log(PRETEXT_CLASSES))) < 1.0
    loss.backward()
    for m in model.cfg.modalities:
        assert model.pretext[m].head[0].weight.grad.abs().sum() > 0
        assert any(p.grad is not None and p.grad.abs().sum() > 0
                   for p in model.enc[m].parameters())
    # No clean sample in the batch: no term (and no gradient).
    noisy = {m: torch.full_like(v, 5) for m, v in levels.items()}
    assert float(pretext_loss(model, inputs, present, noisy)) == 0.0


def test_the_joint_pretext_term_needs_the_switch_rule(cache_dir: Path, tmp_path: Path) -> None:
    from udml_stream.errors import ConfigError
    from udml_stream.train.config import parse_config
    from udml_stream.train.trainer import train

    cfg = parse_config({"data": {"preset": "balanced", "cache_dir": str(cache_dir),
                                 "train_subset": 64},
                        "model": {"method": "udml"},
                        "train": {"pretext_weight": 0.5, "epochs": 1, "out_dir": str(tmp_path)}})
    with pytest.raises(ConfigError, match=r"pretext_weight = 0\.5: only the switch rule"):
        train(cfg, progress=False)


def test_udml_recalibrate_refits_the_gates_in_place_and_leaves_the_classifier(
        field_data: avdigits.AVDigits, member_copy, cache_dir: Path, tmp_path: Path,
        monkeypatch) -> None:
    from typer.testing import CliRunner

    import udml_stream.train.pregate as pregate
    from udml_stream.cli.main import app

    ck = member_copy(tmp_path, with_card=False)
    # A quick run: subsets of the splits (as a config may ask) and a short fit of the heads.
    meta = json.loads((ck / checkpoint.CONFIG).read_text())
    meta["config"]["data"].update(train_subset=200, val_subset=100)
    (ck / checkpoint.CONFIG).write_text(json.dumps(meta))
    monkeypatch.setattr(pregate, "STEPS", 100)
    before = load_file(str(ck / checkpoint.WEIGHTS))
    r = CliRunner().invoke(app, ["recalibrate", str(ck), "--cache-dir", str(cache_dir)])
    assert r.exit_code == 0, r.output
    new = json.loads(r.output)
    after = load_file(str(ck / checkpoint.WEIGHTS))
    model, meta = checkpoint.load(ck)
    # The ends as stored with the weights, and as the checkpoint's facts name them.
    assert model.pre_clean.tolist() == pytest.approx(new["pretext_gate"]["clean"])
    assert model.pre_broken.tolist() == pytest.approx(new["pretext_gate"]["broken"])
    assert meta["pretext_gate"] == new["pretext_gate"]
    # The classifier as trained; the pretext heads fitted afresh on this data.
    assert before.keys() == after.keys()
    for k, v in before.items():
        if k.startswith("pretext."):
            continue
        assert torch.equal(v, after[k]) or k.startswith(("gate_", "conf_", "typ_", "pre_")), k
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("pretext."))
    # An ensemble is refused with the way round it.
    r = CliRunner().invoke(app, ["recalibrate", str(CKPT)])
    assert r.exit_code != 0 and "ensemble" in r.output


@torch.no_grad()
def test_the_fit_places_each_word_once_whatever_the_training_did(
        field_data: avdigits.AVDigits) -> None:
    # A model trained with train.place_words hands the fit its natural variation; the fit places
    # the words itself (``WordsPlaced``), so its features are those of a model trained without.
    import udml_stream.train.pregate as pregate

    model, _ = checkpoint.load(MEMBERS[0], torch.device("cpu"))
    split = field_data.splits["train"].rows(np.arange(12))
    cpu = torch.device("cpu")
    plain = pregate.pretext_features(model, split, None, NaturalInput(), 3, cpu, draws=1)
    told = pregate.pretext_features(model, split, None, NaturalInput(place_words=True), 3, cpu,
                                    draws=1)
    for m, (x, y) in plain.items():
        assert torch.equal(told[m][0], x) and torch.equal(told[m][1], y)
