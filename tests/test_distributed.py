"""Training in two processes (DDP over gloo, started through torchrun): each rank trains on its
own half of every global batch, the ranks' weights stay bit-identical, one checkpoint is written,
and it loads and evaluates like any other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from udml_stream.data import avdigits
from udml_stream.data.sessions import write_session
from udml_stream.errors import ConfigError
from udml_stream.evaluate.conditions import evaluate_model
from udml_stream.model import checkpoint
from udml_stream.train.distributed import LaunchSpec, launch

from .conftest import SMALL

TRAIN_N, BATCH, EPOCHS = 256, 32, 2


def _write_config(path: Path, data: str, out: Path) -> Path:
    path.write_text(f"""
{data}
[model]
method = "udml"

[train]
epochs = {EPOCHS}
samples_per_epoch = 0
batch_size = {BATCH}
clean_epochs = 1
quality_start_epoch = 1
lr_drop_epoch = 5
threads = 1
device = "cpu"
out_dir = "{out}"
""")
    return path


def _array_data(cache_dir: Path) -> str:
    return f"""[data]
preset = "balanced"
cache_dir = "{cache_dir}"
train_subset = {TRAIN_N}
val_subset = 64
variants_per_accent = {SMALL["variants_per_accent"]}
renditions = {SMALL["renditions"]}
"""


def _traces(folder: Path) -> tuple[dict, dict]:
    return (json.loads((folder / "rank0.json").read_text()),
            json.loads((folder / "rank1.json").read_text()))


def test_two_ranks_share_batches_keep_equal_weights_and_write_once(cache_dir: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = _write_config(tmp_path / "ddp.toml", _array_data(cache_dir), out)
    res = launch(cfg, {}, False, LaunchSpec(nproc=2, timeout_s=60), trace=tmp_path / "trace")
    r0, r1 = _traces(tmp_path / "trace")
    assert (r0["rank"], r1["rank"], r0["world"]) == (0, 1, 2)

    # Data: every step each rank has half the global batch; the halves are disjoint, and an
    # epoch covers every training sample once across both ranks.
    steps = EPOCHS * (TRAIN_N // BATCH)
    assert len(r0["rows"]) == len(r1["rows"]) == steps
    for a, b in zip(r0["rows"], r1["rows"], strict=True):
        assert len(a) == len(b) == BATCH // 2 and not set(a) & set(b)
    per_epoch = TRAIN_N // BATCH
    for e in range(EPOCHS):
        seen = [r for rk in (r0, r1) for step in rk["rows"][e * per_epoch:(e + 1) * per_epoch]
                for r in step]
        assert sorted(seen) == list(range(TRAIN_N))
    # The global batch is the one a single process draws (same seed, same first permutation).
    first = np.random.default_rng(0).permutation(TRAIN_N)[:BATCH].tolist()
    assert r0["rows"][0] + r1["rows"][0] == first

    # DDP: bit-identical parameters after every step, and every step changes them; after each
    # epoch's buffer averaging the whole state (batch-norm statistics, dependency EMA) is equal.
    assert r0["params"] == r1["params"]
    assert len(set(r0["params"])) == steps
    assert r0["state"] == r1["state"] and len(r0["state"]) == EPOCHS
    assert r0["scores"] == r1["scores"]

    # Checkpoints: written by rank 0 only, in the usual layout.
    assert r1["saved"] == []
    assert str(out / "last") in r0["saved"] and str(out / "best") in r0["saved"]
    assert sorted(p.name for p in out.iterdir()) == ["best", "last", "train_state.pt"]
    assert res.best_path == out / "best" and len(res.history) == EPOCHS
    assert res.best_score == max(r0["scores"])

    model, meta = checkpoint.load(res.best_path)
    assert meta["epoch"] == res.best_epoch
    data = avdigits.load("balanced", cache_dir, **SMALL)
    result = evaluate_model(model, data.splits["test"].subset(60), seed=0)
    assert result["n_test"] == 60 and set(result["spearman"]) == {"image", "audio"}


def test_log_set_is_sharded_too(small_data: avdigits.AVDigits, tmp_path: Path) -> None:
    logs = {}
    for name, n in (("train", 64), ("val", 32)):
        logs[name] = tmp_path / f"{name}.mcap"
        write_session(small_data.splits[name].subset(n, seed=1), logs[name],
                      small_data.sample_rate, small_data.class_names)
    data = f"""[data]
source = "logs"
[data.logs]
train = ["{logs["train"]}"]
val = ["{logs["val"]}"]
"""
    out = tmp_path / "run"
    cfg = _write_config(tmp_path / "logs.toml", data, out)
    launch(cfg, {"train.epochs": 1}, False, LaunchSpec(nproc=2, timeout_s=60),
           trace=tmp_path / "trace")
    r0, r1 = _traces(tmp_path / "trace")
    seen = [r for rk in (r0, r1) for step in rk["rows"] for r in step]
    assert sorted(seen) == list(range(64))  # two steps of 32, halves disjoint, all covered
    assert r0["params"] == r1["params"] and r0["state"] == r1["state"]
    assert r1["saved"] == [] and (out / "best" / "model.safetensors").is_file()


def test_a_batch_that_does_not_split_fails_before_starting(cache_dir: Path,
                                                           tmp_path: Path) -> None:
    cfg = _write_config(tmp_path / "ddp.toml", _array_data(cache_dir), tmp_path / "run")
    with pytest.raises(ConfigError, match="multiple of 3"):
        launch(cfg, {}, False, LaunchSpec(nproc=3))
    assert not (tmp_path / "run").exists()
