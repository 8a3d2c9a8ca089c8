"""CurveZMQ and inbound size limits over real sockets on loopback (random ports, handshakes)."""

from __future__ import annotations

import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import zmq
from mcap.reader import make_reader
from typer.testing import CliRunner
from zmq.utils.monitor import recv_monitor_message

from udml_stream.cli.main import app
from udml_stream.errors import ConfigError
from udml_stream.launch.config import load_launch, parse_launch
from udml_stream.messages import AudioChunk, Heartbeat
from udml_stream.transport import Publisher, Security, Subscriber, secure_context
from udml_stream.transport.security import (
    PUBLISHER_MAX_INBOUND,
    SUBSCRIBER_MAX_INBOUND,
    generate_keys,
    stop_authenticator,
)

DEADLINE_S = 10.0


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A server pair, an allow-listed client pair and an unlisted one ("rogue")."""
    d = tmp_path_factory.mktemp("keys")
    generate_keys(d, ["client"])
    generate_keys(d, ["rogue"], allow=False)
    return d


@pytest.fixture
def contexts():
    """Makes secure (or plain) contexts and tears them down; fails on leaked sockets."""
    made: list[zmq.Context] = []

    def make(sec: Security | None) -> zmq.Context:
        made.append(secure_context(sec))
        return made[-1]

    yield make
    for c in made:
        stop_authenticator(c)  # its ZAP sockets are not the test's
    leaked = [s for c in made for s in c._sockets if not s.closed]
    for c in made:
        c.destroy(linger=0)
    assert not leaked, f"{len(leaked)} socket(s) left open"


def _connect_and_watch(sock: zmq.Socket, endpoint: str, until: int) -> list[int]:
    """Connect ``sock`` and collect its monitor events until one in the mask ``until`` (bounded)."""
    mon = sock.get_monitor_socket()
    seen: list[int] = []
    try:
        sock.connect(endpoint)
        end = time.monotonic() + DEADLINE_S
        while time.monotonic() < end:
            if mon.poll(100):
                seen.append(recv_monitor_message(mon)["event"])
                if seen[-1] & until:
                    return seen
        raise AssertionError(f"no event {until:#x} within {DEADLINE_S} s; saw {seen}")
    finally:
        sock.disable_monitor()
        mon.close(linger=0)


def _heard(pub: Publisher, sub: Subscriber) -> bool:
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        pub.publish(Heartbeat("sync", 0, 0, node="test"))
        if sub.recv_one(50) is not None:
            return True
    return False


def test_listed_client_receives_unlisted_and_plaintext_get_nothing(keys: Path, contexts) -> None:
    server = contexts(Security.from_keys_dir(keys))
    with Publisher("tcp://127.0.0.1:*", ctx=server, hwm=100) as pub:
        assert pub.sock.curve_server == 1
        rogue = Subscriber([], ctx=contexts(Security.from_keys_dir(keys, client="rogue")))
        plain = Subscriber([], ctx=zmq.Context.instance())
        listed = Subscriber([], ctx=contexts(Security.from_keys_dir(keys)))
        try:
            # The handshake itself tells: the server refuses the unlisted key (ZAP 400), so
            # its handshake never completes.
            seen = _connect_and_watch(rogue.sock, pub.endpoint, zmq.EVENT_HANDSHAKE_FAILED_AUTH)
            assert zmq.EVENT_HANDSHAKE_SUCCEEDED not in seen

            listed.sock.connect(pub.endpoint)
            plain.sock.connect(pub.endpoint)
            assert _heard(pub, listed)
            for i in range(20):
                pub.publish(AudioChunk("mic", i, i, samples=np.zeros(16, np.float32)))
            got = [listed.recv_one(2000) for _ in range(20)]
            assert [m.seq for m in got if isinstance(m, AudioChunk)] == list(range(20))
            assert rogue.receive(0) == [] and plain.receive(0) == []
            assert rogue.stats == {} and plain.stats == {}
        finally:
            for s in (rogue, plain, listed):
                s.close()


def test_plaintext_client_fails_the_handshake(keys: Path, contexts) -> None:
    server = contexts(Security.from_keys_dir(keys))
    with Publisher("tcp://127.0.0.1:*", ctx=server) as pub, \
            Subscriber([], ctx=contexts(None)) as plain:
        # Watched from the client: the server refuses a peer without CURVE (mechanism mismatch).
        seen = _connect_and_watch(plain.sock, pub.endpoint, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
        assert zmq.EVENT_HANDSHAKE_SUCCEEDED not in seen
        assert plain.receive(0) == []


def test_receiving_sockets_cap_inbound_frames(contexts) -> None:
    ctx = contexts(None)
    # Sockets made by library code straight from a configured context get the caps too.
    raw_sub, raw_pub = ctx.socket(zmq.SUB), ctx.socket(zmq.XPUB)
    try:
        assert raw_sub.getsockopt(zmq.MAXMSGSIZE) == SUBSCRIBER_MAX_INBOUND
        assert raw_pub.getsockopt(zmq.MAXMSGSIZE) == PUBLISHER_MAX_INBOUND
    finally:
        raw_sub.close(0)
        raw_pub.close(0)
    plain = zmq.Context.instance()
    with Publisher("tcp://127.0.0.1:*", ctx=plain) as pub, \
            Subscriber([pub.endpoint], ctx=plain, max_frame_bytes=1000) as sub:
        assert pub.sock.getsockopt(zmq.MAXMSGSIZE) == PUBLISHER_MAX_INBOUND
        assert _heard(pub, sub)
        mon = sub.sock.get_monitor_socket()
        try:
            # A frame over the cap: libzmq drops the connection as soon as the frame's header
            # announces it (nothing is allocated) and, a protocol error, does not reconnect.
            pub.publish(AudioChunk("mic", 0, 0, samples=np.zeros(4000, np.float32)))
            end = time.monotonic() + DEADLINE_S
            events: list[int] = []
            while zmq.EVENT_DISCONNECTED not in events and time.monotonic() < end:
                if mon.poll(100):
                    events.append(recv_monitor_message(mon)["event"])
            assert zmq.EVENT_DISCONNECTED in events, events
        finally:
            sub.sock.disable_monitor()
            mon.close(linger=0)
        assert sub.receive(0) == [] and "mic" not in sub.stats


def test_keys_generate_cli(tmp_path: Path) -> None:
    d = tmp_path / "k"
    r = CliRunner().invoke(app, ["keys", "generate", str(d), "--client", "laptop"])
    assert r.exit_code == 0, r.output
    assert {p.name for p in d.iterdir()} == {"server.key", "server.key_secret", "laptop.key",
                                             "laptop.key_secret", "allowed"}
    assert [p.name for p in (d / "allowed").iterdir()] == ["laptop.key"]
    assert (d / "laptop.key_secret").stat().st_mode & 0o077 == 0
    sec = Security.from_keys_dir(d, client="laptop")
    assert sec.server_secret and sec.client_secret and sec.allow_dir == d / "allowed"
    r = CliRunner().invoke(app, ["keys", "generate", str(d), "--client", "laptop"])
    assert r.exit_code == 2 and "never overwritten" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["keys", "generate", str(d), "--client", "../x"])
    assert r.exit_code == 2 and "client name '../x'" in r.output


def test_launch_file_security_rules(tmp_path: Path) -> None:
    node = {"program": "microphone", "source": "file", "file": "a.wav"}
    with pytest.raises(ConfigError, match=r"nodes\.mic\.endpoint = 'tcp://0\.0\.0\.0:5602' binds "
                                          r"beyond this host without encryption"):
        parse_launch({"nodes": {"mic": {**node, "endpoint": "tcp://0.0.0.0:5602"}}}, "l.toml")
    ok = parse_launch({"nodes": {"mic": {**node, "endpoint": "tcp://0.0.0.0:5602"}},
                       "security": {"curve": True, "keys": str(tmp_path / "none")}}, "l.toml")
    with pytest.raises(ConfigError, match=r"no server\.key there; create keys with `udml keys"):
        ok.security.load()
    shipped = load_launch(Path(__file__).parent.parent / "configs" / "robot.toml")
    assert all(n.endpoint.startswith("tcp://127.0.0.1:") for n in shipped.nodes.values())


def _write_wav(path: Path, seconds: float = 1.0, rate: int = 16000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def _secure_launch(tmp_path: Path, keys: Path, endpoint: str) -> Path:
    _write_wav(tmp_path / "tone.wav")
    launch = tmp_path / "l.toml"
    launch.write_text(f"""
