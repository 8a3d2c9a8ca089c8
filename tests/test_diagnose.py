"""Faults seen across time (``serve.diagnose``): the window logic on hand-made results, then
the fusion service on the shipped checkpoint with a camera turned on its side and with a
microphone that carries another sample's speech."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from udml_stream_apps.nodes import introspect

from udml_stream import corrupt
from udml_stream.data import avdigits
from udml_stream.data.batching import NaturalInput, make_batch
from udml_stream.messages import AudioChunk, CameraFrame
from udml_stream.serve import FusionRunner, FusionService
from udml_stream.serve.diagnose import EVIDENCE_AGE_S, MIN_EVIDENCE, WINDOW, Diagnostics
from udml_stream.serve.runner import Prediction
from udml_stream.sync import PairingConfig

CKPT = Path(__file__).parent.parent / "checkpoints" / "default"
MS = 1_000_000
T0 = 5_000_000_000


def _pred(looks: int = 0, conflict: bool = False, health: float = 1.0,
          audio: bool = True, answers: dict[str, int] | None = None) -> Prediction:
    present = {"image": True, "audio": audio}
    on = [m for m, p in present.items() if p]
    return Prediction(probs=[], pred=0, weights={}, sigma_hat={}, present=present,
                      preprocess_ns=0, inference_ns=0, conflict=conflict,
                      health={m: health for m in on}, looks={"image": looks, "audio": 0},
                      answers={m: v for m, v in (answers or {"image": next(_CLASS),
                                                              "audio": 0}).items() if m in on})


_CLASS = itertools.cycle(range(10))  # the camera's own class: a new scene every result


def _diag() -> Diagnostics:
    return Diagnostics({"image": "camera"}, {"image": "camera", "audio": "mic"})


def test_a_camera_turned_one_way_is_named_with_the_rotate_that_undoes_it() -> None:
    d = _diag()
    # Head names a quarter turn clockwise (k = 3) on 3 of 4 frames, nothing on the rest.
    began = []
    for i in range(WINDOW):
        began += d.add(_pred(looks=3 if i % 4 else -1))
    assert [(c, f.code, f.rotate) for c, f in began] == [("begins", "turned.image", 270)]
    assert "turned 90° clockwise" in began[0][1].text
    assert "turn it 270° further clockwise" in began[0][1].text
    assert d.counters() == {"diag.image.rotate": 270, "diag.image.lag": 0, "diag.disagree": 0,
                            "diag.disagree_permille": 0, "diag.findings": 1}
    # Set right: upright frames push the turn below the end threshold; it ends once.
    ended = [ch for _ in range(WINDOW) for ch in d.add(_pred(looks=0))]
    assert [(c, f.code) for c, f in ended] == [("ends", "turned.image")]
    assert d.rotate_hint("image") == 0 and not d.active


def test_an_active_turn_holds_between_its_thresholds_and_on_little_evidence() -> None:
    d = _diag()
    for _ in range(WINDOW):
        d.add(_pred(looks=1))
    assert d.rotate_hint("image") == 90
    # Now half the judged frames turned (between the end and begin thresholds), and only one
    # frame in ten judged (fewer than a new finding needs): it holds, without flapping.
    changes = [ch for i in range(5 * WINDOW)
               for ch in d.add(_pred(looks=(1 if i % 20 == 0 else 0) if i % 10 == 0 else -1))]
    assert changes == [] and d.rotate_hint("image") == 90
    # Another turn edging past it (50% against its 40%) does not replace it while it keeps its
    # share.
    d = _diag()
    for _ in range(WINDOW):
        d.add(_pred(looks=1))
    turns = (3, 1, 3, 1, 3, 1, 3, 1, 3, 0)
    changes = [ch for i in range(WINDOW) for ch in d.add(_pred(looks=turns[i % 10]))]
    assert changes == [] and d.rotate_hint("image") == 90
    # No judged frame for a whole window (the camera covered or gone): it ends.
    ended = [ch for _ in range(WINDOW) for ch in d.add(_pred(looks=-1))]
    assert [(c, f.code) for c, f in ended] == [("ends", "turned.image")]


def test_one_scene_read_as_turned_for_long_is_no_turned_camera() -> None:
    d = _diag()
    # One frame sent again and again (a robot that keeps looking at one thing) read as a
    # quarter turn: it counts once.
    for _ in range(3 * WINDOW):
        assert d.add(_pred(looks=1, answers={"image": 6, "audio": 6})) == []
    # Two scenes in turn, both read so (a 1 and a 6 read alike upside down): fewer than
    # TURN_SCENES different things seen, no finding.
    for i in range(2 * WINDOW):
        assert d.add(_pred(looks=2, answers={"image": (1, 6)[i % 2], "audio": 0})) == []
    # A third one: now it is the camera.
    began = [ch for i in range(WINDOW)
             for ch in d.add(_pred(looks=2, answers={"image": (1, 6, 7)[i % 3], "audio": 0}))]
    assert [(f.code, f.rotate) for _, f in began] == [("turned.image", 180)]


def test_a_turned_finding_ends_when_one_upright_frame_keeps_coming() -> None:
    d = _diag()
    for _ in range(WINDOW):
        d.add(_pred(looks=2))
    assert d.rotate_hint("image") == 180
    # The camera set right, then looking at one thing for long: the same upright frame again
    # and again still ends the finding (while one is active, every frame counts).
    ended = [ch for _ in range(WINDOW) for ch in d.add(_pred(looks=0, answers={"image": 4,
                                                                               "audio": 4}))]
    assert [(c, f.code) for c, f in ended] == [("ends", "turned.image")]


def test_too_little_evidence_or_scattered_turns_name_nothing() -> None:
    d = _diag()
    for _ in range(MIN_EVIDENCE - 1):  # every frame turned, but too few judged
        assert d.add(_pred(looks=1)) == []
    for _ in range(WINDOW - MIN_EVIDENCE):  # blank frames: the head names nothing
        assert d.add(_pred(looks=-1)) == []
    d = _diag()
    for i in range(3 * WINDOW):  # quarter turns every way, none the majority; upright often
        assert d.add(_pred(looks=i % 4)) == []
    assert d.counters()["diag.findings"] == 0


def test_streams_that_keep_disagreeing_while_open_are_flagged() -> None:
    d = _diag()
    changes = [ch for i in range(WINDOW) for ch in d.add(_pred(conflict=i % 3 != 0))]
    assert [(c, f.code) for c, f in changes] == [("begins", "disagree")]
    assert "camera and mic disagree" in changes[0][1].text
    assert d.counters()["diag.disagree_permille"] == 660  # 66 of the last 100
    assert introspect.diagnosis_summary(d.counters()) == (
        "streams disagree in 66% of recent healthy results")
    # Agreeing open results end it, once (hysteresis: below 30%, not at 50%).
    ended = [ch for _ in range(WINDOW) for ch in d.add(_pred(conflict=False))]
    assert [(c, f.code) for c, f in ended] == [("ends", "disagree")]
    # Conflicts where the gates close a stream (the rule knows which one is broken) carry no
    # evidence.
    d = _diag()
    for _ in range(2 * WINDOW):
        assert d.add(_pred(conflict=True, health=0.2)) == []


def test_a_disagreement_ends_when_a_stream_goes_away() -> None:
    d = _diag()
    for _ in range(WINDOW):
        d.add(_pred(conflict=True))
    assert "disagree" in d.active
    # The microphone unplugged for good: no result is evidence, the window ages out.
    ended = [ch for _ in range(WINDOW) for ch in d.add(_pred(audio=False))]
    assert [(c, f.code) for c, f in ended] == [("ends", "disagree")]


def test_one_stream_or_a_rule_without_gates_gives_no_disagreement_evidence() -> None:
    d = _diag()
    for _ in range(WINDOW):
        d.add(_pred(conflict=True, audio=False))
    bare = Prediction(probs=[], pred=0, weights={}, sigma_hat={},
                      present={"image": True, "audio": True}, preprocess_ns=0, inference_ns=0,
                      conflict=True)
    for _ in range(WINDOW):
        d.add(bare)
    assert not d.active and d.counters()["diag.disagree_permille"] == 0


def _at_30fps(d: Diagnostics, image: list[int], audio: list[int], timed: bool = True
              ) -> list[tuple[str, str, int]]:
    """Results at 30 frames/s with these answers (the conflict flag as the rule sets it, both
    streams open); the findings that began or ended, with the result's index."""
    return [(c, f.code, i) for i, (a, b) in enumerate(zip(image, audio, strict=True))
            for c, f in d.add(_pred(conflict=a != b, answers={"image": a, "audio": b}),
                              T0 + i * 1000 * MS // 30 if timed else None)]


def _timed_diag() -> Diagnostics:
    return Diagnostics({"image": "camera"}, {"image": "camera", "audio": "mic"},
                       memory_s={"audio": 1.0})


def test_a_microphone_trailing_within_its_window_is_no_disagreement() -> None:
    """At each change of a 1.5 s scene the microphone names the old one for 25 frames (0.8 s,
    inside its 1 s window): with capture times that is no disagreement; without them, 56% of
    the results disagree."""
    scene = _scenes(40 * 45, 45)
    trail = [scene[max(i - 25, 0)] for i in range(len(scene))]
    d = _timed_diag()
    assert _at_30fps(d, scene, trail) == [] and d.counters()["diag.disagree_permille"] == 0
    assert ("begins", "disagree") in [c[:2] for c in _at_30fps(_timed_diag(), scene, trail,
                                                                timed=False)]


def test_at_a_frame_rate_a_run_of_equal_results_is_one_observation_a_second() -> None:
    """A camera that reads 3 and a microphone that hears 7, result after result at 30 frames/s:
    one observation a second, so the finding begins after MIN_EVIDENCE seconds, not frames; a
    microphone hearing another talker (its own scenes) is flagged within 30 s (these two
    random scene lists also hold a run of three scenes where one follows the other, which the
    lag finding may name for a while); a microphone unplugged then ends the finding within
    EVIDENCE_AGE_S, although a run without evidence counts once a second."""
    n = 40 * 30
    began = _at_30fps(_timed_diag(), [3] * n, [7] * n)
    assert [c[:2] for c in began] == [("begins", "disagree")]
    assert began[0][2] == (MIN_EVIDENCE - 1) * 30
    scene, other = _scenes(40 * 45, 45), _scenes(40 * 45, 45, seed=1)
    d = _timed_diag()
    began = _at_30fps(d, scene, other)
    assert any(c[:2] == ("begins", "disagree") and c[2] < 30 * 30 for c in began)
    assert "disagree" in d.active
    t = T0 + len(scene) * 1000 * MS // 30
    gone = [(c, f.code, i) for i in range(30 * 30)
            for c, f in d.add(_pred(audio=False), t + i * 1000 * MS // 30)]
    assert gone[:1] == [("ends", "disagree", gone[0][2])]
    assert EVIDENCE_AGE_S * 30 <= gone[0][2] <= (EVIDENCE_AGE_S + 1) * 30


def test_a_microphone_late_beyond_its_window_is_found_late_only_with_capture_times() -> None:
    """A microphone that trails by 15 frames (half its window) is in step; one that trails by
    51 (its usual 15 plus 1.2 s) is found late, with the delay measured; without capture times
    its window is unknown and a microphone is never judged late."""
    scene = _scenes(40 * 45, 45)
    in_step = _at_30fps(_timed_diag(), scene, [scene[max(i - 15, 0)] for i in range(len(scene))])
    assert not [c for c in in_step if c[1] == "lag.audio"]
    late = [scene[max(i - 51, 0)] for i in range(len(scene))]
    d = _timed_diag()
    found = [c for c in _at_30fps(d, scene, late) if c[1] == "lag.audio"]
    assert found and found[0][0] == "begins"
    assert d.lag("audio") == 51 and d.counters()["diag.audio.lag"] == 51
    assert not [c for c in _at_30fps(_timed_diag(), scene, late, timed=False)
                if c[1] == "lag.audio"]


def _scenes(n: int, hold: int, seed: int = 0) -> list[int]:
    """A class per result: a new scene every ``hold`` results, never the same twice running."""
    rng = np.random.default_rng(seed)
    out: list[int] = []
    while len(out) < n:
        c = int(rng.integers(0, 10))
        if out and c == out[-1]:
            continue
        out += [c] * hold
    return out[:n]


@pytest.mark.parametrize(("hold", "lag"), [(1, 1), (4, 2), (10, 3)])
def test_a_stream_that_names_what_the_other_named_earlier_is_found_late(hold: int,
                                                                         lag: int) -> None:
    d = _diag()
    scene = _scenes(4 * WINDOW, hold)
    changes = []
    for t in range(len(scene)):
        # The camera's answers are the scene `lag` results ago; the conflict flag as the rule
        # sets it.
        cam = scene[max(t - lag, 0)]
        changes += d.add(_pred(conflict=cam != scene[t],
                               answers={"image": cam, "audio": scene[t]}))
    began = [f for c, f in changes if c == "begins" and f.code.startswith("lag")]
    assert [(f.code, f.lag, f.leader) for f in began] == [("lag.image", lag, "audio")]
    assert d.counters()["diag.image.lag"] == lag and d.stale("image") == (
        scene[-1 - lag] != scene[-1])
    assert "camera follows mic by" in began[0].text
    if hold == 1:  # a new scene every result: they disagree all the time, and it names which
        assert "camera runs late" in d.active["disagree"].text
    assert f"image runs {lag} result{'s' * (lag > 1)} late" in introspect.diagnosis_summary(
        d.counters())


def test_a_microphone_following_the_camera_by_half_its_window_is_in_step() -> None:
    # At 30 frames/s a microphone's answer, from the last second of audio, changes about 15
    # results after the camera's when the scene changes (scenes of 1.5 s): in step, not late.
    d = _diag()
    scene = _scenes(6 * WINDOW, 45)
    for t in range(len(scene)):
        d.add(_pred(answers={"image": scene[t], "audio": scene[max(t - 15, 0)]}))
    assert not d.active and d.counters()["diag.image.lag"] == 0


def test_a_camera_a_second_late_behind_a_trailing_microphone_is_found_late() -> None:
    # 30 frames/s, scenes of 1.5 s: the microphone trails by 15 results in step; a camera whose
    # frames are a second (30 results) late then follows the microphone by 15 results.
    d = _diag()
    scene = _scenes(8 * WINDOW, 45)
    for t in range(len(scene)):
        d.add(_pred(answers={"image": scene[max(t - 30, 0)], "audio": scene[max(t - 15, 0)]}))
    assert d.lag("image") == 15


def test_streams_in_step_or_one_wrong_at_random_are_not_found_late() -> None:
    rng = np.random.default_rng(1)
    for hold in (1, 5):
        d = _diag()
        scene = _scenes(4 * WINDOW, hold, seed=hold)
        for t in range(len(scene)):
            # In step, each head wrong on 10% of results; then the camera on another scene at
            # random (a swapped topic: disagreement, but no delay to name).
            cam = int(rng.integers(0, 10)) if rng.random() < 0.1 else scene[t]
            d.add(_pred(answers={"image": cam, "audio": scene[t]}))
        for t in range(len(scene)):
            d.add(_pred(answers={"image": int(rng.integers(0, 10)), "audio": scene[t]}))
        assert not any(c.startswith("lag") for c in d.active), hold
    # A lag finding ends once the streams are back in step.
    d = _diag()
    scene = _scenes(2 * WINDOW, 1)
    for t in range(len(scene)):
        d.add(_pred(answers={"image": scene[max(t - 1, 0)], "audio": scene[t]}))
    assert d.lag("image") == 1
    ended = [ch for t in range(len(scene)) for ch in
             d.add(_pred(answers={"image": scene[t], "audio": scene[t]}))]
    assert [(c, f.code) for c, f in ended] == [("ends", "lag.image")]


# ---- the service on the shipped checkpoint ------------------------------------------------


@pytest.fixture(scope="module")
def runner() -> FusionRunner:
    return FusionRunner(CKPT, "cpu", 1)


def _service(runner: FusionRunner, **kw: object) -> FusionService:
    return FusionService(runner, PairingConfig(sample_rate=runner.sample_rate,
                                               window_samples=runner.window_samples), **kw)


def _serve(runner: FusionRunner, frames: np.ndarray, waves: np.ndarray,
           results: list | None = None, svc: FusionService | None = None,
           **kw: object) -> FusionService:
    """One robot's samples in order: a second of speech in 20 ms chunks, then the frame."""
    svc = svc or _service(runner, **kw)
    out = [] if results is None else results
    for i, (img, wave) in enumerate(zip(frames, waves, strict=True)):
        t = T0 + i * 1000 * MS
        for j in range(50):
            svc.add(AudioChunk("mic", i * 50 + j, t + j * 20 * MS,
                               samples=wave[j * 320:(j + 1) * 320]), t + j * 20 * MS)
        svc.add(CameraFrame("camera", i, t + 1000 * MS, image=img), t + 1000 * MS)
        out += svc.results(t + 1200 * MS)
    assert len(out) == len(frames)  # every sample fused
    return svc


@pytest.fixture(scope="module")
def samples(field_data: avdigits.AVDigits) -> tuple[np.ndarray, np.ndarray]:
    """120 test samples as sensors send them: 8-bit frames, speech at −20 dBFS peak over a
    −60 dBFS room floor."""
    split = field_data.splits["test"]
    rows = np.arange(min(120, len(split)))
    b = make_batch(split, rows, {m: np.full(len(rows), corrupt.CLEAN) for m in split.tables},
                   np.random.default_rng(0), natural=NaturalInput(peak_dbfs=-20, floor_dbfs=-60))
    frames = np.clip(b.inputs["image"], 0, 255).astype(np.uint8)
    return frames, np.nan_to_num(b.inputs["audio"]).astype(np.float32)


def test_the_service_names_a_camera_turned_on_its_side_and_nothing_when_upright(
        runner: FusionRunner, samples, caplog: pytest.LogCaptureFixture) -> None:
    frames, waves = samples
    upright = _serve(runner, frames, waves)
    assert upright.counters(0)["diag.findings"] == 0
    # The 120 scenes twice (240 results): the model judges a turned frame's orientation on about
    # one frame in five, and the finding needs 20 judged of the last 100 results (the shipped
    # ensemble and the seed-1 model alone each judged 22 in the last 100 of the first 120: too
    # near the minimum either way).
    twice = np.concatenate([frames, frames])
    with caplog.at_level(logging.WARNING, logger="udml_stream.serve.diagnose"):
        turned = _serve(runner, np.stack([cv2.rotate(f, cv2.ROTATE_90_COUNTERCLOCKWISE)
                                          for f in twice]), np.concatenate([waves, waves]))
    c = turned.counters(0)
    assert c["diag.image.rotate"] == 90 and c["diag.findings"] == 1
    assert introspect.diagnosis_summary(c) == "image looks turned (turn it 90° further clockwise)"
    assert any("turned.image begins" in r.getMessage() and "(rotate = 90 if" in r.getMessage()
               for r in caplog.records)
    assert turned.liveness_changed(0)  # the node sends its heartbeat (state check) at once


def test_the_service_flags_a_microphone_carrying_another_samples_speech(
        runner: FusionRunner, samples) -> None:
    frames, waves = samples
    # Each frame is paired with the speech of the sample before it (a lagging or swapped
    # stream: healthy, confident, and about another digit).
    svc = _serve(runner, frames, np.roll(waves, 1, axis=0))
    c = svc.counters(0)
    assert "disagree" in svc.lanes[""].diag.active
    assert c["diag.disagree_permille"] > 500 and c["diag.image.rotate"] == 0
    # A microphone is never named late (in step it follows the camera by half its window),
    # and the camera, which leads, is not either: nothing is set aside.
    assert c["diag.image.lag"] == 0 and c["diag.image.set_aside"] == 0


def test_a_camera_found_late_has_no_say_when_its_answer_is_the_stale_one(
        runner: FusionRunner, samples, field_data: avdigits.AVDigits) -> None:
    frames, waves = samples
    labels = field_data.splits["test"].labels[:len(frames)]
    acc, counters = {}, {}
    for on in (False, True):
        res: list = []
        # Each speech window is paired with the frame of the sample before it (a frame buffer
        # one frame behind).
        svc = _serve(runner, np.roll(frames, 1, axis=0), waves, res, set_aside_late=on)
        tail = slice(60, None)  # the lag is found within the first 60 samples
        acc[on] = float(np.mean([r.pred == y for r, y in zip(res[tail], labels[tail],
                                                                strict=True)]))
        counters[on] = svc.counters(0)
        assert counters[on]["diag.image.lag"] == 1
        if on:
            # The answers set aside: the camera was received (present, its σ̂ reported) but
            # had no weight.
            aside = [r for r in res[tail] if r.conflict and r.weights["image"] == 0.0]
            assert len(aside) >= 40
            assert all(r.present["image"] and "image" in r.sigma_hat for r in aside)
    assert "diag.image.set_aside" not in counters[False]
    assert counters[True]["diag.image.set_aside"] >= 50
    # Without it the stale frame wins many of the disagreements; without the camera the
    # microphone alone is right on about 98% (the test split's microphone-alone accuracy).
    assert acc[False] < 0.85 and acc[True] > 0.95


def test_auto_orient_turns_a_turned_camera_back_and_gives_it_its_weight_again(
        runner: FusionRunner, samples) -> None:
    frames, waves = samples
    turned = np.stack([cv2.rotate(f, cv2.ROTATE_90_CLOCKWISE) for f in frames])
    share = {}
    for auto in (False, True):
        res: list = []
        svc = _serve(runner, turned, waves, res, auto_orient=auto)
        tail = res[-30:]  # well after the finding (it begins within ~80 results)
        share[auto] = float(np.mean([r.weights["image"] / sum(r.weights.values())
                                     for r in tail]))
        c = svc.counters(0)
        if auto:
            # Turned back 270° clockwise; the finding was dropped with the old window and the
            # corrected frames raise none.
            assert c["diag.image.applied"] == 270 and c["diag.image.rotate"] == 0
            assert svc.lanes[""].turns == {"image": 3}
        else:
            assert "diag.image.applied" not in c and c["diag.image.rotate"] == 270
    assert share[False] < 0.25 < 0.45 < share[True]


def test_auto_orient_gives_up_after_its_corrections(runner: FusionRunner, samples,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    from udml_stream.serve.service import MAX_CORRECTIONS

    frames, waves = samples
    svc = _service(runner, auto_orient=True)
    svc.lanes[""].corrections = MAX_CORRECTIONS  # a scene that kept reading turned
    with caplog.at_level(logging.ERROR, logger="udml_stream.serve.service"):
        _serve(runner, np.stack([cv2.rotate(f, cv2.ROTATE_180) for f in frames]), waves,
               svc=svc)
    assert svc.lanes[""].turns == {} and svc.counters(0)["diag.image.rotate"] == 180
    assert any("auto_orient leaves it" in r.getMessage() for r in caplog.records)
