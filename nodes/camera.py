"""Camera node: a device, video file or stream URL → camera frames on its PUB socket."""

from __future__ import annotations

import logging

from udml_stream.launch.config import CameraNode
from udml_stream.launch.runtime import EXIT_SOURCE_UNAVAILABLE, Beater, setup_process
from udml_stream.sensors import CameraSource, SourceError
from udml_stream.transport import Publisher

log = logging.getLogger(__name__)


def run(name: str, spec: CameraNode) -> int:
    """Publish frames until stopped (or until a non-looping file ends)."""
    stop = setup_process(name)
    src = CameraSource(spec.source, spec.stream, spec.fps, spec.loop, spec.start_at_unix,
                       spec.width, spec.height)
    try:
        src.connect()
    except SourceError as err:
        log.error("%s", err)
        return EXIT_SOURCE_UNAVAILABLE
    with Publisher(spec.endpoint, bind=spec.bind) as pub:
        beat = Beater(pub, name, spec.heartbeat_s)
        log.info("publishing %s from %r on %s", spec.stream, spec.source, pub.endpoint)
        try:
            while not stop.is_set() and not src.finished:
                frame = src.read(0.2)
                if frame is not None:
                    pub.publish(frame)
                beat.tick({"sent": pub.sent, "grabbed": src.grabbed,
                           "overwritten": src.overwritten})
        finally:
            beat.tick({"sent": pub.sent}, state="stopping", force=True)
            src.close()
    log.info("stopped after %d frames", pub.sent)
    return 0
