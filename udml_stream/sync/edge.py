"""The fusion node's admission policy: every decoded message is served or rejected by name.

``decode`` guarantees a well-formed message; ``Edge.admit`` decides whether the node can serve
it and puts what it serves into the one form the pairer and the model take:

* camera frames: ``bgr8`` ``[H, W, 3]`` or ``mono8`` ``[H, W]`` (``rgb8`` is turned to BGR,
  ``mono8`` ``[H, W, 1]`` loses its channel axis); a frame with no pixels is rejected;
* audio chunks: mono float32 at the model's rate (first channel; int16 scaled to [-1, 1];
  other rates resampled without seams by ``StreamResampler``); non-finite samples become NaN
  (missing, like a gap) and float samples beyond full scale are clipped, both counted;
* per stream, a ``seq`` that does not advance while the capture time does not advance either is
  a duplicate or a reordered message and is rejected (a ``seq`` that goes back while time goes
  on is a restarted sender, served and counted);
* topics match exactly: the subscription is a ZeroMQ prefix filter, so ``camera_rear`` arrives
  on a ``camera`` subscription, and is rejected as ``other_topic``. The header's ``stream`` must
  equal the topic.

Rejections are counted in ``rejected`` (reason → count, reasons in ``EDGE_REASONS``); served but
degraded input is counted in ``degraded`` (``DEGRADED_COUNTERS``). Nothing here raises on input.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from udml_stream.messages import AudioChunk, CameraFrame, Message
from udml_stream.sync.resample import MAX_RATIO_TERM, StreamResampler, rate_ratio

log = logging.getLogger(__name__)

#: Why ``Edge.admit`` rejected a message: reason name → meaning (docs/wire-format.md).
EDGE_REASONS: dict[str, str] = {
    "other_topic": "topic is not exactly one of the streams the node serves",
    "wrong_kind": "a served stream's topic carried another kind of message",
    "stream_mismatch": "the header's stream differs from the topic",
    "empty_frame": "camera frame with zero height or width",
    "empty_audio": "audio chunk with no samples or no channels",
    "sample_rate": f"audio rate whose ratio to the model rate has a term above {MAX_RATIO_TERM}",
    "duplicate_seq": "seq equal to the stream's last one, capture time not later",
    "reordered_seq": "seq below the stream's last one, capture time not later (out of order)",
    "frozen_frame": "camera frame identical to the ones before it for longer than freeze_ns "
                    "(a hung driver or frame buffer repeating itself; opt-in)",
}

#: Input served in a degraded or converted form: counter name → meaning.
DEGRADED_COUNTERS: dict[str, str] = {
    "audio_nonfinite_chunks": "audio chunks with NaN/Inf samples (those samples served as missing)",
    "audio_nonfinite_samples": "NaN/Inf audio samples, served as missing",
    "audio_clipped_chunks": "float audio chunks with samples beyond ±1, clipped",
    "audio_resampled_chunks": "audio chunks resampled to the model rate",
    "stream_restarts": "seq went back while the capture time went on (a sender restarted)",
}


class Rejected(Exception):  # noqa: N818 - an outcome, raised and caught inside this module only
    """Raised internally with the reason name; ``admit`` turns it into a count."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class _StreamState:
    seq: int = -1
    capture_ns: int = -1
    resampler: StreamResampler | None = None
    look: bytes = b""  # a sparse sample of the last frame's pixels (freeze detection)
    look_since_ns: int = -1  # capture time of the first frame that looked like this


#: Pixel stride of the freeze detector's sample: 1/256 of a frame, ~3.6 kB of a 640×480 BGR one.
#: A real sensor's noise changes every pixel from frame to frame; a hung one repeats them all.
FREEZE_STRIDE = 16


