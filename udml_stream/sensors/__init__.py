"""Sensor sources behind one interface (imports no torch)."""

from udml_stream.sensors.base import Source, SourceError
from udml_stream.sensors.camera import CameraSource
from udml_stream.sensors.microphone import FileAudioSource, MicrophoneSource

__all__ = ["CameraSource", "FileAudioSource", "MicrophoneSource", "Source", "SourceError"]
