"""Transport over real ZeroMQ sockets on loopback (random ports, bounded waits)."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from udml_stream.messages import AudioChunk, CameraFrame, Heartbeat
from udml_stream.transport import Publisher, Subscriber


@pytest.fixture
def ctx():
    """A private context; the test fails if it leaves a socket open."""
    c = zmq.Context()
    yield c
    leaked = [s for s in c._sockets if not s.closed]  # pyzmq tracks its sockets in a WeakSet
    c.destroy(linger=0)
    assert not leaked, f"{len(leaked)} socket(s) left open"


def connect(pub: Publisher, sub: Subscriber, deadline_s: float = 5.0) -> None:
    """Beat until the subscriber hears one (PUB/SUB slow joiner), within a deadline."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        pub.publish(Heartbeat("sync", 0, 0, node="test"))
        if sub.recv_one(50) is not None:
            sub.stats.clear()
            return
    raise TimeoutError("subscriber never connected")


def test_audio_in_order_video_latest_only_gaps_counted(ctx) -> None:
    with Publisher("tcp://127.0.0.1:*", ctx=ctx, hwm=100) as pub, \
            Subscriber([pub.endpoint], latest_only=["camera"], ctx=ctx) as sub:
        connect(pub, sub)
        img = np.zeros((48, 64, 3), np.uint8)
        for i in range(5):
            img[:] = i
            pub.publish(CameraFrame("camera", i, i, image=img.copy()))
        for i in (0, 1, 2, 4, 5):  # seq 3 lost
            pub.publish(AudioChunk("mic", i, i, samples=np.full(160, i, np.float32)))
        # Bounded: receive until the last audio chunk is in (ordered after every frame).
        msgs: list = []
        end = time.monotonic() + 5
        while time.monotonic() < end and not any(m.stream == "mic" and m.seq == 5 for m in msgs):
            msgs += sub.receive(100)
        cams = [m for m in msgs if m.stream == "camera"]
        mics = [m for m in msgs if m.stream == "mic"]
        # Each drain keeps only its newest frame; every older one is counted as dropped.
        assert cams[-1].seq == 4 and cams[-1].image[0, 0, 0] == 4
        assert len(cams) + sub.stats["camera"].dropped_stale == 5
        assert [m.seq for m in mics] == [0, 1, 2, 4, 5]
        assert sub.stats["mic"].gaps == 1
        assert sub.receive(50) == []  # bounded wait, nothing left


def test_a_nodes_heartbeats_do_not_count_as_gaps_in_its_stream(ctx) -> None:
    # A camera node named "camera" beats as stream "camera" with its own sequence numbers.
    with Publisher("tcp://127.0.0.1:*", ctx=ctx, hwm=100) as pub, \
            Subscriber([pub.endpoint], ctx=ctx) as sub:
        connect(pub, sub)
        img = np.zeros((8, 8, 3), np.uint8)
        for i in range(30):
            pub.publish(CameraFrame("camera", 100 + i, i, image=img))
            if i % 10 == 9:
                pub.publish(Heartbeat("camera", i // 10, i, topic="hb.camera", node="camera"))
        msgs: list = []
        end = time.monotonic() + 5
        while time.monotonic() < end and not any(isinstance(m, CameraFrame) and m.seq == 129
                                                  for m in msgs):
            msgs += sub.receive(100)
        assert sum(isinstance(m, CameraFrame) for m in msgs) == 30
        st = sub.stats["camera"]
        assert (st.received, st.gaps, st.restarts) == (30, 0, 0)


def test_malformed_messages_are_counted_and_dropped(ctx) -> None:
    with Publisher("tcp://127.0.0.1:*", ctx=ctx) as pub, Subscriber([pub.endpoint], ctx=ctx) as sub:
        connect(pub, sub)
        pub.send_raw([b"mic", b"\x00garbage"])
        pub.send_raw([b"mic"])
        pub.publish(AudioChunk("mic", 0, 0, samples=np.zeros(16, np.float32)))
        got = sub.recv_one(2000)
        assert got is not None and got.stream == "mic"
        assert sub.decode_errors == {"mic": 2}


def test_ipc_and_connecting_publisher(ctx, tmp_path) -> None:
    ep = f"ipc://{tmp_path}/bus"
    with Subscriber([ep], bind=True, ctx=ctx) as sub, Publisher(ep, bind=False, ctx=ctx) as pub:
        connect(pub, sub)
        pub.publish(Heartbeat("cam", 1, 1, node="cam"))
        msg = sub.recv_one(2000)
        assert isinstance(msg, Heartbeat) and msg.publish_ns > 0


def test_transport_and_messages_import_without_torch() -> None:
    code = ("import sys, udml_stream.transport, udml_stream.messages, udml_stream.corrupt, "
            "udml_stream.sensors, udml_stream.sync, udml_stream.logs, "
            "udml_stream_apps.nodes.camera, udml_stream_apps.nodes.microphone; "
            "bad=[m for m in sys.modules if m == 'torch' or m.startswith('torch.')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
