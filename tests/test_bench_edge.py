"""The pure parts of ``udml bench flood`` and ``udml bench fuzz``: the flood's messages are each
rejected under a named reason, the result parsers and the Markdown tables. No timing asserts;
the benchmarks themselves are run by hand (docs/results/flood.md, docs/results/fuzz.md)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from udml_stream.benchmarks import flood, fuzz
from udml_stream.cli.main import app
from udml_stream.messages import AudioChunk, CameraFrame, DecodeError, decode
from udml_stream.messages.codec import DECODE_REASONS
from udml_stream.sync.edge import EDGE_REASONS, Edge

T0 = 1_000_000_000
MS = 1_000_000


def _outcome(edge: Edge, frames: list[bytes]) -> str | None:
    """The reason ``frames`` is rejected by the decoder or the edge; None if admitted."""
    try:
        msg = decode(frames)
    except DecodeError as err:
        return err.reason
    if edge.admit(msg) is not None:
        return None
    assert edge.last_rejection is not None
    return edge.last_rejection.reason


def test_every_flood_message_is_rejected_under_its_named_reason() -> None:
    kinds = flood.flood_messages(T0)
    assert len(kinds) >= 15 and len({k.name for k in kinds}) == len(kinds)
    # The served streams at their first message (seq 0 at T0), then further on (seq 50, 1 s
    # later): the flood's stale chunks are duplicates first, reordered later; the rest is the same.
    for seq, t in ((0, T0), (50, T0 + 1000 * MS)):
        edge = Edge("camera", "mic", 16000)
        assert edge.admit(CameraFrame("camera", seq, t, image=np.zeros((4, 4, 3), np.uint8)))
        assert edge.admit(AudioChunk("mic", seq, t, samples=np.zeros(320, np.float32)))
        for kind in kinds:
            reason = _outcome(edge, kind.frames)
            assert reason is not None, f"{kind.name}: admitted"
            assert reason in kind.reasons, (kind.name, reason)
            assert reason in DECODE_REASONS or reason in EDGE_REASONS
    reasons = {r for k in kinds for r in k.reasons}
    for wanted in ("not_msgpack", "version", "empty_frame", "empty_audio", "wrong_kind",
                   "other_topic", "timestamp", "duplicate_seq"):
        assert wanted in reasons
    names = " ".join(k.name for k in kinds)
    assert "NaN" in names and "44.1 kHz" in names and "camera_rear" in names


def test_counter_delta_rss_and_line_counts(tmp_path: Path) -> None:
    before = {"rejected.version": 3, "results": 10, "camera_alive": 1}
    after = {"rejected.version": 5, "rejected.kind": 2, "results": 10, "camera_alive": 1}
    assert flood._counter_delta(before, after) == {"rejected.kind": 2, "rejected.version": 2}
    assert flood.rss_mb(os.getpid()) > 1.0 and flood.cpu_s(os.getpid()) > 0
    f = tmp_path / "err.log"
    f.write_bytes(b"one\ntwo\n")
    assert flood.count_lines(f) == (2, 8)


def _phase(rate: float, rss: tuple[float, float], rejected: dict[str, int]) -> dict:
    return {"results_per_s": rate, "results": int(rate * 10), "log_lines": 4, "log_bytes": 400,
            "rss_mb": {"start": rss[0], "end": rss[1], "peak": rss[1]},
            "rss_growth_mb": rss[1] - rss[0], "rejected": rejected, "node_alive": True,
            "flood_msgs_per_s": 19_876.0}


def test_flood_markdown_states_the_goals() -> None:
    def pair(base: float, during: float, growth: float, rejected: dict[str, int]) -> dict:
        return {"baseline": _phase(base, (300.0, 300.5), {}),
                "flood": _phase(during, (300.5, 300.5 + growth), rejected),
                "rate_ratio": during / base, "flood_msgs_reached_node": sum(rejected.values()),
                "node_exit_code": 0, "tracebacks": 0}

    res = {"plain": pair(30.0, 29.7, 1.0, {"version": 9000, "other_topic": 8000}),
           "curve": pair(30.0, 27.0, 60.0, {}),
           "flood_kinds": {"bad version": ["version"]},
           "goals": {"rate_ratio_min": 0.95, "curve_rss_growth_mb_max": 50.0},
           "setup": {"phase_s": 10}}
    md = flood.to_markdown(res, "udml bench flood")
    assert md.startswith("Command: `udml bench flood`")
    assert "| plain | flood | 29.7 | 0.990 | 4 | 400 |" in md and "| curve | flood | 27.0 | 0.900 |" in md
    assert "plain 0.990 (met)" in md and "curve 0.900 (NOT met)" in md
    assert "+60.0 MB (NOT met)" in md and "version=9,000, other_topic=8,000" in md
    assert "17,000" in md  # flood messages that reached the plain node
    res.pop("curve")
    assert "| curve |" not in flood.to_markdown(res, "udml bench flood --no-curve")


STATS = """\
============================ Hypothesis Statistics =============================
tests/test_fuzz.py::test_decode_never_raises:

  - during reuse phase (0.01 seconds):
    - 2 passing, 0 failing, and 0 invalid test cases

  - during generate phase (12.50 seconds):
    - Typical runtimes: ~ 0-377 ms, of which < 1ms in data generation
    - 998 passing, 0 failing, and 3 invalid test cases

  - Stopped because settings.max_examples=1000


