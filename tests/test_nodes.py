"""Nodes as real processes on loopback: camera (file, MJPEG over HTTP), microphone (PulseAudio,
WAV file), fusion; bad input; a camera killed mid-stream; the plain pyzmq client."""

from __future__ import annotations

import http.server
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytest

from udml_stream.launch.config import load_launch
from udml_stream.launch.supervisor import Supervisor
from udml_stream.messages import AudioChunk, CameraFrame, FusionResult, Heartbeat, encode_bytes
from udml_stream.transport import Publisher, Subscriber

ROOT = Path(__file__).parent.parent


def wait_for(sub: Subscriber, pred, timeout_s: float = 20.0) -> list:
    """Messages received until ``pred(msgs)`` holds; fails after ``timeout_s``."""
    got: list = []
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        got += sub.receive(100)
        if pred(got):
            return got
    raise AssertionError(f"condition not met within {timeout_s}s; got {len(got)} messages")


def node_cmd(launch: Path, node: str, *sets: str) -> list[str]:
    cmd = [sys.executable, "-m", "udml_stream_apps.nodes", str(launch), node]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def test_camera_node_from_video_file(scene, tmp_path: Path) -> None:
    launch = tmp_path / "l.toml"
    ep = f"ipc://{tmp_path}/cam"
    launch.write_text(f'[nodes.cam]\nprogram = "camera"\nsource = "{scene.video}"\n'
                      f'endpoint = "{ep}"\nloop = true\n')
    proc = subprocess.Popen(node_cmd(launch, "cam"))
    try:
        with Subscriber([ep]) as sub:
            msgs = wait_for(sub, lambda m: sum(isinstance(x, CameraFrame) for x in m) >= 10
                            and any(isinstance(x, Heartbeat) for x in m))
        frames = [m for m in msgs if isinstance(m, CameraFrame)]
        assert frames[0].image.shape == (480, 640, 3)
        seqs = [f.seq for f in frames]
        assert seqs == sorted(seqs)  # the file's frame index, increasing
        gaps = np.diff([f.capture_ns for f in frames]) / 1e6
        assert 20 < np.median(gaps) < 50  # paced at the file's 30 fps
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


class _MjpegHandler(http.server.BaseHTTPRequestHandler):
    frames: ClassVar[list[bytes]] = []

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        try:
            for i in range(300):
                jpg = self.frames[i % len(self.frames)]
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                 + f"Content-Length: {len(jpg)}\r\n\r\n".encode() + jpg + b"\r\n")
                time.sleep(1 / 30)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: object) -> None:
        pass


def test_camera_node_from_mjpeg_http_stream(tmp_path: Path) -> None:
    imgs = []
    for k in range(3):
        img = np.zeros((240, 320, 3), np.uint8)
        cv2.putText(img, str(k), (120, 170), cv2.FONT_HERSHEY_SIMPLEX, 4, (255, 255, 255), 8)
        imgs.append(cv2.imencode(".jpg", img)[1].tobytes())
    _MjpegHandler.frames = imgs
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MjpegHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/stream.mjpg"
    launch = tmp_path / "l.toml"
    # The test binds first (a port the OS picks and the test holds) and the node connects to it:
    # no window in which another process can take the port.
    with Subscriber(["tcp://127.0.0.1:*"], bind=True, topics=["camera"]) as sub:
        launch.write_text(f'[nodes.ipcam]\nprogram = "camera"\nsource = "{url}"\n'
                          f'endpoint = "{sub.endpoints[0]}"\nbind = false\n')
        proc = subprocess.Popen(node_cmd(launch, "ipcam"))
        try:
            msgs = wait_for(sub, lambda m: len(m) >= 5)
        finally:
            proc.terminate()
            proc.wait(10)
            server.shutdown()
    assert all(m.image.shape == (240, 320, 3) for m in msgs)
    assert max(m.image.max() for m in msgs) > 200  # real content, not blank frames


def test_camera_node_reports_missing_device(tmp_path: Path) -> None:
    launch = tmp_path / "l.toml"
    launch.write_text(f'[nodes.cam]\nprogram = "camera"\nsource = "7"\n'
                      f'endpoint = "ipc://{tmp_path}/c"\n')
    r = subprocess.run(node_cmd(launch, "cam"), capture_output=True, text=True, timeout=30)
    assert r.returncode == 3
    assert "camera device 7 not found" in r.stderr and "video devices here" in r.stderr


