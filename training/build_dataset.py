"""Program: build (and cache) the AV-Digits arrays for one or both tracks."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from udml_stream.data import avdigits

log = logging.getLogger(__name__)


def main(tracks: list[str], seed: int, cache_dir: Path, force: bool) -> list[Path]:
    """Build each track in ``tracks``; returns the cache files."""
    paths = []
    for track in tracks:
        t0 = time.perf_counter()
        path = avdigits.build(avdigits.BuildSpec(track=track, seed=seed), cache_dir, force=force)
        log.info("track %s ready in %.1f s: %s", track, time.perf_counter() - t0, path)
        paths.append(path)
    return paths
