"""Adapting the health estimator on unlabelled logs: no label topic needed, only the estimator
(and the gates, the pretext head with them) change, and its loss on the robot's own data falls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from udml_stream.cli.main import app
from udml_stream.data.logset import read_split
from udml_stream.data.sessions import write_session
from udml_stream.logs import LogError
from udml_stream.logs.writer import LogWriter
from udml_stream.messages import AudioChunk, CameraFrame, encode
from udml_stream.model import checkpoint
from udml_stream.train.adapt import adapt_estimator

SHIPPED = Path(__file__).parent.parent / "checkpoints" / "default"  # an ensemble of three
CKPT = SHIPPED / "members" / "0"  # one of its members: one model


def _unlabelled_log(path: Path, seconds: int = 3) -> None:
    """Camera at 10 fps and 50 ms audio chunks, and no label topic at all."""
    rng = np.random.default_rng(0)
    w = LogWriter(path)
    events = []
    for i in range(seconds * 10):
        t = 10**9 + i * 10**8
        events.append(CameraFrame("camera", i, t, t,
                                  image=rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)))
    for j in range(seconds * 20):
        t = 10**9 + j * 5 * 10**7
        events.append(AudioChunk("mic", j, t, t,
                                 samples=(0.1 * rng.standard_normal(800)).astype(np.float32)))
    for msg in sorted(events, key=lambda m: m.capture_ns):
        f = encode(msg)
        w.write(msg.stream, f[1:], msg.seq, msg.capture_ns, msg.capture_ns, msg.kind,
                msg.stream, msg.clock)
    w.finish()


def test_a_log_without_labels_reads_unlabelled_and_refuses_to_train(tmp_path: Path) -> None:
    p = tmp_path / "robot.mcap"
    _unlabelled_log(p)
    split, _ = read_split("adapt", [p], labelled=False)
    assert len(split) >= 15 and set(split.labels.tolist()) == {-1}
    with pytest.raises(LogError, match="label topic"):
        read_split("train", [p])


def test_adapting_moves_only_the_estimator_and_lowers_its_loss(small_data, tmp_path: Path
                                                                ) -> None:
    log = tmp_path / "robot.mcap"
    write_session(small_data.splits["train"].subset(60, seed=0), log, small_data.sample_rate,
                  small_data.class_names)
    out = tmp_path / "adapted"
    rep = adapt_estimator(CKPT, [str(log)], out, steps=40, batch_size=32)
    assert rep.loss_last < rep.loss_first
    before, _ = checkpoint.load(CKPT, torch.device("cpu"))
    after, meta = checkpoint.load(out, torch.device("cpu"))
    b, a = before.state_dict(), after.state_dict()
    moved = {k for k in b if not torch.equal(b[k], a[k])}
    assert moved and all(k.startswith(("estimator.", "gate_", "conf_", "pretext.", "pre_"))
                         for k in moved)
    # The pretext head is refitted on the robot's own (unlabelled) data; the classifier,
    # encoders and typicality centres are the validated ones.
    assert any(k.startswith("pretext.") for k in moved)
    assert meta["pretext_gate"]["clean"] == pytest.approx(after.pre_clean.tolist())
    assert meta["adapted"]["samples"] == rep.samples and meta["adapted"]["steps"] == 40


def test_adapt_command_line(tmp_path: Path) -> None:
    p = tmp_path / "robot.mcap"
    _unlabelled_log(p)
    r = CliRunner().invoke(app, ["adapt", str(CKPT), str(p), "-o", str(tmp_path / "a"),
                                 "--steps", "3"])
    assert r.exit_code == 0, r.output
    assert "estimator loss" in r.output and (tmp_path / "a" / "model.safetensors").is_file()
    r = CliRunner().invoke(app, ["adapt", str(CKPT), str(p), "-o", str(tmp_path / "b"),
                                 "--steps", "0"])
    assert r.exit_code == 2 and "steps" in r.output


def test_an_ensemble_is_adapted_member_by_member(tmp_path: Path) -> None:
    """The shipped ensemble: each member's estimator is fitted on the same logs and the result
    is an ensemble of the adapted members, served like the original."""
    p = tmp_path / "robot.mcap"
    _unlabelled_log(p)
    out = tmp_path / "adapted"
    rep = adapt_estimator(SHIPPED, [str(p)], out, steps=4, batch_size=16)
    assert len(rep.members) == 3 and not (tmp_path / ".adapted.members").exists()
    assert [r.output for r in rep.members] == checkpoint.member_dirs(out)
    assert rep.loss_first == pytest.approx(np.mean([r.loss_first for r in rep.members]))
    meta = checkpoint.read_meta(out)
    assert meta["adapted"]["from"] == str(SHIPPED) and meta["adapted"]["steps"] == 4
    assert [f["seed"] for f in meta["member_facts"]] == [
        f["seed"] for f in checkpoint.read_meta(SHIPPED)["member_facts"]]
    for src, dst in zip(checkpoint.member_dirs(SHIPPED), checkpoint.member_dirs(out),
                        strict=True):
        b = checkpoint.load(src)[0].state_dict()
        a, m_meta = checkpoint.load(dst)
        moved = {k for k in b if not torch.equal(b[k], a.state_dict()[k])}
        assert any(k.startswith("estimator.") for k in moved)
        assert all(k.startswith(("estimator.", "gate_", "conf_", "pretext.", "pre_"))
                   for k in moved)
        assert m_meta["adapted"]["from"] == str(src)
    assert len(getattr(checkpoint.load(out)[0], "members", ())) == 3
    # An output that holds something is refused before any work, and left as it was; one
    # model's output too (it could be the model itself).
    before = sorted((q, q.stat().st_mtime_ns) for q in out.rglob("*"))
    for src in (SHIPPED, CKPT):
        r = CliRunner().invoke(app, ["adapt", str(src), str(p), "-o", str(out), "--steps", "2"])
        assert r.exit_code != 0 and "not an empty directory" in r.output
    assert sorted((q, q.stat().st_mtime_ns) for q in out.rglob("*")) == before