def _pulse_ok() -> bool:
    return shutil.which("paplay") is not None and subprocess.run(
        ["pactl", "info"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _pulse_ok(), reason="no PulseAudio server (scripts/test starts one)")
def test_microphone_node_through_pulseaudio(tmp_path: Path) -> None:
    wav = tmp_path / "seven.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "seven seven seven", "-w", str(wav)], check=True)
    launch = tmp_path / "l.toml"
    ep = f"ipc://{tmp_path}/mic"
    launch.write_text(f'[nodes.mic]\nprogram = "microphone"\ndevice = "pulse"\nendpoint = "{ep}"\n')
    subprocess.run(["pactl", "set-default-source", "udml_vmic.monitor"], check=False)
    proc = subprocess.Popen(node_cmd(launch, "mic"))
    player = None
    try:
        with Subscriber([ep], topics=["mic"]) as sub:
            wait_for(sub, lambda m: len(m) >= 5)  # the stream runs before we speak
            player = subprocess.Popen(["paplay", "-d", "udml_vmic", str(wav)])
            msgs = wait_for(sub, lambda m: max((float(np.abs(c.samples).max()) for c in m),
                                               default=0) > 0.1, timeout_s=30)
        chunks = [m for m in msgs if isinstance(m, AudioChunk)]
        assert all(c.sample_rate == 16000 and c.samples.shape == (320,) for c in chunks)
        assert np.all(np.diff([c.seq for c in chunks]) == 1)
    finally:
        if player:
            player.wait(30)
        proc.terminate()
        assert proc.wait(10) == 0


def _bad_messages() -> list[list[bytes]]:
    import msgpack

    good = encode_bytes(CameraFrame("camera", 0, time.monotonic_ns(),
                                    image=np.zeros((48, 64, 3), np.uint8)))
    h = msgpack.unpackb(good[1])

    def w(**kw: object) -> list[bytes]:
        return [good[0], msgpack.packb({**h, **kw}), good[2]]

    return [[b"camera", b"\x00\xffgarbage"], w(v=2), [good[0], good[1], good[2][:-7]],
            w(shape=[48, 64, 4]), w(shape=[60000, 60000, 3]), w(dtype="object")]


@pytest.fixture
def pipeline(scene, tiny_checkpoint, tmp_path: Path):
    """Camera (video file) + microphone (WAV file) + fusion, supervised; plus a rogue publisher."""
    rogue = f"ipc://{tmp_path}/rogue"  # bound later by the test: a path cannot be taken meanwhile
    eps = {n: f"ipc://{tmp_path}/{n}" for n in ("camera", "mic", "fusion")}
    launch = tmp_path / "launch.toml"
    launch.write_text(f"""
[nodes.camera]
program = "camera"
source = "{scene.video}"
loop = true
endpoint = "{eps['camera']}"
restart = "never"
[nodes.mic]
program = "microphone"
source = "file"
file = "{scene.audio}"
loop = true
endpoint = "{eps['mic']}"
[nodes.fusion]
program = "fusion"
checkpoint = "{tiny_checkpoint}"
device = "cpu"
threads = 1
subscribe = ["{eps['camera']}", "{eps['mic']}", "{rogue}"]
endpoint = "{eps['fusion']}"
camera_deadline_ms = 400
""")
    sup = Supervisor(launch, load_launch(launch), log_dir=tmp_path / "logs")
    sup.start()
    yield sup, eps, rogue
    codes = sup.stop()
    assert all(c in (0, None) for c in codes.values()), codes


def test_fusion_pipeline_bad_input_and_camera_loss(pipeline) -> None:
    sup, eps, rogue = pipeline
    with Subscriber([eps["fusion"]]) as sub:
        # Until half a window of audio has arrived the model treats the audio as absent.
        results = wait_for(sub, lambda m: any(isinstance(x, FusionResult) and all(
            x.present.values()) for x in m), timeout_s=60)
        both = [r for r in results if isinstance(r, FusionResult) and all(r.present.values())]
        r = both[-1]
        # Effective multipliers of the residual rule: (1 + w_image) + (1 + w_audio), Σw = 2.
        assert abs(sum(r.weights.values()) - 4.0) < 1e-4 and abs(sum(r.probs) - 1) < 1e-4
        assert set(r.latency_ns) >= {"publish", "transport", "sync_wait", "inference"}

        # Bad input from a rogue publisher: counted and dropped while the node keeps serving.
        with Publisher(rogue, bind=True) as pub:
            bad = _bad_messages()
            def counted(m: list) -> bool:
                hbs = [x for x in m if isinstance(x, Heartbeat) and x.node == "fusion"]
                return bool(hbs) and hbs[-1].counters.get("decode_errors", 0) >= len(bad)
            end = time.monotonic() + 30
            got: list = []
            while time.monotonic() < end and not counted(got):
                for frames in bad:
                    pub.send_raw(frames)
                got += sub.receive(300)
            assert counted(got), "fusion node did not count the malformed messages"
        assert sup.alive()["fusion"]
        wait_for(sub, lambda m: sum(isinstance(x, FusionResult) for x in m) >= 5)

        # Kill the camera: fusion continues on audio alone, camera weight 0 and flagged.
        sup.kill("camera")
        alone = wait_for(sub, lambda m: sum(isinstance(x, FusionResult)
                                            and not x.present["image"] for x in m) >= 3)
        a = [x for x in alone if isinstance(x, FusionResult) and not x.present["image"]][-1]
        assert a.weights["image"] == 0 and a.present["audio"]
        assert "camera" not in a.source_seq
        # Bring it back: fusing resumes with both streams.
        sup.nodes["camera"].restart_at = 0.0
        sup.poll()
        wait_for(sub, lambda m: any(isinstance(x, FusionResult) and x.present["image"]
                                    and x.present["audio"] for x in m), timeout_s=30)


def test_plain_pyzmq_client_reads_fusion_results(pipeline) -> None:
    _, eps, _ = pipeline
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "plain_zmq_client.py"),
                        "subscribe", eps["fusion"], "--count", "3"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("fused seq=") == 3


