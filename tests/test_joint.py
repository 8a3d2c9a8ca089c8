"""Both streams broken at once (``evaluate.joint``): each grid cell scores the fused answer
against the better stream alone under the same damage, deterministically, and the report marks
the cells below the promise."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from udml_stream.data import avdigits
from udml_stream.errors import CheckpointError, UdmlError
from udml_stream.evaluate import card, joint, unseen
from udml_stream.evaluate.field import run_pass
from udml_stream.model import checkpoint

MEMBER = Path(__file__).resolve().parents[1] / "checkpoints" / "default" / "members" / "0"


FAMILIES = {"image": ("covered",), "audio": ("gaussian", "gap")}


@pytest.fixture(scope="module")
def scored(field_data: avdigits.AVDigits) -> tuple[list[dict], list[dict], avdigits.Split]:
    """One shipped model on 40 test samples: a covered camera with a noisy or gapped
    microphone (level 8), and JPEG with reverberation (severity 3)."""
    model, _ = checkpoint.load(MEMBER)
    split = field_data.splits["test"].rows(np.arange(40))
    trained = joint.trained_grid(model, split, 0, levels=(8,), families=FAMILIES)
    degs = [unseen.get("image", "jpeg"), unseen.get("image", "stale_frame"),
            unseen.get("audio", "reverb")]
    held = joint.held_out_grid(model, split, 0, severities=(3,), degs=degs)
    return trained, held, split


def test_a_cell_is_fused_against_the_better_stream_alone(
        scored: tuple[list[dict], list[dict], avdigits.Split]) -> None:
    trained, held, _ = scored
    assert [(r["image"], r["audio"], r["level"]) for r in trained] == [
        ("covered", "gaussian", 8), ("covered", "gap", 8)]
    for r in trained + held:
        assert r["best_alone"] == max(r["image_alone"], r["audio_alone"])
        assert r["vs_best"] == pytest.approx(r["fused"] - r["best_alone"])
        assert 0.0 <= r["share_image"] <= 1.0
    # One camera condition, one camera-alone pass: the same score in both cells.
    assert trained[0]["image_alone"] == trained[1]["image_alone"]
    # A microphone gapped at level 8 is mostly missing, so absent by the gap rule: the fused
    # answer is the camera's own.
    gapped = trained[1]
    assert gapped["share_image"] == 1.0 and gapped["fused"] == gapped["image_alone"]
    # The swaps (another digit on the stream) are left out of the held-out grid.
    assert [(r["image"], r["audio"], r["severity"]) for r in held] == [("jpeg", "reverb", 3)]


class _Recorder(torch.nn.Module):
    """The model, recording each stream's input of every call (by the streams present)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.seen: list[dict[str, np.ndarray]] = []

    def forward(self, inputs: dict, present: dict, levels: dict) -> object:
        self.seen.append({m: x.numpy().copy() for m, x in inputs.items()
                          if bool(present[m].any())})
        return self.model(inputs, present, levels)


@pytest.mark.parametrize("grid", ["trained", "held_out"])
def test_a_stream_alone_sees_the_damage_it_has_in_the_fused_pass(
        scored: tuple[list[dict], list[dict], avdigits.Split], grid: str) -> None:
    _, _, split = scored
    model, _ = checkpoint.load(MEMBER)
    rec = _Recorder(model)
    if grid == "trained":
        row = joint.trained_grid(rec, split, 0, levels=(8,),  # type: ignore[arg-type]
                                 families={"image": ("covered",), "audio": ("gaussian",)})[0]
    else:
        row = joint.held_out_grid(rec, split, 0, severities=(3,),  # type: ignore[arg-type]
                                  degs=[unseen.get("image", "jpeg"),
                                        unseen.get("audio", "reverb")])[0]
    fused, image_alone, audio_alone = rec.seen  # one batch of 40 samples each
    assert set(fused) == {"image", "audio"}
    assert set(image_alone) == {"image"} and set(audio_alone) == {"audio"}
    np.testing.assert_array_equal(image_alone["image"], fused["image"])
    np.testing.assert_array_equal(audio_alone["audio"], fused["audio"])
    # And the damage is there: not the clean input.
    clean = _Recorder(model)
    run_pass(clean, split, 0)  # type: ignore[arg-type]
    for m in ("image", "audio"):
        assert not np.array_equal(clean.seen[0][m], fused[m])
    assert 0.0 <= row["fused"] <= 1.0


def test_the_grid_is_deterministic(
        scored: tuple[list[dict], list[dict], avdigits.Split]) -> None:
    trained, held, split = scored
    model, _ = checkpoint.load(MEMBER)
    assert joint.trained_grid(model, split, 0, levels=(8,), families=FAMILIES) == trained
    degs = [unseen.get("image", "jpeg"), unseen.get("audio", "reverb")]
    assert joint.held_out_grid(model, split, 0, severities=(3,), degs=degs) == held


def _row(image: str, audio: str, fused: float, im: float, au: float) -> dict:
    best = max(im, au)
    return {"image": image, "audio": audio, "level": 5, "fused": fused, "image_alone": im,
            "audio_alone": au, "best_alone": best, "vs_best": fused - best, "share_image": 0.5}


