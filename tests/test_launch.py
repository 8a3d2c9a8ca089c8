"""The launcher and the introspection commands, as a user runs them."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from udml_stream.cli.main import app
from udml_stream.errors import ConfigError
from udml_stream.messages import AudioChunk
from udml_stream.transport import Publisher


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_launch_restarts_a_dying_node_and_sigterm_leaves_no_orphans(scene, tmp_path: Path) -> None:
    launch = tmp_path / "l.toml"
    launch.write_text(f"""
[nodes.cam]
program = "camera"
source = "{scene.video}"
loop = true
endpoint = "ipc://{tmp_path}/cam"
restart = "always"
restart_delay_s = 0.2

[nodes.broken]
program = "camera"
source = "{tmp_path}/missing.avi"
endpoint = "ipc://{tmp_path}/broken"
restart = "on-failure"
restart_delay_s = 0.2
max_restarts = 2
""")
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "udml_stream.cli.main", "launch", str(launch),
                             "--run-dir", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        # Handshake on the launcher's own event lines: the broken node fails, is restarted
        # twice with backoff, then given up on; the healthy one keeps running.
        end = time.monotonic() + 60
        while time.monotonic() < end and not any("gave up" in x for x in list(lines)):
            time.sleep(0.05)
        kids = _children(proc.pid)
        assert kids, "the launcher started no node"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    # A node that was given up on makes the launch fail, with one line saying which and why.
    assert proc.returncode == 1
    assert "1 of 2 nodes failed: broken: gave up after 2 restarts in a row" in out
    assert "broken exited with 3: " in out and "cannot open video source" in out
    assert "; restarting in 0.2 s" in out
    assert "restarting in 0.4 s" in out  # the second delay doubled (backoff)
    assert "broken restarted (2)" in out and "gave up after 2 restarts in a row" in out
    # Each node's output is in its own file under the run directory.
    broken_log = (run_dir / "logs" / "broken.log").read_text()
    assert broken_log.count("missing.avi") >= 3  # three runs, each said why it failed
    assert "publishing on" in (run_dir / "logs" / "cam.log").read_text()
    end = time.monotonic() + 10
    while time.monotonic() < end and [k for k in kids if _alive(k)]:
        time.sleep(0.05)
    assert not [k for k in kids if _alive(k)], "orphaned node processes"


def test_topics_hz_and_echo(tmp_path: Path) -> None:
    ep = f"ipc://{tmp_path}/bus"
    stop = threading.Event()

    def publish() -> None:
        with Publisher(ep, bind=True) as pub:
            i = 0
            while not stop.is_set():
                pub.publish(AudioChunk("mic", i, time.monotonic_ns(),
                                       samples=np.zeros(320, np.float32)))
                i += 1
                time.sleep(0.02)

    th = threading.Thread(target=publish, daemon=True)
    th.start()
    try:
        r = CliRunner().invoke(app, ["topics", ep, "--seconds", "1.5"])
        assert r.exit_code == 0 and "mic" in r.output and "AudioChunk" in r.output
        r = CliRunner().invoke(app, ["hz", "mic", ep, "--seconds", "1.5"])
        assert r.exit_code == 0 and "Hz" in r.output
        rate = float(r.output.split(":")[1].split("Hz")[0])
        assert rate > 0  # the value itself depends on machine load: benchmarks measure rates
        r = CliRunner().invoke(app, ["echo", "mic", ep, "--count", "2"])
        assert r.exit_code == 0 and r.output.count("AudioChunk") == 2
        assert "samples=float32[320]" in r.output
    finally:
        stop.set()
        th.join(5)


def test_write_launch_round_trips_and_names_a_bad_key(tmp_path: Path) -> None:
    from udml_stream.launch.config import load_launch, write_launch

    path = tmp_path / "l.toml"
    nodes = {"cam": {"program": "camera", "source": tmp_path / 'odd "name".avi', "loop": True,
                     "endpoint": "ipc:///tmp/x.sock", "fps": 12.5, "width": None},
             "fusion": {"program": "fusion", "subscribe": ["ipc:///tmp/x.sock"],
                        "endpoint": "tcp://127.0.0.1:5555", "threads": np.int64(1),
                        "streams": {"image": "cam", "audio": "mic.left"}}}
    written = write_launch(path, nodes, comment="two\nlines")
    assert load_launch(path) == written
    assert written.nodes["cam"].source == str(tmp_path / 'odd "name".avi')
    assert path.read_text().startswith("# two\n# lines\n")
    assert written.nodes["fusion"].streams == {"image": "cam", "audio": "mic.left"}
    with pytest.raises(ConfigError, match=r"nodes\.cam\.fps = inf"):
        write_launch(tmp_path / "bad.toml", {"cam": {**nodes["cam"], "fps": float("inf")}})
    with pytest.raises(ConfigError, match=r"nodes\.cam"):
        write_launch(tmp_path / "bad.toml", {"cam": {**nodes["cam"], "fsp": 3}})
    assert not (tmp_path / "bad.toml").exists()


def _supervised(tmp_path: Path, script: str, **node: object):
    """A Supervisor over one node whose process runs ``script`` (fast, real processes)."""
    from udml_stream.launch.config import parse_launch
    from udml_stream.launch.supervisor import Supervisor

    launch = parse_launch({"nodes": {"n": {"program": "camera", "source": "x",
                                           "endpoint": "ipc:///tmp/unused", **node}}})
    sup = Supervisor(tmp_path / "l.toml", launch, log_dir=tmp_path / "logs",
                     log_max_bytes=2000, log_backups=2)
    sup.nodes["n"].cmd = [sys.executable, "-c", script]
    return sup, sup.nodes["n"]


def _poll_until(sup, cond, timeout_s: float = 30.0) -> list[str]:
    events: list[str] = []
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and not cond():
        events += sup.poll()
        time.sleep(0.01)
    assert cond(), f"condition not met; events: {events}"
    return events


CRASH = "import sys; print('starting'); print('ValueError: bad frame shape'); sys.exit(1)"


def test_backoff_doubles_then_gives_up_with_the_last_error(tmp_path: Path) -> None:
    from rich.console import Console
    from udml_stream_apps.nodes.launch import render

    from udml_stream.launch.monitor import Monitor

    sup, n = _supervised(tmp_path, CRASH, restart="always", restart_delay_s=0.01,
                         restart_max_delay_s=0.04, stable_after_s=60, max_restarts=4)
    delays: list[float] = []
    sup.start()
    try:
        while not n.gave_up:
            _poll_until(sup, lambda: n.restart_at is not None or n.gave_up)
            if n.restart_at is not None:
                delays.append(n.backoff_s())
                con = Console(file=io.StringIO(), width=200)
                mon = Monitor([])
                try:
                    con.print(render(sup, mon))
                finally:
                    mon.close()
                table = con.file.getvalue()
                assert "ValueError: bad frame shape" in table
                assert ("crash loop (" in table) == (n.streak >= 3)
                _poll_until(sup, lambda: n.restart_at is None)
    finally:
        sup.stop()
    assert delays == [0.01, 0.02, 0.04, 0.04]  # doubled per failure in a row, capped
    assert n.restarts == 4 and n.streak == 4 and n.exits == [1] * 5
    assert n.last_error == "ValueError: bad frame shape"
    assert n.state(time.monotonic()).startswith("gave up after 4 restarts")
    assert sup.failures() == {"n": "gave up after 4 restarts in a row (ValueError: bad frame "
                                   "shape)"}
    assert (tmp_path / "logs" / "n.log").read_text().count("starting") == 5


def test_a_stable_run_resets_the_backoff(tmp_path: Path) -> None:
    sup, n = _supervised(tmp_path, CRASH, restart="on-failure", restart_delay_s=0.01,
                         stable_after_s=0.0, max_restarts=2)
    sup.start()
    try:
        # Every run counts as stable here, so the limit on restarts in a row is never reached.
        _poll_until(sup, lambda: n.restarts >= 5)
        assert n.streak <= 1 and not n.gave_up
        assert n.backoff_s() in (0.01, 0.02)
    finally:
        sup.stop()


def test_node_logs_rotate(tmp_path: Path) -> None:
    chatty = "import sys\nfor i in range(400): print(f'line {i:04d} ' + 'x' * 40)\nsys.exit(0)"
    sup, n = _supervised(tmp_path, chatty, restart="never")
    sup.start()
    try:
        _poll_until(sup, lambda: bool(n.exits))
    finally:
        sup.stop()
    files = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert files == ["n.log", "n.log.1", "n.log.2"]  # 2000-byte files, two backups kept
    assert all(p.stat().st_size <= 2100 for p in (tmp_path / "logs").iterdir())
    assert "line 0399" in (tmp_path / "logs" / "n.log").read_text()  # the newest lines kept
    assert n.state(time.monotonic()) == "exited (0)" and n.last_error is None


def test_failures_name_nodes_that_ended_failed_crash_looped_or_never_started(
        tmp_path: Path) -> None:
    # Ended on a failure, not restarted.
    sup, n = _supervised(tmp_path / "a", CRASH, restart="never")
    sup.start()
    try:
        _poll_until(sup, lambda: bool(n.exits))
        assert sup.failures() == {"n": "exited with 1 (ValueError: bad frame shape)"}
    finally:
        sup.stop()
    # Crash-looping: three or more failures in a row, the next restart pending.
    sup, n = _supervised(tmp_path / "b", CRASH, restart="always", restart_delay_s=0.01,
                         restart_max_delay_s=30, stable_after_s=60)
    sup.start()
    try:
        _poll_until(sup, lambda: n.streak >= 3 and n.restart_at is not None)
        assert sup.failures()["n"].startswith(f"crash loop: {len(n.exits)} failed runs, the last "
                                              "exited with 1 (ValueError")
    finally:
        sup.stop()
    # Failed, restarted and running, but neither stable nor heard from: it never started.
    # Heard from since its restart (a heartbeat): it started, so it recovered.
    once = tmp_path / "once"
    flaky = (f"import pathlib, sys, time\np = pathlib.Path({str(once)!r})\n"
             "if not p.exists():\n    p.touch(); print('error: not ready'); sys.exit(2)\n"
             "time.sleep(30)")
    sup, n = _supervised(tmp_path / "c", flaky, restart="on-failure", restart_delay_s=0.01,
                         stable_after_s=60)
    sup.start()
    try:
        _poll_until(sup, lambda: n.restarts == 1 and n.proc is not None)
        assert sup.failures() == {"n": "never started: 1 failed run, the last exited with 2 "
                                       "(error: not ready)"}
        assert sup.failures({"n": time.monotonic_ns()}) == {}
    finally:
        sup.stop()
    # A node that ends with status 0 has not failed.
    sup, n = _supervised(tmp_path / "d", "print('done')", restart="never")
    sup.start()
    try:
        _poll_until(sup, lambda: bool(n.exits))
        assert sup.failures() == {}
    finally:
        sup.stop()


def _launch_cli(launch: Path, cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "udml_stream.cli.main", "launch", str(launch),
                             *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def test_launch_exits_nonzero_when_a_node_keeps_failing(scene, tmp_path: Path) -> None:
    launch = tmp_path / "l.toml"
    launch.write_text(f"""
