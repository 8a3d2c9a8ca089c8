"""The live view (``udml view``) over Foxglove's WebSocket protocol with a real client, the
viewer channels of an exported log, and the shipped layout."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from mcap.reader import make_reader

from udml_stream.benchmarks.view import Traffic, fusion_result, scene_frames
from udml_stream.errors import ConfigError
from udml_stream.logs import LogError, LogWriter, iter_wire
from udml_stream.logs.foxglove import audio_level
from udml_stream.messages import AudioChunk, CameraFrame, Heartbeat, Label, encode_bytes
from udml_stream.transport import Publisher
from udml_stream.view import export_foxglove
from udml_stream.view.client import FoxgloveClient
from udml_stream.view.layout import build_layout
from udml_stream.view.server import ViewConfig, ViewServer

pytest.importorskip("websockets")

ROOT = Path(__file__).parent.parent


class _Running:
    """A view server receiving in a thread of its own (which owns its ZeroMQ socket)."""

    def __init__(self, cfg: ViewConfig) -> None:
        self.server = ViewServer(cfg)
        self.port = self.server.start()
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.stop()
        self.thread.join(10)
        assert not self.thread.is_alive()


def _until(client: FoxgloveClient, want: set[str], timeout_s: float) -> Counter:
    """Receive until a message arrived on every topic of ``want``; counts per topic."""
    seen: Counter = Counter()
    deadline = time.monotonic() + timeout_s
    while not want <= set(seen) and time.monotonic() < deadline:
        r = client.recv(0.2)
        if r is not None:
            seen[r.topic] += 1
    assert want <= set(seen), f"no messages on {want - set(seen)} within {timeout_s} s"
    return seen


def test_live_view_delivers_frames_levels_and_every_result(tmp_path: Path) -> None:
    """Frames at 30 fps, audio and fusion results over real ZeroMQ sockets; a WebSocket client
    subscribes to the advertised channels: ≥ 25 image frames/s and every fusion result."""
    ep, ep_bad = f"ipc://{tmp_path}/bus", f"ipc://{tmp_path}/bad"
    frames = scene_frames(8)
    # The malformed message goes out on a socket of its own: a ZeroMQ socket is not thread-safe,
    # and the traffic thread owns the bus publisher (two threads sending multipart messages on
    # one socket can interleave their frames into further malformed messages).
    with Publisher(ep, bind=True, hwm=64) as pub, Publisher(ep_bad, bind=True) as bad:
        view = _Running(ViewConfig([ep, ep_bad], port=0))
        traffic = Traffic(pub, frames=frames)
        traffic.start()
        try:
            with FoxgloveClient("127.0.0.1", view.port) as client:
                assert client.subprotocol == "foxglove.sdk.v1"
                topics = {"/camera/image", "/mic/level", "/fused/view"}
                _until(client, topics, timeout_s=5)
                bad.send_raw([b"camera", b"\x00not msgpack", b""])  # counted and dropped
                # Subscribed and flowing: from the next result on, every one must arrive.
                first_seq = traffic.sent_frames + 1
                t0 = time.monotonic()
                images: list = []
                results: dict[int, dict] = {}
                levels: list = []
                while time.monotonic() - t0 < 2.0:
                    r = client.recv(0.2)
                    if r is None:
                        continue
                    if r.topic == "/camera/image":
                        images.append(r)
                    elif r.topic == "/fused/view":
                        results[r.json()["seq"]] = {"ts": r.timestamp_ns, **r.json()}
                    elif r.topic == "/mic/level":
                        levels.append(r.json())
                elapsed = time.monotonic() - t0
                last_seq = traffic.sent_frames - 1
                # The results published in the window may still be on their way: collect them.
                deadline = time.monotonic() + 2.0
                while (set(range(first_seq, last_seq + 1)) - set(results)
                       and time.monotonic() < deadline):
                    r = client.recv(0.2)
                    if r is not None and r.topic == "/fused/view":
                        results[r.json()["seq"]] = {"ts": r.timestamp_ns, **r.json()}
                chans = client.topics()
        finally:
            traffic.stop_event.set()
            traffic.join(5)
            view.close()
    stats = view.server.stats

    assert len(images) / elapsed >= 25, f"{len(images)} frames in {elapsed:.2f} s"
    missing = set(range(first_seq, last_seq + 1)) - set(results)
    assert last_seq - first_seq >= 50 and not missing, f"results not delivered: {sorted(missing)}"
    assert stats.decode_errors == 1

    # Advertised with Foxglove's schemas, JSON-encoded.
    assert chans["/camera/image"].schema_name == "foxglove.CompressedImage"
    assert chans["/camera/image"].encoding == "json"
    assert chans["/fused/view"].schema_name == "udml.FusionResult"
    assert json.loads(chans["/mic/level"].schema)["title"] == "udml.AudioLevel"

    # Images decode to the frame that was sent (JPEG: close, not equal), stamped with capture time.
    img = images[-1].json()
    assert img["format"] == "jpeg" and img["frame_id"] == "camera"
    t_img = img["timestamp"]["sec"] * 10**9 + img["timestamp"]["nsec"]
    assert t_img == images[-1].timestamp_ns
    k = round((t_img - traffic.start_ns) * 30 / 1e9)  # frame index from its capture time
    jpg = cv2.imdecode(np.frombuffer(base64.b64decode(img["data"]), np.uint8), cv2.IMREAD_COLOR)
    assert jpg.shape == (480, 640, 3)
    assert np.abs(jpg.astype(int) - frames[k % len(frames)]).mean() < 6

    # Results: σ̂, weights and probabilities as sent, stamped with the frame's capture time.
    r = results[first_seq + 10]
    want = fusion_result("fused", first_seq + 10, 0)
    assert r["weights"] == pytest.approx(want.weights) and r["probs"] == pytest.approx(want.probs)
    assert r["sigma_hat"] == pytest.approx(want.sigma_hat)
    assert r["label"] == str((first_seq + 10) % 10) and r["pred"] == (first_seq + 10) % 10
    assert r["ts"] == traffic.start_ns + (first_seq + 10) * int(1e9 / 30)

    # The audio level of a 0.5-amplitude sine: RMS 0.5/√2 = -9.03 dBFS, peak ≈ -6.02 dBFS.
    assert len(levels) >= 80
    assert levels[-1]["rms_dbfs"] == pytest.approx(-9.03, abs=0.02)
    assert levels[-1]["peak_dbfs"] == pytest.approx(-6.02, abs=0.05)


def test_client_subscribes_again_when_the_server_did_not_yet_know_the_channel(
        tmp_path: Path) -> None:
    """foxglove-sdk can answer a subscribe that crossed its advertise with "Unknown channel
    ID"; the client sends that subscribe again and the channel's messages then flow."""
    ep = f"ipc://{tmp_path}/bus"
    with Publisher(ep, bind=True, hwm=64) as pub:
        view = _Running(ViewConfig([ep], port=0))
        traffic = Traffic(pub, frames=scene_frames(2, 160, 120))
        traffic.start()
        try:
            with FoxgloveClient("127.0.0.1", view.port, subscribe_to=lambda t: False) as client:
                deadline = time.monotonic() + 5
                while "/mic/level" not in client.topics() and time.monotonic() < deadline:
                    client.recv(0.1)
                cid = client.topics()["/mic/level"].id
                # The state the race leaves: a subscription the server refused as unknown.
                client._subs[1] = cid
                client._control(json.dumps({"op": "status", "level": 2,
                                            "message": f"Unknown channel ID: {cid}"}))
                seen = _until(client, {"/mic/level"}, timeout_s=5)
        finally:
            traffic.stop_event.set()
            traffic.join(5)
            view.close()
    assert seen["/mic/level"] >= 1 and client._retries == {1: 1}


