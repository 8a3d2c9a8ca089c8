"""The fusion model: named outputs, estimator target, KL, absent modalities, checkpoint round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from udml_stream.data.batching import make_batch
from udml_stream.errors import CheckpointError, ConfigError
from udml_stream.model import checkpoint
from udml_stream.model.fusion import METHODS, FusionNet, FusionOutput, ModelConfig
from udml_stream.model.loss import compute_loss, kl_to_level_prior
from udml_stream.train.trainer import preprocess_params, to_torch


def _model(data, method: str = "udml") -> FusionNet:
    cfg = ModelConfig(data.modalities, {"image": "cnn_image_small", "audio": "cnn_audio_small"},
                      preprocess_params(data, data.splits["train"]), 10, method=method)
    return FusionNet(cfg)


def _batch(data, n: int = 8, levels=None, missing=()):
    rows = np.arange(n)
    lv = levels or {m: np.full(n, 1) for m in data.modalities}
    b = make_batch(data.splits["test"], rows, lv, np.random.default_rng(0), missing=missing)
    return to_torch(b, torch.device("cpu"))


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_returns_named_outputs_and_a_finite_loss(small_data, method: str) -> None:
    model = _model(small_data, method).train()
    lv = {m: np.array([1, 3, 6, 11] * 2) for m in small_data.modalities}
    inputs, present, levels, y = _batch(small_data, levels=lv)
    out = model(inputs, present, levels)
    assert isinstance(out, FusionOutput)
    assert out.logits.shape == (8, 10)
    assert set(out.unimodal_logits) == set(out.weights) == {"image", "audio"}
    terms = compute_loss(model, out, y, levels)
    assert torch.isfinite(terms.total)
    terms.total.backward()
    if model.rule.tracks_dependency:
        assert set(out.dependency) == {"image", "audio"}
        assert all(v.shape == (8,) for v in out.sigma_hat.values())


def test_estimator_target_is_the_injected_level(small_data) -> None:
    model = _model(small_data).train()
    lv = {"image": np.array([1, 11] * 4), "audio": np.array([5] * 8)}
    inputs, present, levels, y = _batch(small_data, levels=lv)
    out = model(inputs, present, levels)
    terms = compute_loss(model, out, y, levels)
    for m in ("image", "audio"):
        o = out.aux[f"estimator_out/{m}"]
        torch.testing.assert_close(out.sigma_hat[m], torch.exp(0.5 * o))
        want = torch.mean((out.sigma_hat[m] - levels[m].float()) ** 2)
        assert terms.parts[f"est_{m}"] == pytest.approx(float(want.detach()), rel=1e-5)
    # The estimator reads a detached σ: its loss gives no gradient to the encoders.
    model.zero_grad()
    (out.sigma_hat["image"].sum()).backward()
    assert all(p.grad is None or not p.grad.any() for p in model.enc["image"].parameters())


def test_kl_is_zero_when_embedding_matches_the_level_prior() -> None:
    level = torch.tensor([4.0])
    maps = torch.stack([torch.zeros(1, 2, 3, 3), torch.full((1, 2, 3, 3), float(np.log(4.0)))])
    torch.testing.assert_close(kl_to_level_prior(maps, level), torch.zeros(1))
    maps[0] += 1.0
    assert float(kl_to_level_prior(maps, level)) > 0


def test_absent_modality_gets_zero_weight_and_missing_input_is_allowed(small_data) -> None:
    model = _model(small_data).eval()
    inputs, present, levels, _ = _batch(small_data, missing=("image",))
    assert "image" not in inputs
    out = model(inputs, present, levels)
    assert torch.all(out.weights["image"] == 0)
    assert torch.all(out.weights["audio"] == 1)  # the one present modality: M' = 1
    partial = {"image": torch.tensor([True, False] * 4), "audio": torch.ones(8, dtype=torch.bool)}
    inputs, _, levels, _ = _batch(small_data)
    out = model(inputs, partial, levels)
    assert torch.all(out.weights["image"][1::2] == 0)
    torch.testing.assert_close(out.weights["image"][::2] + out.weights["audio"][::2],
                               torch.full((4,), 2.0))


def test_checkpoint_round_trip_gives_identical_outputs(small_data, tmp_path: Path) -> None:
    model = _model(small_data).train()
    inputs, present, levels, _ = _batch(small_data)
    for _ in range(3):  # move the BatchNorm statistics and the dependency EMA off their init
        model(inputs, present, levels)
    model.eval()
    want = model(inputs, present, levels)
    checkpoint.save(model, tmp_path / "ck", ["0"] * 10, {"preset": "balanced"})
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert set(meta["dependency"]) == {"image", "audio"}
    assert meta["model"]["preprocess"]["audio"]["kind"] == "logmel"
    loaded, _ = checkpoint.load(tmp_path / "ck")
    got = loaded(inputs, present, levels)
    torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=0)
    torch.testing.assert_close(loaded.dependency_ema, model.dependency_ema)
    for m in ("image", "audio"):
        torch.testing.assert_close(got.weights[m], want.weights[m], rtol=0, atol=0)


def test_checkpoint_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"config\.json"):
        checkpoint.load(tmp_path)


def test_model_config_names_bad_keys() -> None:
    with pytest.raises(ConfigError, match=r"model\.method"):
        ModelConfig(("image", "audio"), {"image": "a", "audio": "b"}, {"image": {}, "audio": {}},
                    10, method="magic")
    with pytest.raises(ConfigError, match=r"model\.encoders\.audio"):
        ModelConfig(("image", "audio"), {"image": "a"}, {"image": {}, "audio": {}}, 10)


@pytest.mark.parametrize("name", ["cnn_image_small", "cnn_image_deep", "cnn_audio_small",
                                  "cnn_audio_deep", "conv1d_mfcc", "resnet18"])
def test_every_registered_encoder_builds_and_runs(name: str) -> None:
    from udml_stream.model import encoders

    shapes = {"cnn_image_small": (2, 1, 28, 28), "cnn_image_deep": (2, 1, 28, 28),
              "cnn_audio_small": (2, 1, 32, 63), "cnn_audio_deep": (2, 1, 32, 63),
              "conv1d_mfcc": (2, 13, 64, 1), "resnet18": (2, 3, 64, 64)}
    enc = encoders.create(name, in_channels=shapes[name][1])
    out = enc(torch.zeros(shapes[name]))
    assert out.shape[:2] == (2, enc.out_channels) and out.dim() == 4
    assert set(encoders.available()) == set(shapes)  # a new encoder joins this test


def test_real_track_model_trains_a_step(cache_dir) -> None:
    from udml_stream.data import avdigits

    data = avdigits.load("real", cache_dir)
    model = FusionNet(ModelConfig(data.modalities, {"image": "cnn_image_small",
                                                    "mfcc": "conv1d_mfcc"},
                                  preprocess_params(data, data.splits["train"]), 10))
    rows = np.arange(16)
    lv = {m: np.array([1, 4, 8, 11] * 4) for m in data.modalities}
    b = make_batch(data.splits["train"], rows, lv, np.random.default_rng(0))
    inputs, present, levels, y = to_torch(b, torch.device("cpu"))
    out = model.train()(inputs, present, levels)
    compute_loss(model, out, y, levels).total.backward()
    assert out.logits.shape == (16, 10) and set(out.sigma_hat) == {"image", "mfcc"}


def test_log_mel_matches_the_reference_centred_stft() -> None:
    # The fast framing + rfft path must give torch.stft(center=True)'s numbers: checkpoints and
    # the live fusion node depend on the features staying the same.
    from udml_stream.benchmarks.train_step import reference_log_mel
    from udml_stream.model.preprocess import LogMelPrep

    prep = LogMelPrep()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((3, 16000), dtype=np.float32))
    ref = reference_log_mel(prep, x)
    assert prep.log_mel(x).shape == ref.shape == (3, prep.n_mels, 63)
    torch.testing.assert_close(prep.log_mel(x), ref, rtol=1e-4, atol=1e-4)


def test_train_step_benchmark_compares_the_same_model_two_ways() -> None:
    from udml_stream.benchmarks.train_step import _models, run

    models = _models(seed=0)
    x = {"image": torch.rand(4, 28, 28) * 255, "audio": 0.1 * torch.randn(4, 16000)}
    with torch.no_grad():
        a, b = (models[k].eval()(x).logits for k in ("baseline", "shipped"))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    res = run(rounds=1, steps=1, train_batch=8, eval_batch=8)
    assert set(res["speedup"]) == {"train", "eval"}
    assert all(len(v["train"]) == 1 for v in res["runs_ms"].values())
