"""Program: ``udml replay`` (stops cleanly on SIGINT/SIGTERM)."""

from __future__ import annotations

import signal

import numpy as np

from udml_stream.logs.replay import ReplayConfig, Replayer, ReplayStats


def main(cfg: ReplayConfig) -> ReplayStats:
    """Replay as configured; returns what was published (and collected, in lossless mode)."""
    rep = Replayer(cfg)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: rep.stop())
    try:
        return rep.run()
    finally:
        rep.close()


def summary(stats: ReplayStats) -> str:
    """One paragraph about a finished replay."""
    lines = [f"published {sum(stats.published.values())} messages: {stats.published}"]
    if stats.unheard:
        lines.append(f"not published (no subscriber for the topic): "
                     f"{sum(stats.unheard.values())} {stats.unheard}")
    if stats.not_sent:
        lines.append(f"not published (a subscriber stayed full past the send timeout): "
                     f"{sum(stats.not_sent.values())} {stats.not_sent}")
    if stats.timing_error_ns:
        e = np.asarray(stats.timing_error_ns) / 1e6
        lines.append(f"timing error (actual − scheduled): p50 {np.percentile(e, 50):.3f} ms, "
                     f"p99 {np.percentile(e, 99):.3f} ms")
    if stats.results:
        lines.append(f"collected {len(stats.results)} fusion results; "
                     f"{stats.frames_without_result} frames without a result")
    return "\n".join(lines)
