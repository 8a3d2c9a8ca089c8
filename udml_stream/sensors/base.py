"""The ``Source`` interface every sensor implements: connect / read / close, as a context manager."""

from __future__ import annotations

import abc

from udml_stream.errors import UdmlError
from udml_stream.messages import Message


class SourceError(UdmlError):
    """A sensor cannot be opened or read; the message lists what is available."""


class Source(abc.ABC):
    """A stream of messages from one sensor."""

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the device, file or stream; raise ``SourceError`` with a clear message if not possible."""

    @abc.abstractmethod
    def read(self, timeout_s: float) -> Message | None:
        """The next message, or None if none came within ``timeout_s`` seconds."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the sensor; safe to call twice."""

    @property
    def finished(self) -> bool:
        """True when a finite source (a file without looping) has nothing more to give."""
        return False

    def __enter__(self) -> Source:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
