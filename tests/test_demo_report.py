"""The demo's and `udml log eval`'s report: lines only for the conditions a log has, and no two
lines about one condition that contradict each other."""

from __future__ import annotations

import pytest
from udml_stream_apps.training.demo import accuracy_verdicts, print_scores, verdicts

from udml_stream.demo.run import SegmentScore

DEMO_ONLY = ("camera_noise", "audio_noise", "camera_covered", "mic_unplugged")


def _score(cond: str, results: int, acc: float = 0.95, image: float = 0.5,
           camera_absent: float = 0.0, audio_absent: float = 0.0) -> SegmentScore:
    return SegmentScore(cond, results, acc if results else float("nan"),
                        {"image": image, "audio": 1 - image} if results else {},
                        camera_absent if results else float("nan"),
                        audio_absent if results else float("nan"))


def _about(lines: list[str], cond: str) -> list[str]:
    return [x for x in lines if x.startswith(f"{cond}:")]


def test_a_replayed_log_gets_lines_for_its_own_conditions_only(
        capsys: pytest.CaptureFixture[str]) -> None:
    # The new user's held-out log: clean and camera_killed spans, replayed losslessly.
    scores = [_score("camera_killed", 45, acc=0.933), _score("clean", 44, acc=0.977)]
    lines = verdicts(scores, live=False) + accuracy_verdicts(scores, live=False)
    assert not [x for x in lines if x.startswith(DEMO_ONLY)], lines
    killed = _about(lines, "camera_killed")
    # It has results, so no line may say the camera left nothing to replay.
    assert killed == [
        "camera_killed: 45 results from the frames recorded while the camera was up; fusing "
        "without it shows live only",
        "camera_killed: fused accuracy 93.3% over 45 results ✓ ≥ 90% with ≥ 20"]
    assert _about(lines, "clean") == ["clean: fused accuracy 97.7% over 44 results ✓ ≥ 90% "
                                      "with ≥ 20"]
    print_scores(scores, "replay", live=False)
    out = capsys.readouterr().out
    assert "no scored results" not in out and not any(c in out for c in DEMO_ONLY)


def test_a_dead_camera_without_results_is_explained_once() -> None:
    scores = [_score("clean", 40), _score("camera_killed", 0)]
    lines = verdicts(scores, live=False) + accuracy_verdicts(scores, live=False)
    assert _about(lines, "camera_killed") == [
        "camera_killed: the dead camera left no frames to replay (fusing without it shows live "
        "only)"]
    # Live, the same empty condition is a failure of the run, said once.
    lines = verdicts(scores) + accuracy_verdicts(scores)
    assert _about(lines, "camera_killed") == ["camera_killed: no scored results ✗"]


def test_the_live_demo_still_judges_every_condition_it_played() -> None:
    scores = [_score("clean", 120, image=0.5), _score("camera_noise", 75, image=0.1),
              _score("audio_noise", 70, image=0.9), _score("camera_covered", 60, image=0.6),
              _score("mic_unplugged", 50, audio_absent=0.4),
              _score("camera_killed", 50, camera_absent=0.5)]
    v = verdicts(scores)
    assert v == [
        "camera_noise: image weight share 0.50 (clean) → 0.10 ✓ moved toward the healthy stream",
        "audio_noise: audio weight share 0.50 (clean) → 0.10 ✓ moved toward the healthy stream",
        "camera_covered: image weight share 0.50 (clean) → 0.60 ✗ did not move",
        "mic_unplugged: 20 of 50 scored results fused without the audio ✓ went on with the "
        "healthy stream",
        "camera_killed: 25 of 50 scored results fused without the image ✓ went on with the "
        "healthy stream"]
    assert len(accuracy_verdicts(scores)) == 6


def test_a_robot_log_with_its_own_conditions() -> None:
    # No demo condition, no clean: nothing to compare weights against, accuracy per condition.
    scores = [_score("night", 30, acc=0.8), _score("rain", 0)]
    assert verdicts(scores, live=False) == []
    assert accuracy_verdicts(scores, live=False) == [
        "night: fused accuracy 80.0% over 30 results ✗ ≥ 90% with ≥ 20 (accuracy below target)",
        "rain: no scored results ✗"]
    # A degraded demo condition without clean results says so for that condition only.
    assert verdicts([_score("camera_noise", 30)], live=False) == [
        "camera_noise: no clean results to compare the image weight share against"]
