"""The switch rule's confidence gate: a stream unsure of its own answer loses its weight; an
uncalibrated gate changes nothing; calibration sets clean above information-free."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from udml_stream.data.batching import make_batch
from udml_stream.model import checkpoint
from udml_stream.model.fusion import FusionNet, ModelConfig
from udml_stream.train.confgate import calibrate_confidence_gate
from udml_stream.train.trainer import preprocess_params, to_torch

CKPT = Path(__file__).parent.parent / "checkpoints" / "default"
#: The shipped checkpoint is an ensemble: each of its members carries its own gates.
MEMBERS = checkpoint.member_dirs(CKPT)


def _switch_model(data) -> FusionNet:
    cfg = ModelConfig(data.modalities, {"image": "cnn_image_small", "audio": "cnn_audio_small"},
                      preprocess_params(data, data.splits["train"]), 10, method="udml_switch",
                      estimator="linear")
    return FusionNet(cfg).eval()


def _inputs(data, n: int = 16):
    b = make_batch(data.splits["test"], np.arange(n), {m: np.ones(n, np.int64)
                                                       for m in data.modalities},
                   np.random.default_rng(0))
    return to_torch(b, torch.device("cpu"))


@torch.no_grad()
def test_an_unsure_stream_loses_its_weight_and_an_open_gate_changes_nothing(small_data) -> None:
    model = _switch_model(small_data)
    inputs, present, levels, _ = _inputs(small_data)
    open_out = model(inputs, present, levels)
    conf = {m: F.softmax(u, dim=1).amax(dim=1) for m, u in open_out.unimodal_logits.items()}
    # Calibrated so that the image's confidence on every sample is below "information-free"
    # and the audio's above "clean": the image is switched off, the audio carries the answer.
    i_img, i_aud = model.cfg.modalities.index("image"), model.cfg.modalities.index("audio")
    model.conf_broken[i_img] = float(conf["image"].max()) + 0.01
    model.conf_clean[i_img] = float(conf["image"].max()) + 0.02
    model.conf_broken[i_aud] = float(conf["audio"].min()) - 0.02
    model.conf_clean[i_aud] = float(conf["audio"].min()) - 0.01
    gated = model(inputs, present, levels)
    assert torch.all(gated.multipliers["image"] == 0)
    assert torch.all(gated.multipliers["audio"] > 0)
    # Back to zeros (a checkpoint without the calibration): the ungated answer, bit for bit.
    model.conf_clean.zero_()
    model.conf_broken.zero_()
    again = model(inputs, present, levels)
    assert torch.equal(again.logits, open_out.logits)


def test_calibration_sets_clean_above_information_free(small_data) -> None:
    model = _switch_model(small_data)
    got = calibrate_confidence_gate(model, small_data.splits["val"], None, 0,
                                    torch.device("cpu"), n=64)
    # An untrained model may be equally unsure of everything: then its gate stays open (0, 0).
    for clean, broken in zip(got["clean"], got["broken"], strict=True):
        assert (clean == broken == 0.0) or clean > broken


@pytest.mark.parametrize("ck", MEMBERS, ids=lambda p: f"member{p.name}")
def test_the_shipped_checkpoint_carries_a_calibrated_confidence_gate(ck: Path) -> None:
    model, meta = checkpoint.load(ck, torch.device("cpu"))
    clean, broken = model.conf_clean.tolist(), model.conf_broken.tolist()
    assert all(c > b > 0 for c, b in zip(clean, broken, strict=True))
    assert meta["confidence_gate"] == {"clean": clean, "broken": broken}
