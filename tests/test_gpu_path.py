"""The GPU serving path (udml_stream.serve.accel) and scripts/gpu-check.

On a machine without CUDA the engine runs eagerly (with and without bucket padding) and must give
the eager model's numbers; the CUDA tests (graphs, bf16) skip. scripts/gpu-check runs this file
on the GPU machine, where they run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from udml_stream.model import checkpoint
from udml_stream.serve.accel import Engine, bf16_keeps_accuracy, bucket_for, precision_report

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "checkpoints" / "default"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)  # the machine is shared: one thread, like the latency benchmark
    m, _ = checkpoint.load(CKPT, "cpu")
    return m


def _samples(n: int, seed: int, missing: dict[int, str] | None = None) -> list[dict]:
    """Camera frames and microphone windows as the fusion node receives them: a gap (NaN) in
    one window, and the streams named in ``missing`` absent (None) for those samples."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        frame[150:330, 250:390] = 255 - frame[150:330, 250:390] // 4  # a bright blob: contrast
        audio = (0.05 * rng.standard_normal(16000)).astype(np.float32)
        if i == 1:
            audio[4000:7000] = np.nan  # a 190 ms gap: present, valid share 0.81
        if i == 2:
            audio[:12000] = np.nan  # mostly missing: absent by the gap rule
        s = {"image": frame, "audio": audio}
        if missing and i in missing:
            s[missing[i]] = None
        out.append(s)
    return out


@torch.no_grad()
def _eager(model, sample: dict) -> dict:
    """The serving runner's path for one sample (FusionRunner.predict's arithmetic)."""
    raw = {m: torch.from_numpy(np.ascontiguousarray(x))[None] for m, x in sample.items()
           if x is not None}
    valid = model.input_valid(raw)
    tensors = {m: model.prep[m](x) for m, x in raw.items()}
    out = model(tensors, preprocessed=True, valid=valid)
    return {"probs": torch.softmax(out.logits, 1)[0].numpy(),
            "mult": {m: float(w[0]) for m, w in out.multipliers.items()},
            "sigma": {m: float(s[0]) for m, s in out.sigma_hat.items() if m in tensors},
            "present": {m: bool(p[0]) for m, p in out.present.items()},
            "conflict": bool(out.aux["conflict"][0]),
            "health": {m: float(out.aux[f"gate/{m}"][0]) for m in out.present},
            "looks": {m: int(out.aux[f"looks/{m}"][0]) for m in out.present},
            "answers": {m: int(u[0].argmax()) for m, u in out.unimodal_logits.items()}}


@pytest.mark.parametrize(("n", "pad"), [(1, False), (3, False), (8, False), (3, True), (8, True)])
def test_engine_matches_eager_model(model, n: int, pad: bool) -> None:
    missing = {0: "audio", 2: "image"} if n >= 3 else None
    samples = _samples(n, seed=n, missing=missing)
    engine = Engine(model, "cpu", buckets=(1, 2, 4, 8), pad=pad)
    out = engine.predict(samples)
    assert out.probs.shape == (n, 10)
    assert out.bucket == (bucket_for(n, engine.buckets) if pad else n)
    for i, s in enumerate(samples):
        ref = _eager(model, s)
        # Where the conflict rule answers, the probabilities are the product of the streams'
        # posteriors weighted by the gates' openness, so the gates' amplified last-bit
        # differences (below) reach them too: 3e-5 relative on a conflict whose two streams
        # are both part-open (the session-14 checkpoint, n = 3, sample 1); 1e-7 elsewhere.
        np.testing.assert_allclose(out.probs[i], ref["probs"], rtol=1e-4, atol=1e-5)
        assert bool(out.conflict[i]) == ref["conflict"], i
        for m in model.cfg.modalities:
            assert bool(out.present[m][i]) == ref["present"][m], (i, m)
            # The gates are steep ramps of σ̂ and of the confidence: a batched convolution's
            # last-bit differences come out of them ~10x larger than in the probabilities.
            assert out.multipliers[m][i] == pytest.approx(ref["mult"][m], rel=1e-4, abs=1e-5)
            if s.get(m) is not None:
                assert out.sigma_hat[m][i] == pytest.approx(ref["sigma"][m], rel=1e-5)
            # What the node's diagnostics read: the gates' openness, the pretext head's pick.
            assert out.health[m][i] == pytest.approx(ref["health"][m], rel=1e-4, abs=1e-5)
            assert out.looks[m][i] == ref["looks"][m], (i, m)
            if out.present[m][i]:  # each stream's own head's class (an absent one's is noise)
                assert out.answers[m][i] == ref["answers"][m], (i, m)
    if missing:
        assert not out.present["audio"][0] and out.multipliers["audio"][0] == 0.0
        assert not out.present["image"][2] and out.multipliers["image"][2] == 0.0
        assert not out.present["audio"][2]  # its window is mostly missing
        assert out.present["audio"][1] and out.present["image"][1]  # a short gap stays present


