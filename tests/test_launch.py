"""The launcher and the introspection commands, as a user runs them."""

from __future__ import annotations

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
    proc = subprocess.Popen([sys.executable, "-m", "udml_stream.cli.main", "launch", str(launch)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        end = time.monotonic() + 30
        kids: list[int] = []
        while time.monotonic() < end and len(kids) < 1:
            kids = _children(proc.pid)
            time.sleep(0.2)
        assert kids, "the launcher started no node"
        time.sleep(3.0)  # the broken node fails, is restarted twice, then given up on
        kids = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "broken exited with 3; restarting" in out and "broken restarted (2)" in out
    time.sleep(0.5)
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
        assert 20 < rate < 60  # published every 20 ms (+ sleep overhead)
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
