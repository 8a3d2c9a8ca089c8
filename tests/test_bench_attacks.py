"""The pure parts of ``udml bench attacks``: the raw ZMTP bytes it sends and its Markdown table.
The benchmark itself is run by hand (docs/results/attacks.md)."""

from __future__ import annotations

import struct
from typing import Any

from udml_stream.benchmarks import attacks


def test_zmtp_greeting_frame_header_and_ready() -> None:
    g = attacks.zmtp_greeting("CURVE", as_server=True)
    assert len(g) == 64 and g[:10] == b"\xff" + b"\x00" * 8 + b"\x7f" and g[10:12] == b"\x03\x00"
    assert g[12:32] == b"CURVE" + b"\x00" * 15 and g[32] == 1 and g[33:] == b"\x00" * 31
    assert attacks.zmtp_greeting("NULL")[32] == 0
    # long frame: LONG flag and an 8-byte big-endian size; short frame: one size byte
    assert attacks.zmtp_frame_header(attacks.GIB) == b"\x02" + struct.pack(">Q", 1 << 30)
    assert attacks.zmtp_frame_header(attacks.GIB, command=True)[0] == 0x06
    assert attacks.zmtp_frame_header(5, more=True) == b"\x01\x05"
    assert attacks.zmtp_frame_header(255) == b"\x00\xff"
    assert attacks.zmtp_frame_header(256) == b"\x02" + struct.pack(">Q", 256)
    ready = attacks.zmtp_ready("SUB")
    body = b"\x05READY\x0bSocket-Type\x00\x00\x00\x03SUB"
    assert ready == bytes([0x04, len(body)]) + body
    plain = attacks.held_frame_prelude(curve=False, as_server=True, socket_type="PUB")
    assert plain[32] == 0  # NULL never claims the server role
    assert plain.endswith(b"\x02" + struct.pack(">Q", 1 << 30)) and b"READY" in plain
    curve = attacks.held_frame_prelude(curve=True, as_server=True, socket_type="PUB")
    assert b"READY" not in curve and curve[12:17] == b"CURVE" and len(curve) == 64 + 9
    t = attacks.subscription_topic(7, 248)
    assert len(t) == 248 and t.startswith(b"00000007")
    assert attacks.subscription_topic(7, 248) != attacks.subscription_topic(8, 248)


def _mode(growth: float) -> dict[str, Any]:
    rss = {"start": 76.0, "end": 76.0 + growth, "peak": 77.0 + growth}
    return {
        "startup_s": 9.0,
        "attacks": [
            {"attack": "held 1 GiB frame at the PUB", "target": "camera", "rss_mb": rss,
             "rss_growth_mb": growth, "node_alive": True, "messages_after": 30,
             "node_closed_connection": True, "closed_after_s": 0.0, "body_bytes_sent": 0},
            {"attack": "200,000 subscriptions over 1 connection(s)", "target": "camera",
             "rss_mb": rss, "rss_growth_mb": growth, "node_alive": True, "messages_after": 31,
             "handshakes": {"HANDSHAKE_FAILED_AUTH": 1}},
        ],
        "totals": {"camera": {"start": 76.0, "end": 76.0 + growth, "peak": 77.0 + growth,
                              "growth_mb": growth, "peak_growth_mb": growth + 1, "alive": True}},
        "exit_codes_on_sigterm": {"camera": 0}, "tracebacks": {"camera": 0},
    }


def test_markdown_table_and_goal_line() -> None:
    setup = {"subscriptions": 200_000, "load_avg_1_5_15_at_start": [1.0, 1.0, 1.0],
             "load_avg_1_5_15_at_end": [1.5, 1.0, 1.0], "cpus": 2, "nice": 5, "wall_s": 90.0}
    res = {"plain": _mode(12.0), "curve": _mode(0.5),
           "goals": {"curve_rss_growth_mb_max": 50.0}, "setup": setup}
    md = attacks.to_markdown(res, "udml bench attacks")
    assert md.startswith("Command: `udml bench attacks`")
    assert ("| curve | held 1 GiB frame at the PUB | camera | 76.0 → 76.5 (77.5) | +0.5 | – | "
            "yes, after 0.00 s | alive, 30 |") in md
    assert "HANDSHAKE_FAILED_AUTH 1" in md and "yes, after 0.00 s" in md
    assert "worst growth (end or peak, either node) +1.5 MB: met" in md
    assert "load average (1/5/15 min) [1.0, 1.0, 1.0]" in md
    assert attacks.goal_met(res) is True
    res["curve"] = _mode(60.0)
    assert attacks.goal_met(res) is False and "NOT met" in attacks.to_markdown(res, "x")
    del res["curve"]
    assert attacks.goal_met(res) is None and "not measured" in attacks.to_markdown(res, "x")
