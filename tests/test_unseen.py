"""The held-out degradations and the probe set: deterministic, shape-keeping, really degrading,
really unseen."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from udml_stream_apps.training import probe_fresh

from udml_stream import corrupt
from udml_stream.errors import CheckpointError, UdmlError
from udml_stream.evaluate import card, unseen
from udml_stream.model import checkpoint

LABELS = np.array([0, 1, 2, 3, 1])
#: The small raw-track build the ``cache_dir`` fixture holds (conftest.py).
SMALL = {"variants_per_accent": 2, "renditions": 1}


def _images() -> np.ndarray:
    """Five 28×28 digit-like frames: a bright stroke figure on a dim background, as exposed."""
    out = np.full((len(LABELS), 28, 28), 20.0, np.float32)
    for i, lab in enumerate(LABELS):
        img = out[i]
        cv2.circle(img, (14, 14), 6 + int(lab), 230.0, 2)
        cv2.line(img, (8 + 3 * int(lab), 4), (20 - 2 * int(lab), 24), 200.0, 2)
    return out + np.random.default_rng(1).normal(0.0, 2.0, out.shape).astype(np.float32)


def _waves() -> np.ndarray:
    """Five 1 s speech-like windows at −26 dBFS peak: voiced bursts over a −70 dBFS floor."""
    rng = np.random.default_rng(2)
    t = np.arange(16000) / 16000
    out = np.empty((len(LABELS), 16000), np.float32)
    for i, lab in enumerate(LABELS):
        f0 = 110.0 + 20.0 * lab
        voiced = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 12))
        env = np.exp(-0.5 * ((t - 0.5) / 0.15) ** 2)
        x = voiced * env
        out[i] = 0.05 * x / np.abs(x).max() + 10 ** (-70 / 20) * rng.standard_normal(16000)
    return out


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
    return {"image": _images(), "audio": _waves()}


def test_the_set_is_held_out_and_large_enough() -> None:
    for m in ("image", "audio"):
        names = [d.name for d in unseen.degradations(m)]
        assert len(names) >= 6 and len(set(names)) == len(names)
        assert not set(names) & set(corrupt.FAMILIES[m])
        # A degradation said to be near a trained family (or the pretext head's transforms)
        # names it; most resemble none.
        near = [d for d in unseen.degradations(m) if d.near]
        named = {n for d in near for n in d.near.split(", ")}
        assert named <= set(corrupt.FAMILIES[m]) | {unseen.PRETEXT}
        assert len(near) < len(names) / 2


def test_the_probe_set_is_new_and_names_what_it_is_near() -> None:
    # training/probe_fresh.py: a second set, in neither training nor the held-out set; what
    # shares a kind of damage with a trained family (the machine tones that led to `tonal`)
    # says so.
    for m in ("image", "audio"):
        names = [d.name for d in probe_fresh.DEGRADATIONS if d.modality == m]
        assert len(set(names)) == len(names) >= 15
        assert not set(names) & (set(corrupt.FAMILIES[m]) | {d.name for d in unseen.degradations(m)})
    for m in ("image", "audio"):
        near = {d.near for d in probe_fresh.DEGRADATIONS if d.modality == m and d.near}
        assert near <= set(corrupt.FAMILIES[m]) | {unseen.PRETEXT}
    tones = {d.name for d in probe_fresh.DEGRADATIONS if d.near == "tonal"}
    assert {"sweep", "beeper", "whine"} <= tones and "tonal" in corrupt.FAMILIES["audio"]


@pytest.mark.parametrize("deg", unseen.DEGRADATIONS + probe_fresh.DEGRADATIONS,
                         ids=lambda d: f"{d.modality}/{d.name}")
def test_deterministic_shape_keeping_and_the_top_severity_degrades(
        deg: unseen.Degradation, inputs: dict[str, np.ndarray]) -> None:
    x = inputs[deg.modality]
    before = x.copy()
    for s in deg.severities:
        a = unseen.apply(deg, x, s, np.random.default_rng(7), labels=LABELS)
        b = unseen.apply(deg, x, s, np.random.default_rng(7), labels=LABELS)
        np.testing.assert_array_equal(a, b)  # NaN in the same places compare equal
        assert a.shape == x.shape and a.dtype == np.float32
    np.testing.assert_array_equal(x, before)  # the input is never modified
    top = unseen.apply(deg, x, deg.severities[-1], np.random.default_rng(7), labels=LABELS)
    new_nan = float(np.mean(np.isnan(top) & ~np.isnan(x)))
    diff = np.nan_to_num(top) - np.nan_to_num(x)
    if deg.modality == "image":
        assert new_nan == 0.0 and np.all(np.isfinite(top))
        assert np.abs(diff).mean() > 10.0, np.abs(diff).mean()  # pixel units 0..255
    else:
        rel = float(np.sum(diff.astype(np.float64) ** 2) / np.sum(x.astype(np.float64) ** 2))
        assert rel > 0.1 or new_nan > 0.2, (rel, new_nan)


def test_donor_content_comes_from_another_digit(inputs: dict[str, np.ndarray]) -> None:
    frames = inputs["image"]
    stale = unseen.apply(unseen.get("image", "stale_frame"), frames, 5, np.random.default_rng(0),
                         labels=LABELS)
    for i, out in enumerate(stale):
        src = [j for j in range(len(LABELS)) if np.array_equal(out, frames[j])]
        assert src and all(LABELS[j] != LABELS[i] for j in src)
    waves = inputs["audio"]
    swap = unseen.apply(unseen.get("audio", "talker_swap"), waves, 5, np.random.default_rng(0),
                        labels=LABELS)
    for i, out in enumerate(swap):
        src = [j for j in range(len(LABELS)) if np.array_equal(out, waves[j])]
        assert src and all(LABELS[j] != LABELS[i] for j in src)


def test_audio_keeps_missing_samples_missing(inputs: dict[str, np.ndarray]) -> None:
    x = inputs["audio"].copy()
    x[:, 4000:4800] = np.nan
    for deg in unseen.degradations("audio"):
        out = unseen.apply(deg, x, deg.severities[0], np.random.default_rng(3), labels=LABELS)
        if deg.name in ("rate_mismatch", "shift"):  # the gap moves with the speech, but stays
            assert np.isnan(out).mean() > 0.03
        else:
            assert np.isnan(out[:, 4000:4800]).all(), deg.name
        if deg.name not in ("packet_loss", "shift"):  # missing samples added or moved
            assert np.isfinite(out[:, :3000]).all(), deg.name


def test_severity_outside_the_range_is_refused(inputs: dict[str, np.ndarray]) -> None:
    deg = unseen.get("image", "jpeg")
    with pytest.raises(UdmlError, match="severity"):
        unseen.apply(deg, inputs["image"], 0, np.random.default_rng(0))
    with pytest.raises(UdmlError, match="unknown held-out"):
        unseen.get("image", "gaussian")


def _result() -> dict:
    """A two-degradation sweep result: rotate breaks the promise (−17 pt at S2), jpeg holds."""
    def row(fused: float, alone: float, above: float) -> dict:
        return {"param": "p", "fused": fused, "alone": alone, "share": 0.5, "present": 1.0,
                "vs_dropped": fused - 0.97, "sigma_hat": 3.0, "above_clean": above}

    result = {"checkpoint": "ck", "n_test": 3, "seed": 0, "clean": 0.99, "modalities": {
        "image": {"dropped": 0.97, "alone_clean": 0.96, "share_clean": 0.6,
                  "sigma_hat_clean": 2.7, "degradations": {
                      "rotate": {"cause": "tilt", "severities": {"1": row(0.98, 0.9, 0.95),
                                                                  "2": row(0.80, 0.3, 0.6)},
                                 "worst_vs_dropped": -0.17, "worst_severity": 2,
                                 "breaks_promise": True, "min_above_clean_when_hurt": 0.6,
                                 "sigma_fooled_at": ["2"]},
                      "jpeg": {"cause": "blocks", "severities": {"1": row(0.99, 0.9, 0.95),
                                                                  "2": row(0.98, 0.5, 0.99)},
                               "worst_vs_dropped": 0.01, "worst_severity": 2,
                               "breaks_promise": False, "min_above_clean_when_hurt": 0.99,
                               "sigma_fooled_at": []}}}}}
    result["summary"] = unseen.summary(result)
    return result


def test_summary_and_report_name_the_broken_and_the_fooled() -> None:
    result = _result()
    s = result["summary"]
    assert s["worst"] == "image/rotate" and [b["degradation"] for b in s["breaks_promise"]] == [
        "image/rotate"]
    assert list(s["sigma_fooled"]) == ["image/rotate"]
    md = unseen.render_markdown(result, "udml eval-unseen ck")
    assert "image/rotate S2 -17.0 pt" in md and "| jpeg | +1.0 |" in md


def test_eval_unseen_takes_val_or_test_only() -> None:
    from typer.testing import CliRunner

    from udml_stream.cli.main import app

    r = CliRunner().invoke(app, ["eval-unseen", "checkpoints/default", "--split", "train"])
    assert r.exit_code != 0
    assert "expected 'test' or 'val'" in r.output


def test_the_card_names_where_it_breaks_only_for_the_weights_it_was_measured_on(
        tmp_path: Path, member_copy: Callable[..., Path]) -> None:
    ck = member_copy(tmp_path, with_card=True)
    digest = card.weights_digest(ck)
    section = card.held_out_section(_result(), digest, "results/unseen.md")
    assert [(b["degradation"], b["cause"], b["at"]) for b in section["breaks"]] == [
        ("image/rotate", "tilt", "p")]
    assert section["degradations"] == 2 and section["weights_sha256"] == digest
    stored = card.add_held_out(ck, section)
    assert checkpoint.read_meta(ck)["card"]["held_out"] == section == stored["held_out"]
    md = tmp_path / "card.md"
    card.write_markdown(stored, md, "ck")
    text = md.read_text()
    assert "`udml eval-unseen ck --card` added where it breaks" in text
    assert "It breaks on 1 of them:" in text
    assert "| image/rotate | tilt | p | -17.0 pt | 30.0% |" in text
    assert text.index("## Where it breaks") < text.index("## Limits")
    # eval-field --card rebuilds the card: the held-out part stays for the same weights only.
    root = Path(__file__).resolve().parents[1]
    field = json.loads((root / "docs" / "results" / "field.json").read_text())
    meta = checkpoint.read_meta(ck)
    rebuilt = card.build_card(meta, field, digest)
    assert rebuilt["held_out"] == section and rebuilt["weights_sha256"] == digest
    assert "held_out" not in card.build_card(meta, field, "0" * 64)
    assert "held_out" not in card.build_card(meta, field)


def test_eval_unseen_adds_to_a_card_and_refuses_one_that_is_not_there(
        tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch,
        member_copy: Callable[..., Path]) -> None:
    from typer.testing import CliRunner
    from udml_stream_apps.training import probe_unseen

    from udml_stream.cli.main import app

    r = CliRunner().invoke(app, ["eval-unseen", "checkpoints/default", "--split", "val",
                                 "--card", str(tmp_path / "card.md")])
    assert r.exit_code != 0 and "--card needs --split test" in r.output
    bare = member_copy(tmp_path / "a", with_card=False)
    with pytest.raises(CheckpointError, match="no model card yet: run `udml eval-field"):
        probe_unseen.main(bare, cache_dir, None, "cmd", limit=2, card=tmp_path / "card.md")
    # A card measured on other weights, or written before cards named theirs, is not added
    # to; and it is refused before the sweep runs.
    def no_sweep(*args: object, **kwargs: object) -> None:
        raise AssertionError("the sweep ran before the card was checked")

    monkeypatch.setattr(probe_unseen, "unseen_sweep", no_sweep)
    for name, digest, why in (("c", "0" * 64, "not measured on its current weights"),
                              ("d", None, "predates cards that name the weights")):
        other = member_copy(tmp_path / name, with_card=True)
        meta = json.loads((other / checkpoint.CONFIG).read_text())
        if digest is None:
            del meta["card"]["weights_sha256"]
        else:
            meta["card"]["weights_sha256"] = digest
        (other / checkpoint.CONFIG).write_text(json.dumps(meta))
        with pytest.raises(CheckpointError, match=why):
            probe_unseen.main(other, cache_dir, None, "cmd", limit=2, card=tmp_path / "card.md")
    monkeypatch.undo()
    ck = member_copy(tmp_path / "b", with_card=True)
    out, md = tmp_path / "unseen", tmp_path / "card.md"
    probe_unseen.main(ck, cache_dir, out, "cmd", limit=4, card=md)
    result = json.loads(out.with_suffix(".json").read_text())
    held = checkpoint.read_meta(ck)["card"]["held_out"]
    assert held["n_test"] == 4 and held["degradations"] == sum(
        len(d["degradations"]) for d in result["modalities"].values())
    assert [b["degradation"] for b in held["breaks"]] == [
        b["degradation"] for b in result["summary"]["breaks_promise"]]
    assert held["report"] == "unseen.md" and "## Where it breaks" in md.read_text()