def test_plain_pyzmq_publisher_feeds_a_subscriber(tmp_path: Path) -> None:
    ep = f"ipc://{tmp_path}/plain"  # the example binds it: a path cannot be taken meanwhile
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "plain_zmq_client.py"),
                             "publish-audio", ep, "3"])
    try:
        with Subscriber([ep], topics=["mic"]) as sub:
            msgs = wait_for(sub, lambda m: len(m) >= 10)
        assert all(isinstance(m, AudioChunk) and m.samples.dtype == np.float32 for m in msgs)
        assert sub.total_decode_errors == 0
    finally:
        proc.wait(10)



def test_camera_source_sets_a_turned_or_mirrored_mount_right(tmp_path: Path) -> None:
    """``rotate``/``flip`` turn each grabbed frame before it is published, and a launch file
    with any other value is refused naming the key."""
    from udml_stream.errors import ConfigError
    from udml_stream.launch.config import parse_launch
    from udml_stream.sensors import CameraSource

    video = tmp_path / "v.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    img = np.zeros((48, 64, 3), np.uint8)
    img[4:20, 6:30] = 255  # a bright block near the top-left corner: no symmetry
    for _ in range(5):
        w.write(img)
    w.release()

    def first(**kw) -> np.ndarray:
        src = CameraSource(str(video), **kw)
        src.connect()
        try:
            frame = src.read(5.0)
            assert frame is not None
            return frame.image
        finally:
            src.close()

    plain = first()
    assert plain.shape == (48, 64, 3)
    np.testing.assert_array_equal(first(rotate=180), plain[::-1, ::-1])
    turned = first(rotate=90, flip="horizontal")  # mirrored left-right, then a quarter clockwise
    np.testing.assert_array_equal(turned, np.rot90(plain[:, ::-1], k=-1))
    assert turned.shape == (64, 48, 3)
    node = {"program": "camera", "source": str(video), "endpoint": "ipc:///tmp/x.sock"}
    assert parse_launch({"nodes": {"cam": {**node, "rotate": 270}}}, "t").nodes["cam"].rotate == 270
    with pytest.raises(ConfigError, match=r"nodes\.cam\.rotate"):
        parse_launch({"nodes": {"cam": {**node, "rotate": 45}}}, "t")