tests/test_fuzz.py::test_served_or_rejected:

  - during generate phase (40.00 seconds):
    - 100 passing examples, 1 failing examples, 0 invalid examples
  - during shrink phase (2.00 seconds):
    - 5 passing examples, 4 failing examples, 0 invalid examples

  - Stopped because nothing left to do


1 failed, 1 passed in 55.10s
"""


def test_fuzz_statistics_and_summary_are_parsed() -> None:
    stats = fuzz.parse_statistics(STATS)
    a = stats["tests/test_fuzz.py::test_decode_never_raises"]
    assert (a["passing"], a["failing"], a["invalid"]) == (1000, 0, 3)
    assert a["phase_seconds"] == {"reuse": 0.01, "generate": 12.5}
    assert a["stopped_because"] == "settings.max_examples=1000"
    b = stats["tests/test_fuzz.py::test_served_or_rejected"]
    assert (b["passing"], b["failing"], b["invalid"]) == (105, 5, 0)
    assert fuzz.parse_summary(STATS) == {"passed": 1, "failed": 1, "errors": 0}
    assert fuzz.parse_summary("3 passed in 1.86s") == {"passed": 3, "failed": 0, "errors": 0}


def test_fuzz_round_planning_and_command() -> None:
    assert fuzz.plan_examples(100, 20.0, 600.0) == 3000
    assert fuzz.plan_examples(100, 0.0, 600.0) == 100
    cmd = fuzz.pytest_command(7)
    assert "--hypothesis-show-statistics" in cmd and "--hypothesis-seed=7" in cmd
    assert fuzz.TEST_FILE in cmd and (fuzz.ROOT / fuzz.TEST_FILE).is_file()


def test_fuzz_markdown() -> None:
    rnd = {"examples_setting": 100, "seed": 42, "wall_s": 30.0, "returncode": 0}
    res = {"minutes_requested": 2, "wall_s": 125.0, "examples_total": 6103, "failing_examples": 0,
           "failed_tests": 0, "rounds": [rnd, {**rnd, "examples_setting": 2000, "seed": 7}],
           "tests": {"tests/test_fuzz.py::test_a": {"passing": 2100, "failing": 0, "invalid": 3,
                                                     "seconds": 80.4}},
           "command": "UDML_FUZZ_EXAMPLES=<n> python -m pytest tests/test_fuzz.py",
           "setup": {"hypothesis": "6.170.17"}}
    md = fuzz.to_markdown(res, "udml bench fuzz --minutes 2")
    assert "| `test_a` | 2,103 | 3 | 0 | 80 |" in md
    assert "Examples in all: 6,103 in 2.1 min (requested 2); failing examples: 0" in md
    assert "2,000 examples/test, seed 7" in md and "6.170.17" in md


def test_bench_rejects_bad_flood_and_fuzz_arguments() -> None:
    runner = CliRunner()
    for args in (["bench", "flood", "--phase-s", "0"], ["bench", "fuzz", "--minutes", "-1"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
    res = runner.invoke(app, ["bench", "bogus"])
    assert res.exit_code != 0 and "fuzz" in res.output
