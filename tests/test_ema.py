"""The weight average of training (``train.weight_ema``): the update rule, and a run that keeps
the average in its best checkpoint and resumes it exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from udml_stream.model import checkpoint
from udml_stream.train.config import parse_config
from udml_stream.train.ema import WeightEMA
from udml_stream.train.trainer import train

from .conftest import SMALL


def test_the_shadow_follows_the_live_weights_as_a_warmed_up_average() -> None:
    live = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = WeightEMA(live, decay=0.9)
    w0 = live[0].weight.detach().clone()
    expect = w0.clone()
    for t in range(30):
        with torch.no_grad():
            live[0].weight.add_(1.0)
        live.train()(torch.randn(4, 3))  # moves the batch-norm buffers and step count
        ema.update()
        d = min(0.9, (1 + t) / (10 + t))
        expect = d * expect + (1 - d) * live[0].weight.detach()
        torch.testing.assert_close(ema.shadow[0].weight, expect)
    # Float buffers are averaged, the integer step count copied; the shadow never trains.
    assert int(ema.shadow[1].num_batches_tracked) == 30
    assert not torch.equal(ema.shadow[1].running_mean, live[1].running_mean)
    assert not any(p.requires_grad for p in ema.shadow.parameters())
    # The average trails a weight that climbs by 1 a step, by less than the steady lag
    # d / (1 - d) = 9 steps (the warm-up's decay is still below 0.9 here).
    gap = float((live[0].weight - ema.shadow[0].weight).detach().mean())
    assert 1.0 < gap < 9.0, gap
    again = WeightEMA(live, decay=0.9)
    again.load_state_dict(ema.state_dict())
    assert again.steps == 30
    torch.testing.assert_close(again.shadow[0].weight, ema.shadow[0].weight)
    with pytest.raises(ValueError, match="decay"):
        WeightEMA(live, decay=1.0)


def _cfg(cache_dir: Path, out: Path, epochs: int):
    return parse_config({
        "data": {"preset": "balanced", "cache_dir": str(cache_dir), "train_subset": 320,
                 "val_subset": 100, **SMALL},
        "model": {"method": "udml"},
        "train": {"epochs": epochs, "samples_per_epoch": 0, "clean_epochs": 1,
                  "quality_start_epoch": 1, "lr_drop_epoch": 5, "out_dir": str(out),
                  "device": "cpu", "weight_ema": 0.95},
    })


def test_a_run_keeps_the_average_in_best_and_resumes_it_exactly(cache_dir: Path,
                                                                 tmp_path: Path) -> None:
    straight = train(_cfg(cache_dir, tmp_path / "straight", 3), progress=False)
    train(_cfg(cache_dir, tmp_path / "split", 2), progress=False)
    resumed = train(_cfg(cache_dir, tmp_path / "split", 3), progress=False)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    state = torch.load(tmp_path / "split" / "train_state.pt", weights_only=True)
    assert state["ema"]["steps"] == 3 * (320 // 64)
    # An interrupted run resumes its average exactly where it was.
    a, _ = checkpoint.load(straight.best_path)
    b, _ = checkpoint.load(resumed.best_path)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=k)
    # "best" holds the average, "last" the live weights the optimiser stepped.
    last, _ = checkpoint.load(tmp_path / "straight" / "last")
    name = next(k for k, v in a.state_dict().items() if v.is_floating_point() and v.numel() > 100)
    assert not torch.equal(a.state_dict()[name], last.state_dict()[name])
