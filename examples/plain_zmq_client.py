#!/usr/bin/env python3
"""A client written from docs/wire-format.md alone: only pyzmq, msgpack and numpy.

    plain_zmq_client.py subscribe ENDPOINT [--count N]
        print fusion results (and a summary of sensor messages) heard on ENDPOINT
    plain_zmq_client.py publish-audio ENDPOINT WAV_SECONDS [--stream mic]
        bind ENDPOINT and publish a 440 Hz tone as 20 ms float32 audio chunks
"""

import argparse
import sys
import time

import msgpack
import numpy as np
import zmq


def subscribe(endpoint: str, count: int) -> int:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    seen = 0
    deadline = time.monotonic() + 30
    while seen < count and time.monotonic() < deadline:
        if not sock.poll(1000):
            continue
        frames = sock.recv_multipart()
        header = msgpack.unpackb(frames[1], raw=False)
        if header.get("v") != 1:
            continue
        if header["kind"] == "fusion_result":
            names = header["class_names"]
            print(f"fused seq={header['seq']} pred={names[header['pred']]} "
                  f"weights={header['weights']} present={header['present']}", flush=True)
            seen += 1
        elif header["kind"] in ("camera_frame", "audio_chunk"):
            arr = np.frombuffer(frames[2], dtype=np.dtype(header["dtype"]).newbyteorder("<"))
            arr = arr.reshape(header["shape"])
            print(f"{header['kind']} {header['stream']} seq={header['seq']} shape={arr.shape}",
                  flush=True)
            seen += 1
    sock.close()
    ctx.term()
    return 0 if seen >= count else 1


def publish_audio(endpoint: str, seconds: float, stream: str) -> int:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    rate, n = 16000, 320
    t0 = time.monotonic_ns()
    for seq in range(int(seconds * rate / n)):
        cap = t0 + seq * n * 1_000_000_000 // rate
        delay = (cap + n * 1_000_000_000 // rate - time.monotonic_ns()) / 1e9
        if delay > 0:
            time.sleep(delay)
        t = (np.arange(n) + seq * n) / rate
        samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype("<f4")
        header = {"v": 1, "kind": "audio_chunk", "stream": stream, "seq": seq,
                  "t_capture_ns": cap, "t_publish_ns": time.monotonic_ns(), "clock": "monotonic",
                  "dtype": "float32", "shape": [n], "encoding": "pcm", "sample_rate": rate,
                  "n_samples": n}
        sock.send_multipart([stream.encode(), msgpack.packb(header), samples.tobytes()])
    sock.close()
    ctx.term()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("subscribe")
    s.add_argument("endpoint")
    s.add_argument("--count", type=int, default=5)
    p = sub.add_parser("publish-audio")
    p.add_argument("endpoint")
    p.add_argument("seconds", type=float)
    p.add_argument("--stream", default="mic")
    a = ap.parse_args()
    if a.cmd == "subscribe":
        return subscribe(a.endpoint, a.count)
    return publish_audio(a.endpoint, a.seconds, a.stream)


if __name__ == "__main__":
    sys.exit(main())
