"""Camera node: a device, video file or stream URL → camera frames on its PUB socket."""

from __future__ import annotations

from udml_stream.launch.config import CameraNode
from udml_stream.launch.runtime import publish_source, setup_process
from udml_stream.sensors import CameraSource


def run(name: str, spec: CameraNode) -> int:
    """Publish frames until stopped (or until a non-looping file ends)."""
    stop = setup_process(name)
    src = CameraSource(spec.source, spec.stream, spec.fps, spec.loop, spec.start_at_unix,
                       spec.width, spec.height, spec.rotate, spec.flip)
    return publish_source(name, src, spec.endpoint, spec.bind, spec.heartbeat_s, stop, 0.2,
                          lambda: {"grabbed": src.grabbed, "overwritten": src.overwritten})