[nodes.mic]
program = "microphone"
source = "file"
file = "{tmp_path / 'tone.wav'}"
loop = true
endpoint = "{endpoint}"

[security]
curve = true
keys = "{keys}"
""")
    return launch


def test_node_from_a_secure_launch_file_speaks_curve(keys: Path, contexts, tmp_path: Path) -> None:
    # The node connects to our bound subscriber: no port is picked before it is bound.
    with Subscriber(["tcp://127.0.0.1:*"], bind=True, topics=["mic"],
                    ctx=contexts(Security.from_keys_dir(keys))) as sub:
        launch = _secure_launch(tmp_path, keys, sub.endpoints[0])
        # A node that connects is the CURVE client: it needs a client pair, ours is "client".
        proc = subprocess.Popen([sys.executable, "-m", "udml_stream_apps.nodes", str(launch), "mic",
                                 "--set", "bind=false"], stderr=subprocess.PIPE, text=True)
        try:
            got = None
            end = time.monotonic() + 30
            while got is None and time.monotonic() < end and proc.poll() is None:
                got = sub.recv_one(200)
            assert isinstance(got, AudioChunk) and got.samples.shape == (320,)
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err


def test_record_cli_uses_the_launch_file_security(keys: Path, contexts, tmp_path: Path) -> None:
    """`udml --security FILE record` gets CURVE through zmq.Context.instance(), which the
    recorder uses without knowing about security."""
    server = contexts(Security.from_keys_dir(keys))
    with Publisher("tcp://127.0.0.1:*", ctx=server) as pub:
        launch = _secure_launch(tmp_path, keys, "tcp://127.0.0.1:1")
        out = tmp_path / "s.mcap"
        proc = subprocess.Popen([sys.executable, "-m", "udml_stream.cli.main", "--security",
                                 str(launch), "record", pub.endpoint, "-o", str(out),
                                 "--duration", "3"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        seq = 0
        while proc.poll() is None:
            pub.publish(AudioChunk("mic", seq, seq, samples=np.zeros(160, np.float32)))
            seq += 1
            time.sleep(0.01)
        output = proc.stdout.read() if proc.stdout else ""
    assert proc.returncode == 0, output
    with out.open("rb") as f:
        topics = [ch.topic for _, ch, _ in make_reader(f).iter_messages()]
    assert topics and set(topics) == {"mic"}