def test_the_summary_and_report_mark_cells_below_the_promise(tmp_path: Path) -> None:
    rows = [_row("blur", "babble", 0.95, 0.90, 0.80),     # +5 pt: fusion helps
            _row("blur", "gap", 0.89, 0.90, 0.20),        # exactly −1 pt: holds
            _row("covered", "babble", 0.70, 0.10, 0.80),  # −10 pt: below
            _row("covered", "gap", 0.12, 0.10, 0.20)]     # −8 pt: below
    s = joint.summarise(rows)
    assert s["pairs"] == 4 and s["above_best"] == 0.25
    assert s["worst"]["image"] == "covered" and s["worst"]["audio"] == "babble"
    assert [(r["image"], r["audio"]) for r in s["below_promise"]] == [
        ("covered", "babble"), ("covered", "gap")]
    result = {"checkpoint": "ck", "n_test": 4, "split": "val",
              "trained": {"levels": [5], "rows": rows, "summary": s},
              "held_out": {"severities": [3], "left_out": list(joint.SWAPS), "rows": [],
                           "summary": joint.summarise([])}}
    result["seed"] = 0
    md = joint.render_markdown(result, "udml eval-joint ck --split val")
    assert "| covered | -10.0 **✗** | -8.0 **✗** |" in md
    assert "| blur | +5.0 | -1.0 |" in md
    assert "below the promise (fused < the better stream alone − 1 pt): 2" in md
    assert "No pairs scored." in md
    png = joint.plot(result, tmp_path / "joint.png")
    assert png is not None and png.stat().st_size > 10_000
    result["trained"]["rows"] = []
    assert joint.plot(result, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_it_needs_a_camera_and_a_microphone() -> None:
    with pytest.raises(UdmlError, match="missing \\['audio'\\]"):
        joint.trained_grid(None, SimpleNamespace(tables={"image": None}), 0)  # type: ignore[arg-type]


def test_eval_joint_takes_val_or_test_only() -> None:
    from typer.testing import CliRunner

    from udml_stream.cli.main import app

    r = CliRunner().invoke(app, ["eval-joint", "checkpoints/default", "--split", "train"])
    assert r.exit_code != 0 and "expected 'test' or 'val'" in r.output
    r = CliRunner().invoke(app, ["eval-joint", "checkpoints/default", "--threads", "0"])
    assert r.exit_code != 0 and "--threads 0" in r.output


def test_the_card_takes_both_streams_broken_for_its_own_weights(
        tmp_path: Path, member_copy: Callable[..., Path]) -> None:
    ck = member_copy(tmp_path, with_card=True)
    digest = card.weights_digest(ck)
    rows = [_row("blur", "babble", 0.95, 0.90, 0.80), _row("covered", "babble", 0.70, 0.10, 0.80)]
    result = {"n_test": 4, "split": "test", "seed": 0,
              "trained": {"levels": [5], "rows": rows, "summary": joint.summarise(rows)},
              "held_out": {"severities": [3], "rows": [], "summary": joint.summarise([])}}
    section = card.joint_section(result, digest, "results/joint.md")
    assert section["trained"]["below"] == 1 and section["held_out"]["pairs"] == 0
    stored = card.add_joint(ck, section)
    assert checkpoint.read_meta(ck)["card"]["joint"] == section == stored["joint"]
    md = tmp_path / "card.md"
    card.write_markdown(stored, md, "ck")
    text = md.read_text()
    assert "`udml eval-joint ck --card` added both streams broken at once" in text
    assert "| training families, both at level 5 | 2 | 82.50% | 85.00% | 1 |" in text
    assert "covered + babble at level 5 -10.0 pt (camera alone 10.0%, microphone 80.0%)" in text
    assert text.index("## Both streams broken at once") < text.index("## Limits")
    # eval-field --card rebuilds the card: the joint part stays for the same weights only.
    root = Path(__file__).resolve().parents[1]
    field = json.loads((root / "docs" / "results" / "field.json").read_text())
    meta = checkpoint.read_meta(ck)
    assert card.build_card(meta, field, digest)["joint"] == section
    assert "joint" not in card.build_card(meta, field, "0" * 64)


def test_eval_joint_refuses_a_card_it_cannot_add_to(
        tmp_path: Path, cache_dir: Path, member_copy: Callable[..., Path]) -> None:
    from typer.testing import CliRunner
    from udml_stream_apps.training import probe_joint

    from udml_stream.cli.main import app

    r = CliRunner().invoke(app, ["eval-joint", "checkpoints/default", "--split", "val",
                                 "--card", str(tmp_path / "card.md")])
    assert r.exit_code != 0 and "--card needs --split test" in r.output
    bare = member_copy(tmp_path / "a", with_card=False)
    with pytest.raises(CheckpointError, match="no model card yet: run `udml eval-field"):
        probe_joint.main(bare, cache_dir, None, "cmd", limit=2, card=tmp_path / "card.md")


def test_eval_joint_writes_its_report_and_card(
        tmp_path: Path, cache_dir: Path, member_copy: Callable[..., Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from udml_stream_apps.training import probe_joint

    rows = [_row("covered", "babble", 0.70, 0.10, 0.80)]

    def small_sweep(model: object, split: avdigits.Split, seed: int, seen: object) -> dict:
        # The sweep itself is tested above; here what the program does with its result.
        return {"trained": {"levels": [5], "rows": rows, "summary": joint.summarise(rows)},
                "held_out": {"severities": [3], "left_out": list(joint.SWAPS), "rows": [],
                             "summary": joint.summarise([])}, "absent_throughout": []}

    monkeypatch.setattr(probe_joint, "joint_sweep", small_sweep)
    ck = member_copy(tmp_path, with_card=True)
    out, md = tmp_path / "res" / "joint", tmp_path / "card.md"
    text = probe_joint.main(ck, cache_dir, out, "udml eval-joint ck", limit=4, card=md)
    assert "trained: 1 pairs" in text and "held_out: no pairs" in text
    assert out.with_suffix(".png").is_file() and "**✗**" in out.with_suffix(".md").read_text()
    stored = checkpoint.read_meta(ck)["card"]["joint"]
    assert stored["report"] == "res/joint.md" and stored["n_test"] == 4
    assert stored["weights_sha256"] == card.weights_digest(ck)
    assert "## Both streams broken at once" in md.read_text()