class Edge:
    """Admission of decoded messages for one fusion node (one robot: its cameras and its audio
    stream)."""

    def __init__(self, camera: str, audio: str, sample_rate: int, freeze_ns: int = 0,
                 others: Sequence[str] = ()) -> None:
        """``others``: the topics of further cameras, admitted as ``camera`` is.
        ``freeze_ns`` > 0: a camera whose frames stay identical for longer than this (by
        capture time) is frozen; its frames are rejected until the picture changes, so the
        camera goes absent at its deadline. Off (0) by default: a synthetic source (a video
        file of still images) repeats frames without being broken."""
        self.camera, self.audio, self.sample_rate = camera, audio, sample_rate
        self.cameras = (camera, *others)
        self.freeze_ns = freeze_ns
        self.rejected: Counter[str] = Counter()
        self.lost: Counter[str] = Counter()  # stream → messages missing between admitted seqs
        self.degraded: Counter[str] = Counter()
        self._state = {t: _StreamState() for t in (*self.cameras, audio)}
        self.last_rejection: Rejected | None = None
        self.accepted = 0  # messages admitted (an audio chunk may still be held by the resampler)

    def admit(self, msg: Message) -> Message | None:
        """``msg`` in the form the node serves, or None when it was rejected (counted under its
        reason in ``rejected``; the reason and detail are in ``last_rejection``)."""
        self.last_rejection = None
        topic = msg.topic or msg.stream  # as encoding does: an unset topic is the stream's name
        try:
            if topic in self.cameras:
                out: Message | None = self._frame(msg, topic)
            elif topic == self.audio:
                out = self._audio(msg, topic)
            else:
                names = " or ".join(repr(t) for t in (*self.cameras, self.audio))
                raise Rejected("other_topic", f"topic {topic!r} is not {names}")
        except Rejected as rej:
            self.rejected[rej.reason] += 1
            self.last_rejection = rej
            return None
        self.accepted += 1
        return out

    def _check(self, msg: Message, topic: str, kind: type[Message]) -> _StreamState:
        if not isinstance(msg, kind):
            raise Rejected("wrong_kind", f"topic {topic!r} carried a {type(msg).__name__}")
        if msg.stream != topic:
            raise Rejected("stream_mismatch", f"stream {msg.stream!r} on topic {topic!r}")
        return self._state[topic]

    def _sequence(self, st: _StreamState, msg: Message) -> bool:
        """Reject duplicates and reordered messages; True when the stream is discontinuous
        (first message, lost messages or a restart)."""
        if st.seq >= 0 and msg.seq <= st.seq:
            if msg.capture_ns <= st.capture_ns:
                name = "duplicate_seq" if msg.seq == st.seq else "reordered_seq"
                raise Rejected(name, f"{msg.stream} seq {msg.seq} after {st.seq}")
            self.degraded["stream_restarts"] += 1
        elif st.seq >= 0 and msg.seq > st.seq + 1:
            # Counted here, after admission, not by the transport: a rejected message with a
            # stale or wild seq must not read as thousands of lost ones.
            self.lost[msg.stream] += msg.seq - st.seq - 1
        jump = st.seq < 0 or msg.seq != st.seq + 1
        st.seq, st.capture_ns = msg.seq, msg.capture_ns
        return jump

    def _frame(self, msg: Message, topic: str) -> CameraFrame:
        st = self._check(msg, topic, CameraFrame)
        assert isinstance(msg, CameraFrame)
        img = msg.image
        if img.shape[0] == 0 or img.shape[1] == 0:
            raise Rejected("empty_frame", f"{topic} frame of shape {list(img.shape)}")
        self._sequence(st, msg)
        if self.freeze_ns > 0:
            self._freeze(st, img, msg)
        if msg.encoding == "mono8" and img.ndim == 3:
            return replace(msg, image=img[:, :, 0])
        if msg.encoding == "rgb8":
            # The model's grey conversion weighs channels as B, G, R.
            return replace(msg, image=np.ascontiguousarray(img[:, :, ::-1]), encoding="bgr8")
        return msg

    def _freeze(self, st: _StreamState, img: np.ndarray, msg: CameraFrame) -> None:
        """Reject the frame when the picture has not changed for longer than ``freeze_ns``."""
        look = np.ascontiguousarray(img[::FREEZE_STRIDE, ::FREEZE_STRIDE]).tobytes()
        if look != st.look or st.look_since_ns < 0 or msg.capture_ns < st.look_since_ns:
            st.look, st.look_since_ns = look, msg.capture_ns
            return
        if msg.capture_ns - st.look_since_ns > self.freeze_ns:
            raise Rejected("frozen_frame", f"{msg.stream} unchanged for "
                           f"{(msg.capture_ns - st.look_since_ns) / 1e6:.0f} ms")

    def _audio(self, msg: Message, topic: str) -> AudioChunk | None:
        st = self._check(msg, topic, AudioChunk)
        assert isinstance(msg, AudioChunk)
        x = msg.samples
        if x.shape[0] == 0 or (x.ndim == 2 and x.shape[1] == 0):
            raise Rejected("empty_audio", f"{topic} chunk of shape {list(x.shape)}")
        if msg.sample_rate != self.sample_rate and rate_ratio(msg.sample_rate,
                                                              self.sample_rate) is None:
            raise Rejected("sample_rate", f"{topic} at {msg.sample_rate} Hz cannot be "
                           f"resampled to {self.sample_rate} Hz")
        jump = self._sequence(st, msg)
        if x.ndim == 2:
            x = x[:, 0]
        x = x.astype(np.float32) / 32768.0 if x.dtype == np.int16 else x.astype(np.float32)
        finite = np.isfinite(x)
        if not finite.all():
            # No measurement: NaN is the ring's and the model's mark of a missing sample.
            bad = int(x.size - np.count_nonzero(finite))
            self.degraded["audio_nonfinite_chunks"] += 1
            self.degraded["audio_nonfinite_samples"] += bad
            x = np.where(finite, x, np.float32(np.nan))
        if float(np.abs(x[finite]).max(initial=0.0)) > 1.0:
            # Beyond full scale is no PCM value; left as is, its power overflows float32 in the
            # log-mel front-end and the result turns NaN.
            self.degraded["audio_clipped_chunks"] += 1
            x = np.clip(x, -1.0, 1.0)
        capture_ns = msg.capture_ns
        if msg.sample_rate != self.sample_rate:
            if st.resampler is None or st.resampler.rate_in != msg.sample_rate:
                st.resampler = StreamResampler(msg.sample_rate, self.sample_rate)
            elif jump:
                st.resampler.reset()
            x, offset_ns = st.resampler.push(x)
            self.degraded["audio_resampled_chunks"] += 1
            capture_ns = max(0, capture_ns + offset_ns)
            if x.shape[0] == 0:
                return None  # all held back until the filter has enough input (not rejected)
        else:
            st.resampler = None
        return replace(msg, samples=x, sample_rate=self.sample_rate, capture_ns=capture_ns)

    def counters(self) -> dict[str, int]:
        """``rejected.<reason>`` and the degraded counters, for heartbeats (only non-zero)."""
        out = {f"rejected.{k}": v for k, v in sorted(self.rejected.items()) if v}
        out.update({k: v for k, v in sorted(self.degraded.items()) if v})
        return out
