"""Streaming audio resampling to the model's rate, chunk by chunk, without seams.

``scipy.signal.resample_poly`` is a polyphase FIR resampler, but it treats every call as a whole
signal: resampling 20 ms chunks one by one would zero-pad both ends of each (an amplitude dip, a
click every chunk) and round every chunk's output length (the timeline drifts). ``StreamResampler``
keeps the input history the filter needs and emits only the output samples whose filter support
is complete, so a stream resampled chunk by chunk gives the same samples as resampling it in one
piece (bar the very first ones), and the output timeline never drifts. The price is a delay of
about ten input samples times the rate ratio (0.6 ms at 44.1 kHz).
"""

from __future__ import annotations

from math import gcd

import numpy as np
from scipy import signal

#: Largest numerator or denominator of the reduced rate ratio served. Standard rates reduce to
#: small terms (44100 → 16000 Hz is 160/441, 11025 Hz is 640/441); a ratio such as 16001/16000
#: would need a filter of 320,000 taps per stream, so such rates are rejected instead.
MAX_RATIO_TERM = 1024


def rate_ratio(rate_in: int, rate_out: int) -> tuple[int, int] | None:
    """``(up, down)``, the reduced ratio ``rate_out / rate_in``; None when a term exceeds
    ``MAX_RATIO_TERM`` (or a rate is not positive)."""
    if rate_in <= 0 or rate_out <= 0:
        return None
    g = gcd(rate_in, rate_out)
    up, down = rate_out // g, rate_in // g
    return None if max(up, down) > MAX_RATIO_TERM else (up, down)


class StreamResampler:
    """Resamples one contiguous stream from ``rate_in`` to ``rate_out`` Hz, chunk by chunk.

    ``push`` returns the output samples that became complete and the offset, in nanoseconds,
    of the first of them from the first sample of the chunk just pushed (it is negative when
    samples held back from the previous chunk come out first). Call ``reset`` when the stream
    is discontinuous (lost chunks, a restart): the history no longer belongs to the new samples.
    """

    def __init__(self, rate_in: int, rate_out: int) -> None:
        ratio = rate_ratio(rate_in, rate_out)
        if ratio is None:
            raise ValueError(f"cannot resample {rate_in} Hz to {rate_out} Hz: the reduced ratio "
                             f"has a term above {MAX_RATIO_TERM}")
        self.rate_in, self.rate_out = rate_in, rate_out
        self.up, self.down = ratio
        # resample_poly's own default filter (Kaiser, beta 5, 10 zero crossings per side), built
        # once here instead of on every call.
        half_len = 10 * max(self.up, self.down)
        self._h = signal.firwin(2 * half_len + 1, 1.0 / max(self.up, self.down),
                                window=("kaiser", 5.0))
        self._half_in = -(-half_len // self.up) + 1  # filter half-support in input samples
        self.reset()

    def reset(self) -> None:
        """Forget the history: the next chunk starts a new stream."""
        self._hist = np.zeros(0, np.float32)
        self._hist_start = 0  # input index of _hist[0], always a multiple of ``down``
        self._n_in = 0  # input samples taken since the reset
        self._n_out = 0  # output samples emitted since the reset

    def push(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        """Take the mono float32 chunk ``x``; returns ``(samples, offset_ns)`` (see the class)."""
        first_in = self._n_in
        buf = np.concatenate([self._hist, np.asarray(x, np.float32)])
        self._n_in += x.shape[0]
        # Output k sits at input position k·down/up; it is complete once the input reaches
        # that position plus the filter's half-support.
        last_in = self._n_in - 1 - self._half_in
        k_end = (last_in * self.up) // self.down + 1 if last_in >= 0 else 0
        out = np.zeros(0, np.float32)
        k0 = self._n_out
        if k_end > k0:
            y = signal.resample_poly(buf.astype(np.float64), self.up, self.down, window=self._h)
            base = self._hist_start * self.up // self.down  # global index of y[0]
            out = y[k0 - base : k_end - base].astype(np.float32)
            self._n_out = k0 + out.shape[0]
        # Keep the input the next outputs need, from a multiple of ``down`` so that output
        # positions of the next call stay on the same grid.
        need = self._n_out * self.down // self.up - self._half_in - 1
        start = max(self._hist_start, (max(need, 0) // self.down) * self.down)
        self._hist = buf[start - self._hist_start :]
        self._hist_start = start
        offset_ns = (k0 * self.down - first_in * self.up) * 1_000_000_000 // (self.up * self.rate_in)
        return out, offset_ns
