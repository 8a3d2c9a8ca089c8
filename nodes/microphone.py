"""Microphone node: a PortAudio device (PulseAudio included) or a WAV file → audio chunks."""

from __future__ import annotations

import logging

from udml_stream.launch.config import MicrophoneNode
from udml_stream.launch.runtime import EXIT_SOURCE_UNAVAILABLE, publish_source, setup_process
from udml_stream.sensors import FileAudioSource, MicrophoneSource, Source

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
    return publish_source(name, src, spec.endpoint, spec.bind, spec.heartbeat_s, stop, 0.1,
                          lambda: {"overflows": getattr(src, "overflows", 0),
                                   "dropped": getattr(src, "dropped", 0)})
