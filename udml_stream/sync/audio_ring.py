"""A contiguous audio ring buffer indexed by the capture time of its samples.

Missing audio is NaN, never zeros: a model cannot tell digital silence from a microphone that
dropped out, so every sample the ring does not hold (a gap in the stream, or a part of a window
older than the ring's first sample) comes back as NaN, and the consumer decides what to do with
the window from its valid fraction (``valid_fraction``).
"""

from __future__ import annotations

import logging

import numpy as np

from udml_stream.messages import AudioChunk

log = logging.getLogger(__name__)


def valid_fraction(x: np.ndarray | None) -> float:
    """Share of the samples of ``x`` that are measurements (not NaN); 0.0 for None or empty."""
    if x is None or x.size == 0:
        return 0.0
    return 1.0 - float(np.count_nonzero(np.isnan(x))) / x.size


class AudioRing:
    """Keeps the last ``capacity_s`` seconds of one mono audio stream on a continuous timeline.

    Chunk stamps jitter (ADC time mapped onto the host clock), so consecutive chunks are laid end
    to end; the timeline is re-anchored to a chunk's stamp when the stamp departs from the
    expected continuation by more than ``tolerance_ns`` (counted in ``reanchors``):

    * forward: samples were lost (or the clock stepped ahead); the jump is a gap, written as NaN
      and counted in ``gap_samples``;
    * backward with a higher ``seq``: the stream went on but its clock stepped back; the samples
      held stay in order and the timeline is moved back so that they end at the new stamp
      (keeping the old timeline would leave every window late by the jump for good);
    * backward with a ``seq`` not above the last one: the source restarted; the ring is cleared
      (counted in ``resets``).

    The tolerance is kept below the pairer's slop: a timeline that lags the stamps by less than
    the tolerance delays a frame by at most that much.
    """

    def __init__(self, sample_rate: int, capacity_s: float = 5.0, tolerance_ns: int = 50_000_000):
        self.sample_rate = sample_rate
        self.capacity = int(capacity_s * sample_rate)
        self.tolerance_ns = tolerance_ns
        self._buf = np.full(self.capacity, np.nan, dtype=np.float32)
        self._filled = 0  # samples on the timeline (gaps included), ending at the write position
        self._write = 0
        self.end_ns: int | None = None  # capture time just after the newest sample
        self.gap_samples = 0
        self.resets = 0
        self.reanchors = 0  # stamp departures beyond the tolerance that moved the timeline
        self.last_seq: int | None = None

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
        self.last_seq = None

    def push(self, chunk: AudioChunk) -> None:
        """Append one chunk (mono, or the first channel of a multi-channel chunk)."""
        if chunk.sample_rate != self.sample_rate:
            raise ValueError(f"chunk rate {chunk.sample_rate} Hz != ring rate {self.sample_rate} Hz")
        x = chunk.samples
        if x.ndim == 2:
            x = x[:, 0]
        x = x.astype(np.float32) / 32768.0 if x.dtype == np.int16 else x.astype(np.float32)
        if not np.isfinite(x).all():
            # A non-finite sample is no measurement: under the NaN-is-missing convention an inf
            # would pass for a valid sample and blow up the front-end, so it becomes missing too.
            x = np.where(np.isfinite(x), x, np.float32(np.nan))
        if self.end_ns is not None:
            delta = chunk.capture_ns - self.end_ns
            if delta < -self.tolerance_ns:
                if self.last_seq is not None and chunk.seq > self.last_seq:
                    self.reanchors += 1
                    log.debug("audio stamp went back %.3f s with seq going on: timeline moved "
                              "back", -delta / 1e9)
                    self.end_ns = chunk.capture_ns
                else:
                    self.resets += 1
                    log.debug("audio stamp went back %.3f s: source restarted, ring cleared",
                              -delta / 1e9)
                    self.clear()
            elif delta > self.tolerance_ns:
                self.reanchors += 1
                gap = int(delta * self.sample_rate // 1_000_000_000)
                self.gap_samples += gap
                self._append(np.full(min(gap, self.capacity), np.nan, np.float32))
                # Onto the stamp itself (not gap / rate): the sub-sample rest must not build up.
                self.end_ns = chunk.capture_ns
        if self.end_ns is None:
            self.end_ns = chunk.capture_ns
        self._append(x)
        self.end_ns += self._ns(x.shape[0])
        self.last_seq = chunk.seq

    @property
    def start_ns(self) -> int | None:
        """Capture time of the oldest sample on the ring's timeline (it may be a gap)."""
        return None if self.end_ns is None else self.end_ns - self._ns(self._filled)

    def window(self, end_ns: int, n: int) -> np.ndarray | None:
        """The ``n`` samples ending at capture time ``end_ns``, NaN wherever the ring holds no
        measurement: gaps, and the parts of the window before the ring's oldest sample or after
        its newest. None when not one sample of the window is held (the ring is empty, or the
        window lies wholly before, after or inside a gap). See ``valid_fraction``."""
        if self.end_ns is None or n <= 0 or self._filled == 0:
            return None
        # Ring sample k (1 = newest) was captured at end_ns_ring - k/rate; the window's newest
        # sample is the last one captured before end_ns, i.e. k = back + 1 (floor division, so
        # back is negative when the window reaches past the newest sample held).
        back = (self.end_ns - end_ns) * self.sample_rate // 1_000_000_000
        k_new = max(1, back + 1)  # newest and oldest ring samples inside the window
        k_old = min(self._filled, back + n)
        if k_new > k_old:
            return None
        out = np.full(n, np.nan, dtype=np.float32)
        ks = np.arange(k_old, k_new - 1, -1)  # oldest first
        out[back + n - k_old : back + n - k_new + 1] = self._buf[(self._write - ks) % self.capacity]
        if np.isnan(out).all():
            return None  # the held part is all gap
        return out