def test_fleet_topics_each_get_channels_and_max_fps_thins_frames(tmp_path: Path) -> None:
    """``<robot>/camera`` topics get a channel each; ``max_fps`` 10 of a 30 fps camera shows
    every third frame; heartbeats are not shown; without a client nothing is encoded."""
    ep = f"ipc://{tmp_path}/bus"
    with Publisher(ep, bind=True, hwm=64) as pub:
        view = _Running(ViewConfig([ep], port=0, max_fps=10, image="raw"))
        traffic = Traffic(pub, robots=("r1", "r2"), frames=scene_frames(2, 160, 120))
        traffic.start()
        try:
            # Streams arriving before any client are counted, not encoded: wait for some.
            deadline = time.monotonic() + 10
            while view.server.stats.no_viewer == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            idle = view.server.stats.no_viewer
            with FoxgloveClient("127.0.0.1", view.port,
                                subscribe_to=lambda t: t.endswith("/image")) as client:
                _until(client, {"/r1/camera/image", "/r2/camera/image"}, timeout_s=5)
                pub.publish(Heartbeat("hb.fusion", 0, 1))
                t0 = time.monotonic()
                seen: Counter = Counter()
                stamps: list[int] = []
                while time.monotonic() - t0 < 1.5:
                    r = client.recv(0.2)
                    if r is not None:
                        seen[r.topic] += 1
                        if r.topic == "/r1/camera/image":
                            stamps.append(r.timestamp_ns)
                chans = client.topics()
        finally:
            traffic.stop_event.set()
            traffic.join(5)
            view.close()
    assert idle > 0  # streams arrived before the client: counted, not encoded
    assert {"/r1/fused/view", "/r2/mic/level"} <= set(chans)
    assert not any(t.startswith("/hb") for t in chans)
    assert chans["/r1/camera/image"].schema_name == "foxglove.RawImage"
    for topic in ("/r1/camera/image", "/r2/camera/image"):
        assert 12 <= seen[topic] <= 17, seen  # 10 fps over 1.5 s, never 30
    assert set(np.diff(stamps)) == {3 * int(1e9 / 30)}  # every third frame, evenly
    assert view.server.stats.rate_limited > 0


