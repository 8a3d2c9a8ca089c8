"""Microphone node: a PortAudio device (PulseAudio included) or a WAV file → audio chunks."""

from __future__ import annotations

import logging

from udml_stream.launch.config import MicrophoneNode
from udml_stream.launch.runtime import EXIT_SOURCE_UNAVAILABLE, Beater, setup_process
from udml_stream.sensors import FileAudioSource, MicrophoneSource, Source, SourceError
from udml_stream.transport import Publisher

log = logging.getLogger(__name__)


def run(name: str, spec: MicrophoneNode) -> int:
    """Publish chunks until stopped (or until a non-looping file ends)."""
    stop = setup_process(name)
    chunk = max(1, round(spec.sample_rate * spec.chunk_ms / 1000))
    src: Source
    if spec.source == "file":
        if spec.file is None:
            log.error("microphone source = 'file' needs `file`")
            return EXIT_SOURCE_UNAVAILABLE
        src = FileAudioSource(spec.file, spec.stream, chunk, spec.loop, spec.start_at_unix)
    else:
        src = MicrophoneSource(spec.device, spec.stream, spec.sample_rate, chunk)
    try:
        src.connect()
    except SourceError as err:
        log.error("%s", err)
        return EXIT_SOURCE_UNAVAILABLE
    with Publisher(spec.endpoint, bind=spec.bind) as pub:
        beat = Beater(pub, name, spec.heartbeat_s)
        log.info("publishing %s (%s) on %s", spec.stream, spec.source, pub.endpoint)
        try:
            while not stop.is_set() and not src.finished:
                msg = src.read(0.1)
                if msg is not None:
                    pub.publish(msg)
                beat.tick({"sent": pub.sent, "overflows": getattr(src, "overflows", 0),
                           "dropped": getattr(src, "dropped", 0)})
        finally:
            beat.tick({"sent": pub.sent}, state="stopping", force=True)
            src.close()
    log.info("stopped after %d chunks", pub.sent)
    return 0
