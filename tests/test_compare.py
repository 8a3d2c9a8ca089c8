"""The replacement rule as code (``training.compare_checkpoints``): both models score the very
same batches, a model against itself changes nothing, and the count criterion sees a
candidate that breaks a promise the incumbent keeps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from udml_stream_apps.training import compare_checkpoints as cc
from udml_stream_apps.training import probe_fresh

from udml_stream.data import avdigits
from udml_stream.evaluate import field, unseen
from udml_stream.model import checkpoint

from .conftest import SMALL, npm_tarball

HELD = (unseen.get("image", "jpeg"), unseen.get("audio", "reverb"))
PROBE = tuple(d for d in probe_fresh.DEGRADATIONS if d.name in ("edges", "crowd"))


def test_both_models_score_the_same_batches(
        field_data: avdigits.AVDigits, member_copy: Callable[..., Path],
        tmp_path: Path) -> None:
    first, _ = checkpoint.load(member_copy(tmp_path / "a", with_card=False))
    second, _ = checkpoint.load(member_copy(tmp_path / "b", with_card=False, member=1))
    split = field_data.splits["val"].rows(np.arange(40))
    paired = cc.Paired(first, second).eval()
    passes: cc.Passes = {}
    kw = {"levels": {"image": 7}, "kinds": {"image": "gaussian"}, "tag": "image/gaussian@7"}
    with cc.recording(paired, passes):
        answered = field.run_pass(paired, split, 1, **kw)
        field.run_pass(paired, split, 1, missing=("audio",))
    assert set(passes) == {("image/gaussian@7", ()), ("", ("audio",))}
    got = passes[("image/gaussian@7", ())]
    # Each model's correctness is what it scores alone on that pass; the pass answers as the
    # incumbent.
    np.testing.assert_array_equal(got["incumbent"], field.run_pass(first, split, 1, **kw).correct)
    np.testing.assert_array_equal(got["candidate"],
                                  field.run_pass(second, split, 1, **kw).correct)
    np.testing.assert_array_equal(answered.correct, got["incumbent"])
    # Outside the context nothing is left listening, also when a pass inside it failed.
    assert field._observers == []
    with pytest.raises(RuntimeError, match="a pass failed"), cc.recording(paired, passes):
        raise RuntimeError("a pass failed")
    assert field._observers == []


def test_a_model_against_itself_changes_nothing_and_does_not_replace(
        field_data: avdigits.AVDigits, member_copy: Callable[..., Path], cache_dir: Path,
        tmp_path: Path) -> None:
    ck = member_copy(tmp_path, with_card=False)
    r = cc.compare(ck, ck, cache_dir, resamples=50, limit=30, held_out=HELD, probe=PROBE)
    for s in r["held_out_means"].values():
        assert s["incumbent"] == s["candidate"]
        assert s["difference"] == 0.0 and s["interval_90"] == [0.0, 0.0]
    counts = r["below_dropping"]
    assert counts["point"]["incumbent"] == counts["point"]["candidate"]
    assert counts["difference_p5"] == 0.0 == counts["difference_p95"]
    assert r["trained"]["incumbent"] == r["trained"]["candidate"]
    # (a) asks that some stream gain beyond its sampling noise: an unchanged model does not.
    assert r["rule"]["a"] is False and r["replaces"] is False
    assert "does not replace" in cc.render_markdown(r, "cmd")


def test_the_count_sees_a_candidate_that_breaks_a_promise() -> None:
    n = 100
    fine = np.zeros(n)
    worse = np.zeros(n)
    worse[:5] = -1.0  # the candidate wrong on 5 samples the dropped stream gets right: −5 pt
    streams = {"audio": {"degradations": {"hum": {"3": {"incumbent": fine, "candidate": worse}}}}}
    c = cc._counts([(streams, cc._weights(n, 500, 0))])
    assert c["point"] == {"incumbent": 0, "candidate": 1}
    assert c["breaks"]["candidate"] == ["audio/hum (-5.0 pt)"]
    # In nearly every resample the candidate still breaks it: (b) fails.
    assert c["difference_p5"] == 1.0


def test_the_bootstrap_interval_brackets_a_paired_gain() -> None:
    n = 400
    rng = np.random.default_rng(0)
    inc = (rng.random(n) < 0.8).astype(float)
    cand = inc.copy()
    cand[np.flatnonzero(inc == 0)[:20]] = 1.0  # the candidate right on 20 more: +5 pt
    s = cc._bootstrap_stream([{"incumbent": inc, "candidate": cand}], cc._weights(n, 500, 0))
    assert s["difference"] == pytest.approx(0.05)
    lo, hi = s["interval_90"]
    assert 0.0 < lo < 0.05 < hi


def test_a_data_key_added_since_a_checkpoint_was_trained_reads_as_its_default() -> None:
    # A checkpoint stored before `data.more_digits` existed lacks the key; one trained today
    # stores it (False). Same data: the comparison must not refuse the pair.
    meta = checkpoint.read_meta(Path(__file__).parent.parent / "checkpoints" / "default")
    stored = {k: v for k, v in meta["config"]["data"].items() if k != "more_digits"}
    before = {"config": {"data": stored}}
    today = {"config": {"data": {**stored, "more_digits": False}}}
    assert cc.trained_on(before) == cc.trained_on(today)
    moved = {"config": {"data": {**stored, "cache_dir": "/elsewhere/data_cache"}}}
    assert cc.trained_on(before) == cc.trained_on(moved)  # where it was cached: not the data
    other = {"config": {"data": {**stored, "preset": "balanced"}}}
    assert cc.trained_on(before) != cc.trained_on(other)
    with pytest.raises(SystemExit, match="no longer reads"):
        cc.trained_on({"config": {"data": {**stored, "removed_key": 1}}})


def test_more_handwriting_is_judged_on_the_same_validation_split(
        cache_dir: Path, field_data: avdigits.AVDigits) -> None:
    # A candidate trained with `data.more_digits` has another data section, but the rule only
    # needs both models judged on one validation split: the tool reads each checkpoint's own
    # data section and compares the validation samples.
    npm_tarball(cache_dir)
    inc = {"config": {"data": {"preset": "field", **SMALL}}}
    more = {"config": {"data": {"preset": "field", **SMALL, "more_digits": True}}}
    cc.check_one_validation_split(inc, more, cache_dir)  # accepted
    assert cc.same_split(cc.validation_split(more, cache_dir), field_data.splits["val"])
    other = {"config": {"data": {"preset": "balanced", **SMALL}}}
    with pytest.raises(SystemExit, match="different validation splits"):
        cc.check_one_validation_split(inc, other, cache_dir)
    logs = {"config": {"data": {"source": "logs", "logs": {"train": ["a.mcap"], "val": ["b.mcap"]}}}}
    with pytest.raises(SystemExit, match="from logs"):
        cc.check_one_validation_split(inc, logs, cache_dir)
    val = field_data.splits["val"]
    assert not cc.same_split(val, val.rows(np.arange(len(val))[::-1]))
    assert not cc.same_split(val, field_data.splits["test"])


class _Calls(list[tuple[str, tuple[str, ...]]]):
    """The passes a sweep runs, as (tag, missing streams) (a ``field.PassObserver``)."""

    def pass_started(self) -> None:
        pass

    def pass_ended(self, split: Any, tag: str, missing: tuple[str, ...]) -> None:
        self.append((tag, missing))


def test_the_sweeps_without_their_alone_passes_score_the_rest_the_same(
        field_data: avdigits.AVDigits, member_copy: Callable[..., Path],
        tmp_path: Path) -> None:
    # The rule reads fused and dropped passes only; the tool skips the stream-alone ones (half
    # the passes). Each pass draws from its own seeded generator, so nothing else may move.
    model, _ = checkpoint.load(member_copy(tmp_path, with_card=False))
    split = field_data.splits["val"].rows(np.arange(30))
    full = unseen.unseen_sweep(model, split, 1, HELD)
    calls = _Calls()
    with field.observe_passes(calls):
        lean = unseen.unseen_sweep(model, split, 1, HELD, alone=False)
    # Degraded passes with every stream present only; the clean pass and one drop per stream.
    assert all(not missing for tag, missing in calls if tag)
    assert len(calls) == 1 + sum(len(d.severities) for d in HELD) + len(split.tables)
    for m, entry in full["modalities"].items():
        other = lean["modalities"][m]
        assert other["dropped"] == entry["dropped"] and other["alone_clean"] is None
        for name, deg in entry["degradations"].items():
            assert other["degradations"][name]["worst_vs_dropped"] == deg["worst_vs_dropped"]
            for s, row in deg["severities"].items():
                got = other["degradations"][name]["severities"][s]
                assert got["alone"] is None
                assert {k: v for k, v in got.items() if k != "alone"} == \
                    {k: v for k, v in row.items() if k != "alone"}


def test_the_family_sweep_without_its_alone_passes_scores_the_rest_the_same(
        field_data: avdigits.AVDigits, member_copy: Callable[..., Path],
        tmp_path: Path) -> None:
    model, _ = checkpoint.load(member_copy(tmp_path, with_card=False))
    split = field_data.splits["val"].rows(np.arange(16))
    seen = {"image": ("gaussian",), "audio": ("gaussian",)}
    full = field.family_sweep(model, split, 1, seen)
    calls = _Calls()
    with field.observe_passes(calls):
        lean = field.family_sweep(model, split, 1, seen, alone=False)
    assert calls and all(not missing for tag, missing in calls if tag)  # no alone pass
    for m, entry in full["modalities"].items():
        assert lean["modalities"][m]["dropped"] == entry["dropped"]
        for fam, got in lean["modalities"][m]["families"].items():
            want = entry["families"][fam]
            assert "alone_monotone" not in got and got["worst_vs_dropped"] == want["worst_vs_dropped"]
            for lv, row in want["levels"].items():
                assert got["levels"][lv]["alone"] is None
                assert {k: v for k, v in got["levels"][lv].items() if k != "alone"} == \
                    {k: v for k, v in row.items() if k != "alone"}
