"""Program: build (and cache) the AV-Digits arrays for one or both tracks."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from udml_stream.data import avdigits
from udml_stream.data.sessions import write_sessions

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


def sessions(preset: str, seed: int, cache_dir: Path, out_dir: Path,
             splits: tuple[str, ...]) -> list[Path]:
    """Write ``splits`` of ``preset`` as recorded MCAP sessions into ``out_dir``."""
    t0 = time.perf_counter()
    data = avdigits.load(preset, cache_dir, seed=seed)
    paths = write_sessions(data, out_dir, splits)
    log.info("sessions of %s written in %.1f s", preset, time.perf_counter() - t0)
    return paths