def test_view_config_errors_name_the_setting() -> None:
    for cfg, word in ((ViewConfig([]), "endpoint"), (ViewConfig(["localhost:1"]), "endpoint"),
                      (ViewConfig(["tcp://127.0.0.1:1"], image="png"), "image"),
                      (ViewConfig(["tcp://127.0.0.1:1"], max_fps=-1), "max_fps"),
                      (ViewConfig(["tcp://127.0.0.1:1"], port=70000), "port")):
        with pytest.raises(ConfigError, match=word):
            ViewServer(cfg)


def test_audio_level_of_gaps_and_int16() -> None:
    x = np.full(100, np.nan, np.float32)
    assert audio_level(x) == (None, None, 0.0)
    x[:50] = 0.25
    rms, _peak, valid = audio_level(x)
    assert rms == pytest.approx(20 * np.log10(0.25)) and valid == 0.5
    assert audio_level(np.full(10, 16384, np.int16))[0] == pytest.approx(-6.02, abs=0.01)
    assert audio_level(np.zeros(10, np.float32))[0] == -120.0


def _log(path: Path) -> int:
    """A small log: camera, mic, fusion results, labels and a heartbeat; returns its record
    count."""
    w = LogWriter(path, chunk_size=64 * 1024)
    frames = scene_frames(3, 64, 48)
    n = 0
    for i in range(30):
        t_cap, t_log = 1_000_000_000 + i * 33_333_333, 1_700_000_000_000_000_000 + i * 33_333_333
        msgs = [CameraFrame("camera", i, t_cap, image=frames[i % 3]),
                AudioChunk("mic", i, t_cap, samples=np.full(320, 0.1, np.float32)),
                fusion_result("fused", i, t_cap)]
        if i % 10 == 0:
            msgs += [Label("label", i // 10, t_cap, label=i % 10, name=str(i % 10)),
                     Heartbeat("hb.camera", i, t_cap)]
        for m in msgs:
            fr = encode_bytes(m)
            w.write(m.topic or m.stream, fr[1:], m.seq, m.capture_ns, t_log, m.kind, m.stream,
                    m.clock)
            n += 1
    w.finish({"udml_recording": {"note": "test"}})
    return n


def test_export_adds_viewer_channels_and_keeps_every_record(tmp_path: Path) -> None:
    src, out = tmp_path / "a.mcap", tmp_path / "a.foxglove.mcap"
    n = _log(src)
    rep = export_foxglove(src, out)
    assert rep.copied == n
    assert rep.written == {"/camera/image": 30, "/mic/level": 30, "/fused/view": 30}
    with open(src, "rb") as fh:
        before = [(c.topic, m.log_time, m.publish_time, m.sequence, m.data)
                  for _, c, m in make_reader(fh).iter_messages()]
    with open(out, "rb") as fh:
        reader = make_reader(fh)
        summary = reader.get_summary()
        after = [(c.topic, m.log_time, m.publish_time, m.sequence, m.data)
                 for _, c, m in reader.iter_messages() if not c.topic.startswith("/")]
        views = [(s.name, c, m) for s, c, m in reader.iter_messages()
                 if c.topic.startswith("/")]
        meta = {m.name: m.metadata for m in reader.iter_metadata()}
    assert after == before  # every original record, byte for byte, stamps and all
    assert meta["udml_recording"] == {"note": "test"}
    assert {c.topic: s for s, c, _ in views} == {"/camera/image": "foxglove.CompressedImage",
                                                 "/mic/level": "udml.AudioLevel",
                                                 "/fused/view": "udml.FusionResult"}
    assert {c.message_encoding for c in summary.channels.values() if c.topic[0] == "/"} == {"json"}
    # Viewer records sit at the original's log time, with the capture time as publish time.
    _s, _c, m = next(v for v in views if v[1].topic == "/fused/view")
    assert (m.log_time, m.publish_time) == (1_700_000_000_000_000_000, 1_000_000_000)
    assert json.loads(m.data)["weights"] == pytest.approx(fusion_result("f", 0, 0).weights)
    # Still a udml log: its wire records read back as before, viewer channels ignored.
    assert [r.topic for r in iter_wire(out)] == [r.topic for r in iter_wire(src)]
    # Exporting the export, or onto the input, is refused.
    with pytest.raises(LogError, match="exported before"):
        export_foxglove(out, tmp_path / "b.mcap")
    with pytest.raises(LogError, match="is the input"):
        export_foxglove(src, src)
    assert not (tmp_path / "b.mcap").exists()


def test_shipped_layout_is_the_built_one_on_the_view_topics() -> None:
    """configs/foxglove_layout.json is ``build_layout()`` (rebuild it with
    ``udml_stream.view.layout.write_layout``), on the topics the view serves."""
    text = (ROOT / "configs/foxglove_layout.json").read_text(encoding="utf-8")
    assert text == build_layout()
    panels = []
    stack = [json.loads(text)["content"]]
    while stack:
        node = stack.pop()
        if node["type"] == "split":
            stack += [i["content"] for i in node["items"]]
        else:
            panels.append(node)
    by_type = {p["panelType"]: p["config"] for p in panels}
    assert by_type["Image"]["imageMode"]["imageTopic"] == "/camera/image"
    assert by_type["Indicator"]["path"] == "/fused/view.label"
    plotted = {s["value"] for p in panels if p["panelType"] == "Plot" for s in p["config"]["paths"]}
    assert {"/fused/view.weights.image", "/fused/view.weights.audio",
            "/fused/view.sigma_hat.image", "/fused/view.sigma_hat.audio",
            "/mic/level.rms_dbfs"} <= plotted
