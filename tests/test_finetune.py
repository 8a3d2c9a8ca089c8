"""Training from one's own logs (docs/own-robot.md): fine-tuning from a checkpoint
(``train.init_from``), a resume refused when the config or the data changed, log globs checked
when training starts, and checkpoints whose log paths hold from any folder."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from udml_stream.cli.main import app
from udml_stream.data import avdigits
from udml_stream.data.sessions import write_session
from udml_stream.errors import ConfigError
from udml_stream.model import checkpoint
from udml_stream.train.config import load_config, parse_config
from udml_stream.train.trainer import train

from .conftest import SMALL

#: The schedule of these tiny runs: one short epoch, noise and quality weights from the start.
TINY = {"epochs": 1, "samples_per_epoch": 128, "batch_size": 32, "clean_epochs": 0,
        "quality_start_epoch": 0, "lr_drop_epoch": 5, "device": "cpu", "threads": 1}


@pytest.fixture(scope="module")
def robot(small_data: avdigits.AVDigits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A robot folder as docs/own-robot.md lays it out: labelled train/val/test logs and a
    config naming them relative to itself (``robot.toml``)."""
    d = tmp_path_factory.mktemp("robot")
    for name, src, n in (("session1", "train", 160), ("val1", "val", 48), ("test1", "test", 48)):
        write_session(small_data.splits[src].subset(n, seed=2), d / f"{name}.labelled.mcap",
                      small_data.sample_rate, small_data.class_names)
    (d / "robot.toml").write_text(
        '[data]\nsource = "logs"\n[data.logs]\ntrain = ["session*.labelled.mcap"]\n'
        'val = ["val*.labelled.mcap"]\ntest = ["test*.labelled.mcap"]\n'
        '[model]\nmethod = "udml_switch"\nestimator = "linear"\n'
        '[train]\nout_dir = "run"\n'
        + "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in TINY.items())
        + '[train.families]\nimage = ["gaussian", "covered"]\naudio = ["gaussian", "gap"]\n')
    return d


@pytest.fixture(scope="module")
def base(robot: Path) -> Path:
    """A switch-rule checkpoint trained from scratch on the robot's logs."""
    return train(load_config(robot / "robot.toml"), progress=False).best_path


