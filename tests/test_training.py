"""End to end: a tiny training run beats chance by a wide margin, resumes, and evaluates."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from udml_stream.cli.main import app
from udml_stream.data import avdigits
from udml_stream.evaluate.conditions import evaluate_model, standard_conditions
from udml_stream.model import checkpoint
from udml_stream.train.config import parse_config
from udml_stream.train.trainer import train

from .conftest import SMALL


def _cfg(cache_dir: Path, out: Path, epochs: int, method: str = "udml"):
    return parse_config({
        "data": {"preset": "balanced", "cache_dir": str(cache_dir), "train_subset": 640,
                 "val_subset": 200, **SMALL},
        "model": {"method": method},
        "train": {"epochs": epochs, "samples_per_epoch": 0, "clean_epochs": 1,
                  "quality_start_epoch": 2, "lr_drop_epoch": 5, "out_dir": str(out),
                  "device": "cpu"},
    })


def test_tiny_training_beats_chance_and_resumes(cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = train(_cfg(cache_dir, out, 2), progress=False)
    assert len(first.history) == 2
    res = train(_cfg(cache_dir, out, 4), progress=False)  # resumes at epoch 2
    assert [h["epoch"] for h in res.history] == [0, 1, 2, 3]
    model, meta = checkpoint.load(res.best_path)
    assert meta["epoch"] == res.best_epoch
    data = avdigits.load("balanced", cache_dir, **SMALL)
    test = data.splits["test"].subset(300)
    result = evaluate_model(model, test, seed=0)
    assert result["n_test"] == 300  # every sample given is scored
    assert set(result["conditions"]) == {c.name for c in standard_conditions(data.modalities)}
    assert result["clean"] > 0.4, result["clean"]  # chance is 0.1
    assert set(result["spearman"]) == {"image", "audio"}


def test_cli_eval_loads_a_checkpoint_with_no_other_flags(cache_dir: Path, tmp_path: Path) -> None:
    res = train(_cfg(cache_dir, tmp_path / "run", 1, method="static_concat"), progress=False)
    out = tmp_path / "eval.json"
    r = CliRunner().invoke(app, ["eval", str(res.best_path), "--cache-dir", str(cache_dir),
                                 "--json", str(out), "--limit", "100"])
    assert r.exit_code == 0, r.output
    assert "image_missing" in r.output
    saved = json.loads(out.read_text())
    assert saved["method"] == "static_concat" and saved["n_test"] == 100
    bad = CliRunner().invoke(app, ["eval", str(tmp_path / "nope")])
    assert bad.exit_code == 2 and "config.json" in bad.output
