"""A long hypothesis run of tests/test_fuzz.py (codec → edge → pairer → runner, one process).

CI runs each property test with 150 derandomized examples. Here pytest runs in a subprocess with
``UDML_FUZZ_EXAMPLES`` set (which also turns derandomization off) and an explicit
``--hypothesis-seed`` per round, so each round is a fresh random search that can be repeated
exactly. A short calibration round measures examples per second; the following rounds are sized
to fill the requested time, and the examples of all rounds are summed per test from
``--hypothesis-show-statistics``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import hypothesis

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent.parent
TEST_FILE = "tests/test_fuzz.py"
#: Examples per test of the first (calibration) round.
CALIBRATION_EXAMPLES = 100
#: A round smaller than this is not worth its start-up (imports, loading the checkpoint).
MIN_ROUND_EXAMPLES = 50

_TEST_HEADER = re.compile(r"^(\S+::\S+):\s*$")
#: "5 passing, 0 failing, and 0 invalid test cases" (6.1xx); older: "5 passing examples, ...".
_COUNTS = re.compile(r"(\d+) passing(?: examples?)?, (\d+) failing(?: examples?)?, (?:and )?"
                     r"(\d+) invalid")
_PHASE = re.compile(r"during (\w+) phase \(([\d.]+) seconds\)")
_SUMMARY = re.compile(r"(\d+) (passed|failed|error|errors)\b")


def parse_statistics(text: str) -> dict[str, dict[str, Any]]:
    """Per test (pytest node id): passing, failing and invalid examples summed over the phases
    hypothesis reports (generate, reuse, shrink), and the seconds of each phase."""
    out: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    phase = ""
    for line in text.splitlines():
        if m := _TEST_HEADER.match(line.strip()):
            current = out.setdefault(m.group(1), {"passing": 0, "failing": 0, "invalid": 0,
                                                  "phase_seconds": {}})
            continue
        if current is None:
            continue
        if m := _PHASE.search(line):
            phase = m.group(1)
            current["phase_seconds"][phase] = (current["phase_seconds"].get(phase, 0.0)
                                               + float(m.group(2)))
        elif m := _COUNTS.search(line):
            current["passing"] += int(m.group(1))
            current["failing"] += int(m.group(2))
            current["invalid"] += int(m.group(3))
        elif line.strip().startswith("- Stopped because"):
            current["stopped_because"] = line.strip()[len("- Stopped because "):]
    return out


def parse_summary(text: str) -> dict[str, int]:
    """pytest's final counts (``passed``, ``failed``, ``errors``) from its last summary line."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    last = next((ln for ln in reversed(lines) if " in " in ln and _SUMMARY.search(ln)), "")
    out = {"passed": 0, "failed": 0, "errors": 0}
    for n, what in _SUMMARY.findall(last):
        out["errors" if what.startswith("error") else what] += int(n)
    return out


def pytest_command(seed: int) -> list[str]:
    """The pytest command line of one round (run from the repository root)."""
    return [sys.executable, "-m", "pytest", TEST_FILE, "-q", "-p", "no:cacheprovider",
            "-o", "timeout=0", "--hypothesis-show-statistics", f"--hypothesis-seed={seed}"]


def run_round(examples: int, seed: int) -> dict[str, Any]:
    """One pytest run with ``UDML_FUZZ_EXAMPLES=examples``: its statistics, outcome and time."""
    env = {**os.environ, "UDML_FUZZ_EXAMPLES": str(examples)}
    cmd = pytest_command(seed)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    stats = parse_statistics(proc.stdout)
    summary = parse_summary(proc.stdout)
    rnd = {"examples_setting": examples, "seed": seed, "wall_s": round(wall, 1),
           "returncode": proc.returncode, "summary": summary, "tests": stats}
    if proc.returncode != 0:
        # Keep the failure report (hypothesis prints the falsifying example and its seed).
        rnd["output_tail"] = (proc.stdout + proc.stderr)[-8000:]
        log.error("fuzz round (seed %d) failed with exit status %d", seed, proc.returncode)
    log.info("fuzz round: %d examples/test, seed %d, %.0f s, %s", examples, seed, wall, summary)
    return rnd


def plan_examples(examples: int, wall_s: float, remaining_s: float) -> int:
    """Examples per test for a round that should take about ``remaining_s``, from a round of
    ``examples`` that took ``wall_s`` (start-up included, so the estimate errs short)."""
    if wall_s <= 0:
        return examples
    return int(examples / wall_s * remaining_s)


def run(minutes: float, seed: int | None = None) -> dict[str, Any]:
    """Run rounds for about ``minutes``; return per-test totals and each round."""
    rng = random.Random(seed)
    budget_s = minutes * 60.0
    t0 = time.monotonic()
    rounds: list[dict[str, Any]] = []
    examples = CALIBRATION_EXAMPLES
    while True:
        rounds.append(run_round(examples, rng.randrange(2**32)))
        if rounds[-1]["returncode"] != 0:
            break
        remaining = budget_s - (time.monotonic() - t0)
        examples = plan_examples(rounds[-1]["examples_setting"], rounds[-1]["wall_s"], remaining)
        if examples < MIN_ROUND_EXAMPLES:
            break
    totals: dict[str, dict[str, int]] = {}
    for rnd in rounds:
        for test, s in rnd["tests"].items():
            t = totals.setdefault(test, {"passing": 0, "failing": 0, "invalid": 0, "seconds": 0})
            for k in ("passing", "failing", "invalid"):
                t[k] += s[k]
            t["seconds"] += sum(s["phase_seconds"].values())
    for t in totals.values():
        t["seconds"] = round(t["seconds"], 1)
    return {
        "minutes_requested": minutes,
        "wall_s": round(time.monotonic() - t0, 1),
        "tests": totals,
        "examples_total": sum(t["passing"] + t["failing"] + t["invalid"] for t in totals.values()),
        "failing_examples": sum(t["failing"] for t in totals.values()),
        "failed_tests": sum(r["summary"]["failed"] + r["summary"]["errors"] for r in rounds),
        "rounds": rounds,
        "command": "UDML_FUZZ_EXAMPLES=<n> " + " ".join(
            ["python", *pytest_command(0)[1:-1], "--hypothesis-seed=<seed>"]),
        "setup": {"hypothesis": hypothesis.__version__, "python": platform.python_version(),
                  "machine": platform.machine()},
    }


def to_markdown(res: dict[str, Any], command: str) -> str:
    """The table docs/benchmarks.md quotes."""
    rows = ["| test | examples run | of which invalid | failing | seconds in hypothesis |",
            "| --- | --- | --- | --- | --- |"]
    for test, t in res["tests"].items():
        n = t["passing"] + t["failing"] + t["invalid"]
        rows.append(f"| `{test.split('::')[-1]}` | {n:,} | {t['invalid']:,} | {t['failing']} | "
                    f"{t['seconds']:.0f} |")
    rounds = "; ".join(f"{r['examples_setting']:,} examples/test, seed {r['seed']}, "
                       f"{r['wall_s']:.0f} s, exit {r['returncode']}" for r in res["rounds"])
    return "\n".join([
        f"Command: `{command}`", "", *rows, "",
        f"Examples in all: {res['examples_total']:,} in {res['wall_s'] / 60:.1f} min "
        f"(requested {res['minutes_requested']:g}); failing examples: {res['failing_examples']}; "
        f"failed tests: {res['failed_tests']}.",
        f"Rounds (each a pytest run; rerun one with its seed): {rounds}.",
        f"Each round: `{res['command']}`",
        f"Setup: {json.dumps(res['setup'])}",
    ])