[nodes.cam]
program = "camera"
source = "{scene.video}"
loop = true
endpoint = "ipc://{tmp_path}/cam"

[nodes.broken]
program = "camera"
source = "{tmp_path}/missing.avi"
endpoint = "ipc://{tmp_path}/broken"
restart_delay_s = 0.1
""")
    proc = _launch_cli(launch, tmp_path, "--duration", "3", "--run-dir", str(tmp_path / "run"))
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out
    # Within 3 s the broken node has failed and is restarting (or crash-looping), never having
    # started; the healthy one is not named.
    line = next(x for x in out.splitlines() if "nodes failed" in x)
    assert "1 of 2 nodes failed: broken: " in line and "missing.avi" in line, line
    assert "cam:" not in line


def test_launch_file_paths_resolve_from_its_folder(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from udml_stream.launch.config import load_launch, write_launch

    robot = tmp_path / "runs" / "robot"
    robot.mkdir(parents=True)
    launch = robot / "launch.toml"
    launch.write_text("""
[nodes.camera]
program = "camera"
source = "../demo/scene.avi"
endpoint = "ipc://cam.sock"
[nodes.usb]
program = "camera"
source = "0"
endpoint = "tcp://127.0.0.1:5601"
[nodes.ipcam]
program = "camera"
source = "rtsp://cam.local/stream"
endpoint = "tcp://127.0.0.1:5602"
[nodes.mic]
program = "microphone"
source = "file"
file = "../demo/scene.wav"
endpoint = "tcp://127.0.0.1:5603"
[nodes.fusion]
program = "fusion"
checkpoint = "checkpoint"
subscribe = ["ipc://cam.sock"]
endpoint = "tcp://127.0.0.1:5604"
[security]
keys = "/abs/keys"
allow = "allowed"
""")
    demo = str(tmp_path / "runs" / "demo")
    for where in (tmp_path, tmp_path / "runs", Path("/")):
        monkeypatch.chdir(where)  # an absolute launch path: the same paths from any folder
        nodes = load_launch(launch).nodes
        assert nodes["camera"].source == f"{demo}/scene.avi"
        assert str(nodes["mic"].file) == f"{demo}/scene.wav"
        assert nodes["fusion"].checkpoint == robot / "checkpoint"
    monkeypatch.chdir(tmp_path)
    # A relative launch path: relative results, still from the file's folder.
    got = load_launch(Path("runs/robot/launch.toml"))
    assert got.nodes["camera"].source == "runs/demo/scene.avi"  # normalised lexically
    assert got.nodes["fusion"].checkpoint == Path("runs/robot/checkpoint")
    # Not file paths: device indices, URLs and endpoints are used as written.
    assert got.nodes["usb"].source == "0"
    assert got.nodes["ipcam"].source == "rtsp://cam.local/stream"
    assert got.nodes["camera"].endpoint == "ipc://cam.sock"
    assert got.security.keys == Path("/abs/keys")
    assert got.security.allow == Path("runs/robot/allowed")
    # write_launch takes paths as its caller means them (from the working directory) and
    # writes them relative to the file's folder.
    written = write_launch(Path("runs/robot/w.toml"), {"mic": {
        "program": "microphone", "source": "file", "file": Path("runs/demo/scene.wav"),
        "endpoint": "tcp://127.0.0.1:5603"}})
    assert 'file = "../demo/scene.wav"' in (robot / "w.toml").read_text()
    assert written.nodes["mic"].file == Path("runs/demo/scene.wav")


def test_launch_from_another_folder_finds_its_checkpoint_and_sources(
        scene, tiny_checkpoint: Path, tmp_path: Path) -> None:
    # The new user's case: a launch file beside its media and checkpoint, launched from elsewhere.
    robot = tmp_path / "robot"
    robot.mkdir()
    for src, name in ((scene.video, "scene.avi"), (scene.audio, "scene.wav")):
        (robot / name).symlink_to(src)
    (robot / "checkpoint").symlink_to(tiny_checkpoint)
    launch = robot / "launch.toml"
    launch.write_text(f"""