def test_run_takes_preprocessed_batches_and_refuses_bad_ones(model) -> None:
    engine = Engine(model, "cpu", buckets=(1, 2, 4), pad=True)
    t, p, v = engine.prepare(_samples(3, seed=5))
    full = engine.run(t, p, v)
    # A modality left out of the batch is absent for every sample: the image alone decides.
    alone = engine.run({"image": t["image"]}, {"image": p["image"]}, {"image": v["image"]})
    ref = model({"image": t["image"]}, preprocessed=True, valid={"image": v["image"]})
    np.testing.assert_allclose(alone.logits, ref.logits.detach().numpy(), rtol=1e-5, atol=1e-5)
    assert not alone.present["audio"].any() and (alone.multipliers["audio"] == 0).all()
    assert full.present["audio"].tolist() == [True, True, False]  # sample 2: mostly missing
    with pytest.raises(ValueError, match="largest bucket"):
        engine.run({m: x.repeat(2, *[1] * (x.dim() - 1)) for m, x in t.items()})
    with pytest.raises(ValueError, match="expected"):
        engine.run({"image": t["image"][:, :, :10]})
    with pytest.raises(ValueError, match="CUDA"):
        Engine(model, "cpu", graphs=True)


def test_precision_report_on_cpu(model) -> None:
    engine = Engine(model, "cpu", pad=False)
    t, p, v = engine.prepare(_samples(6, seed=9))
    labels = torch.as_tensor(engine.run(t, p, v).probs.argmax(1))  # fp32's own answers
    r = precision_report(model, "cpu", t, p, v, labels, batch=4)
    assert r.n == 6 and r.acc_fp32 == 1.0
    assert 0.0 <= r.max_abs_prob_diff < 0.5 and r.mean_abs_prob_diff <= r.max_abs_prob_diff
    assert bf16_keeps_accuracy(r) == (r.acc_fp32 - r.acc_bf16 <= 0.005
                                      and r.argmax_agreement >= 0.99)


