"""A contiguous audio ring buffer indexed by the capture time of its samples."""

from __future__ import annotations

import numpy as np

from udml_stream.messages import AudioChunk


class AudioRing:
    """Keeps the last ``capacity_s`` seconds of one mono audio stream on a continuous timeline.

    Chunk stamps jitter (ADC time mapped onto the host clock), so consecutive chunks are laid end
    to end; the timeline is re-anchored only when a chunk's stamp departs from the expected
    continuation by more than ``tolerance_ns`` (a forward jump is a gap, filled with zeros and
    counted; a backward jump means the source restarted, and the ring is cleared).
    """

    def __init__(self, sample_rate: int, capacity_s: float = 5.0, tolerance_ns: int = 150_000_000):
        self.sample_rate = sample_rate
        self.capacity = int(capacity_s * sample_rate)
        self.tolerance_ns = tolerance_ns
        self._buf = np.zeros(self.capacity, dtype=np.float32)
        self._filled = 0  # valid samples, ending at the write position
        self._write = 0
        self.end_ns: int | None = None  # capture time just after the newest sample
        self.gap_samples = 0
        self.resets = 0

    def _ns(self, n: int) -> int:
        return n * 1_000_000_000 // self.sample_rate

    def _append(self, x: np.ndarray) -> None:
        x = x[-self.capacity :]
        n = x.shape[0]
        first = min(n, self.capacity - self._write)
        self._buf[self._write : self._write + first] = x[:first]
        self._buf[: n - first] = x[first:]
        self._write = (self._write + n) % self.capacity
        self._filled = min(self.capacity, self._filled + n)

    def clear(self) -> None:
        """Forget every sample (the source restarted)."""
        self._filled, self._write, self.end_ns = 0, 0, None

    def push(self, chunk: AudioChunk) -> None:
        """Append one chunk (mono, or the first channel of a multi-channel chunk)."""
        if chunk.sample_rate != self.sample_rate:
            raise ValueError(f"chunk rate {chunk.sample_rate} Hz != ring rate {self.sample_rate} Hz")
        x = chunk.samples
        if x.ndim == 2:
            x = x[:, 0]
        x = x.astype(np.float32) / 32768.0 if x.dtype == np.int16 else x.astype(np.float32)
        if self.end_ns is not None:
            delta = chunk.capture_ns - self.end_ns
            if delta < -self.tolerance_ns:
                self.resets += 1
                self.clear()
            elif delta > self.tolerance_ns:
                gap = int(delta * self.sample_rate // 1_000_000_000)
                self.gap_samples += gap
                self._append(np.zeros(min(gap, self.capacity), np.float32))
                self.end_ns += self._ns(gap)
        if self.end_ns is None:
            self.end_ns = chunk.capture_ns
        self._append(x)
        self.end_ns += self._ns(x.shape[0])

    @property
    def start_ns(self) -> int | None:
        """Capture time of the oldest sample held."""
        return None if self.end_ns is None else self.end_ns - self._ns(self._filled)

    def window(self, end_ns: int, n: int) -> np.ndarray | None:
        """The ``n`` samples ending at capture time ``end_ns``, or None if the ring does not
        cover that span (yet, or any more). Callers wait for ``self.end_ns >= end_ns``."""
        if self.end_ns is None or end_ns > self.end_ns or n > self._filled:
            return None
        back = int((self.end_ns - end_ns) * self.sample_rate // 1_000_000_000)
        if back + n > self._filled:
            return None
        stop = (self._write - back) % self.capacity
        idx = (np.arange(stop - n, stop)) % self.capacity
        return self._buf[idx].copy()