[nodes.camera]
program = "camera"
source = "scene.avi"
loop = true
endpoint = "ipc://{tmp_path}/cam"
restart = "never"
[nodes.mic]
program = "microphone"
source = "file"
file = "scene.wav"
loop = true
endpoint = "ipc://{tmp_path}/mic"
restart = "never"
[nodes.fusion]
program = "fusion"
checkpoint = "checkpoint"
device = "cpu"
subscribe = ["ipc://{tmp_path}/cam", "ipc://{tmp_path}/mic"]
endpoint = "ipc://{tmp_path}/fused"
restart = "never"
""")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    logs = tmp_path / "run" / "logs"
    proc = _launch_cli(launch, elsewhere, "--run-dir", str(tmp_path / "run"))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()

    def started() -> bool:
        logs_in = {n: (logs / f"{n}.log").read_text() if (logs / f"{n}.log").exists() else ""
                   for n in ("camera", "mic", "fusion")}
        return ("publishing on" in logs_in["camera"] and "publishing on" in logs_in["mic"]
                and "fusing " in logs_in["fusion"])
    try:
        end = time.monotonic() + 60  # the fusion node imports torch: seconds on a busy machine
        while time.monotonic() < end and not started() and proc.poll() is None:
            time.sleep(0.1)
        assert started(), "".join(lines)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "".join(lines)