def test_checkpoint_names_its_logs_from_any_folder(robot: Path, base: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _, meta = checkpoint.load(base)
    lg = meta["config"]["data"]["logs"]
    assert lg["test"] == [str(robot / "test*.labelled.mcap")]
    assert all(Path(p).is_absolute() for k in ("train", "val", "test") for p in lg[k])
    assert meta["config"]["train"]["out_dir"] == str(robot / "run")
    monkeypatch.chdir(tmp_path)  # a folder with no logs: the stored paths must still hold
    r = CliRunner().invoke(app, ["eval", str(base), "--limit", "20"])
    assert r.exit_code == 0, r.output
    assert "logs" in r.output and "clean" in r.output


def test_relative_config_path_trains_to_absolute_paths(robot: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from the config's parent folder with a relative config path, as the doc does."""
    monkeypatch.chdir(robot.parent)
    cfg = load_config(Path(robot.name) / "robot.toml",
                      {"train.out_dir": str(tmp_path / "run"), "train.epochs": 1})
    assert cfg.data.logs.test == [f"{robot.name}/test*.labelled.mcap"]  # relative to the cwd
    res = train(cfg, progress=False)
    stored = checkpoint.read_meta(res.best_path)["config"]["data"]["logs"]
    assert stored["test"] == [str(robot / "test*.labelled.mcap")]


def test_unmatched_log_glob_stops_training_naming_key(robot: Path, tmp_path: Path) -> None:
    for key in ("train", "val", "test"):
        cfg = load_config(robot / "robot.toml", {f"data.logs.{key}": [str(tmp_path / "no*.mcap")],
                                                 "train.out_dir": str(tmp_path / key)})
        with pytest.raises(ConfigError, match=rf"data\.logs\.{key}: no log matches .*no\*\.mcap"):
            train(cfg, progress=False)
        assert not (tmp_path / key / "best").exists()  # stopped before any training
    r = CliRunner().invoke(app, ["train", str(robot / "robot.toml"), "--set",
                                 f'data.logs.test=["{tmp_path / "none.mcap"}"]'])
    assert r.exit_code == 2 and "data.logs.test: no log matches" in r.output


def test_finetune_changes_weights_and_keeps_the_model(robot: Path, base: Path,
                                                      tmp_path: Path) -> None:
    before, base_meta = checkpoint.load(base)
    # A [model] section unlike the checkpoint's and no families: both come from the checkpoint.
    cfg = load_config(robot / "robot.toml", {
        "train.init_from": str(base), "train.out_dir": str(tmp_path / "ft"),
        "train.lr": 2e-4, "train.families": {}, "model.method": "udml",
        "model.estimator": "mlp"})
    res = train(cfg, progress=False)
    after, meta = checkpoint.load(res.best_path)
    assert meta["model"] == base_meta["model"]  # encoders, preprocessing, method, estimator
    assert meta["config"]["model"] == base_meta["config"]["model"]  # udml_switch, linear
    assert meta["config"]["train"]["families"] == base_meta["config"]["train"]["families"]
    assert meta["config"]["train"]["init_from"] == str(base)
    assert meta["init_from"]["path"] == str(base)
    changed = [k for k, v in before.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, after.state_dict()[k])]
    assert any(k.startswith("enc.") for k in changed), changed
    # Gates recalibrated on the validation logs, as training from scratch does.
    assert "gate" in meta and "confidence_gate" in meta
    assert meta["val_acc_ungated"] == pytest.approx(res.best_score)


def test_finetune_from_the_config_file_is_relative_to_it(robot: Path, base: Path,
                                                         tmp_path: Path) -> None:
    cfg_path = robot / "ft.toml"
    cfg_path.write_text((robot / "robot.toml").read_text().replace(
        'out_dir = "run"', f'out_dir = "ft_run"\ninit_from = "{base.parent.name}/{base.name}"'))
    cfg = load_config(cfg_path)
    assert cfg.train.init_from == robot / "run" / "best"
    r = CliRunner().invoke(app, ["train", str(cfg_path), "--export", str(tmp_path / "ckpt")])
    assert r.exit_code == 0, r.output
    assert checkpoint.read_meta(tmp_path / "ckpt")["model"]["method"] == "udml_switch"


def test_finetune_from_an_ensemble_fine_tunes_each_member(robot: Path, base: Path,
                                                          tmp_path: Path) -> None:
    """``init_from`` naming an ensemble (the shipped checkpoint is one): every member is
    fine-tuned in its own run and the export is the ensemble of the fine-tuned members."""
    other = train(load_config(robot / "robot.toml", {"train.seed": 5, "train.out_dir":
                                                     str(tmp_path / "other")}),
                  progress=False).best_path
    ens = checkpoint.save_ensemble(tmp_path / "ens", [base, other])
    r = CliRunner().invoke(app, ["train", str(robot / "robot.toml"), "--set",
                                 f"train.init_from={ens}", "--set",
                                 f"train.out_dir={tmp_path / 'ft'}", "--set", "train.lr=2e-4",
                                 "--export", str(tmp_path / "ck")])
    assert r.exit_code == 0, r.output
    assert "member 1: best epoch" in r.output and "the ensemble of 2 fine-tuned" in r.output
    meta = checkpoint.read_meta(tmp_path / "ck")
    assert meta["init_from"]["path"] == str(ens)
    seed = load_config(robot / "robot.toml").train.seed
    assert [f["seed"] for f in meta["member_facts"]] == [seed, seed + 1]  # own draws each
    for i, (src, dst) in enumerate(zip(checkpoint.member_dirs(ens),
                                       checkpoint.member_dirs(tmp_path / "ck"), strict=True)):
        assert (tmp_path / "ft" / f"member{i}" / "best").is_dir()  # each member its own run
        m_meta = checkpoint.read_meta(dst)
        assert m_meta["init_from"]["path"] == str(src)
        b, a = checkpoint.load(src)[0].state_dict(), checkpoint.load(dst)[0].state_dict()
        assert any(not torch.equal(b[k], a[k]) for k in b if k.startswith("enc."))
        assert meta["member_facts"][i]["copied_from"].startswith(f"{src} fine-tuned")
    assert len(checkpoint.load(tmp_path / "ck")[0].members) == 2


def test_finetune_with_other_modalities_is_refused(base: Path, cache_dir: Path,
                                                   tmp_path: Path) -> None:
    cfg = parse_config({"data": {"preset": "real", "cache_dir": str(cache_dir)},
                        "train": {**TINY, "out_dir": str(tmp_path / "run"),
                                  "init_from": str(base)}})
    with pytest.raises(ConfigError, match=r"init_from.*\['audio', 'image'\].*\['image', 'mfcc'\]"):
        train(cfg, progress=False)


def _avd_cfg(cache_dir: Path, out: Path, **train_kw: object):
    return parse_config({
        "data": {"preset": "balanced", "cache_dir": str(cache_dir), "train_subset": 128,
                 "val_subset": 64, **SMALL},
        "model": {"method": "udml"},
        "train": {**TINY, "out_dir": str(out), **train_kw}})


def test_resume_refuses_another_config_or_data(cache_dir: Path, small_data: avdigits.AVDigits,
                                               tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(_avd_cfg(cache_dir, out), progress=False, data=small_data)
    # Keys that change only how the run executes resume it (epochs: it is extended).
    res = train(_avd_cfg(cache_dir, out, threads=2, log_interval=7, epochs=2), progress=False,
                data=small_data)
    assert [h["epoch"] for h in res.history] == [0, 1]
    with pytest.raises(ConfigError, match=r"other settings \(changed: train\.lr, train\.seed\).*"
                                          r"--no-resume"):
        train(_avd_cfg(cache_dir, out, epochs=2, lr=1e-4, seed=3), progress=False,
              data=small_data)
    # The same config over other data (relabelled logs, a new recording).
    split = small_data.splits["train"]
    relabelled = replace(small_data, splits={
        **small_data.splits, "train": replace(split, labels=np.roll(split.labels, 1))})
    with pytest.raises(ConfigError, match=r"changed: the train/val data read\)"):
        train(_avd_cfg(cache_dir, out, epochs=2), progress=False, data=relabelled)
    fresh = train(_avd_cfg(cache_dir, out, epochs=1, lr=1e-4), resume=False, progress=False,
                  data=small_data)
    assert [h["epoch"] for h in fresh.history] == [0]


def test_resume_state_without_a_config_still_resumes(cache_dir: Path,
                                                      small_data: avdigits.AVDigits,
                                                      tmp_path: Path) -> None:
    """A run written before the state recorded its config (the lead's runs) is resumed."""
    out = tmp_path / "run"
    train(_avd_cfg(cache_dir, out), progress=False, data=small_data)
    state = torch.load(out / "train_state.pt", weights_only=True)
    del state["config"], state["data"]
    torch.save(state, out / "train_state.pt")
    res = train(_avd_cfg(cache_dir, out, epochs=2, lr=1e-4), progress=False, data=small_data)
    assert [h["epoch"] for h in res.history] == [0, 1]