def test_gpu_check_says_no_cuda_and_writes_nothing(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the no-device branch cannot be reached")
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_RESULT": str(out)}
    proc = subprocess.run([str(ROOT / "scripts" / "gpu-check")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no CUDA device:" in proc.stdout + proc.stderr
    assert not out.exists()


# ---- CUDA only ---------------------------------------------------------------------------------


@cuda
@pytest.mark.parametrize("n", [1, 3, 8, 100])
def test_cuda_graph_matches_eager_on_gpu(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Exact fp32: with TF32 convolutions (PyTorch's default) a batch of 100 and its padded
    # bucket of 128 pick different kernels and differ by ~3e-3 (H200, session 8).
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    m, _ = checkpoint.load(CKPT, "cuda")
    eager = Engine(m, "cuda", graphs=False)
    graph = Engine(m, "cuda", graphs=True)
    graph.warm_up()
    samples = _samples(n, seed=n, missing={0: "audio", 2: "image"} if n >= 3 else None)
    a, b = eager.predict(samples), graph.predict(samples)
    assert b.bucket == bucket_for(n, graph.buckets)
    np.testing.assert_allclose(b.probs, a.probs, rtol=1e-4, atol=1e-5)
    for mod in m.cfg.modalities:
        np.testing.assert_array_equal(b.present[mod], a.present[mod])
        np.testing.assert_allclose(b.multipliers[mod], a.multipliers[mod], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b.health[mod], a.health[mod], rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(b.looks[mod], a.looks[mod])
        np.testing.assert_array_equal(b.answers[mod], a.answers[mod])
    # Replaying a smaller batch after a larger one: stale rows of the static buffers are padding.
    c = graph.predict(samples[:1])
    np.testing.assert_allclose(c.probs, a.probs[:1], rtol=1e-4, atol=1e-5)


@cuda
def test_a_large_batch_is_staged_in_chunks_bit_for_bit_on_gpu() -> None:
    m, _ = checkpoint.load(CKPT, "cuda")
    engine = Engine(m, "cuda", graphs=False)
    frames = [s["image"] for s in _samples(37, seed=5)]  # 34 MB: threads and chunks
    up = engine._upload("image", frames, frames[0].shape, "uint8")
    np.testing.assert_array_equal(up.cpu().numpy(), np.stack(frames))
    small = engine._upload("image", frames[:2], frames[0].shape, "uint8")  # one copy
    np.testing.assert_array_equal(small.cpu().numpy(), np.stack(frames[:2]))


@cuda
def test_bf16_graph_agrees_with_fp32_on_gpu() -> None:
    m, _ = checkpoint.load(CKPT, "cuda")
    samples = _samples(16, seed=3)
    fp32 = Engine(m, "cuda", graphs=True)
    bf16 = Engine(m, "cuda", graphs=True, dtype="bf16")
    fp32.warm_up()
    bf16.warm_up()
    a, b = fp32.predict(samples), bf16.predict(samples)
    assert np.abs(a.probs - b.probs).max() < 0.1


# ---- the training loop's GPU path, checked on CPU ---------------------------------------------


def _train_cfg(cache_dir: Path, out: Path, method: str, **train_kw):
    from udml_stream.train.config import parse_config

    from .conftest import SMALL

    return parse_config({
        "data": {"preset": "balanced", "cache_dir": str(cache_dir), "train_subset": 192,
                 "val_subset": 64, **SMALL},
        "model": {"method": method},
        "train": {"epochs": 2, "samples_per_epoch": 0, "clean_epochs": 1, "batch_size": 32,
                  "quality_start_epoch": 1, "out_dir": str(out), "device": "cpu", **train_kw},
    })


@pytest.mark.parametrize("method", ["udml", "qmf"])
def test_sums_on_the_device_train_the_same_weights(cache_dir: Path, tmp_path: Path,
                                                   method: str) -> None:
    """host_sync = interval (CUDA's default) changes when losses are read, never the weights."""
    from udml_stream.train.trainer import train

    runs = {s: train(_train_cfg(cache_dir, tmp_path / s, method, host_sync=s, log_interval=2),
                     progress=False) for s in ("step", "interval")}
    a, _ = checkpoint.load(runs["step"].best_path)
    b, _ = checkpoint.load(runs["interval"].best_path)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    for ha, hb in zip(runs["step"].history, runs["interval"].history, strict=True):
        assert ha.keys() == hb.keys()
        for k in ha:
            assert hb[k] == pytest.approx(ha[k], rel=1e-5), k


def test_bf16_training_refuses_a_cpu(cache_dir: Path, tmp_path: Path) -> None:
    from udml_stream.errors import ConfigError
    from udml_stream.train.trainer import train

    with pytest.raises(ConfigError, match="bf16"):
        train(_train_cfg(cache_dir, tmp_path / "r", "udml", precision="bf16"), progress=False)


def test_staging_rows_in_parallel_copies_every_row_exactly() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from udml_stream.serve.accel import fill_rows

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(37)]
    with ThreadPoolExecutor(4) as pool:
        for chunks in (1, 4, 64):
            out = np.zeros((40, 48, 64, 3), np.uint8)
            fill_rows(out, frames, pool, chunks)
            np.testing.assert_array_equal(out[:37], np.stack(frames))
            assert not out[37:].any()
        with pytest.raises(ValueError):  # a row of the wrong shape fails loudly, not silently
            fill_rows(np.zeros((2, 4), np.uint8), [np.zeros(4), np.zeros(5)], pool, 2)
