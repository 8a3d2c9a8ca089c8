"""Program: ``udml record`` (finishes the file cleanly on SIGINT/SIGTERM)."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

from udml_stream.logs import Recorder, RecorderConfig

log = logging.getLogger(__name__)


def main(cfg: RecorderConfig, duration_s: float) -> list[Path]:
    """Record until a signal or ``duration_s``."""
    rec = Recorder(cfg)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: rec.stop())
    files = rec.run(duration_s)
    for topic, st in sorted(rec.stats.items()):
        log.info("%s: %d messages, %d bytes, %d gaps, %d dropped", topic, st.messages, st.bytes,
                 st.gaps, st.dropped_queue)
    return files
