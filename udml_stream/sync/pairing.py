"""Pairing policy: for each camera frame, the audio window that ends at its capture time, and
the newest frame of every other camera.

The *trigger* camera (the first camera stream) decides when a sample is made; the audio window
(the continuous stream) is cut at its frame's instant. Every other camera (``others``: a second
camera on the same robot) is sampled, not waited for: a sample carries the newest frame of each
whose capture time lies within ``other_max_age_ns`` of the trigger frame's (before or after),
and goes without it (that camera absent for the sample) otherwise.

A frame waits for its audio at most ``slop_ns`` beyond its capture time (audio arrives in
chunks, so the newest chunk may not cover the frame's instant yet). A stream silent for longer
than its ``deadline_ns`` is treated as absent: the sample goes out without it, flagged. When the
camera itself is stale, the pairer emits audio-only samples at ``fallback_hz`` so that the
prediction continues from the healthy stream.

Missing audio is NaN (see ``audio_ring``): a frame whose window the ring holds only in part
(a gap in the stream, or less audio received than a window since the stream started) goes out
with the NaN-bearing window and its valid fraction, and the model decides whether the stream is
usable. Only a dead audio stream (or a window with nothing held) sends the frame without audio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from udml_stream.messages import AudioChunk, CameraFrame, Message
from udml_stream.sync.audio_ring import AudioRing


@dataclass(frozen=True)
class PairingConfig:
    """Timing policy of the pairer (all durations in nanoseconds)."""

    sample_rate: int = 16000
    window_samples: int = 16000
    slop_ns: int = 60_000_000  # how long a frame may wait for audio covering its instant
    # A frame whose instant the audio reaches to within this is fused at once, its window
    # ending where the audio ends: waiting for the last chunk (up to a chunk period, 20 ms for
    # the microphone node) buys a 1 s window nothing but latency. 0 = wait for full coverage.
    audio_lag_ns: int = 0
    camera_deadline_ns: int = 500_000_000  # no frame for this long → camera absent
    audio_deadline_ns: int = 300_000_000  # no audio for this long → audio absent
    fallback_hz: float = 10.0  # audio-only results while the camera is absent
    # An audio-only sample is sent only when at least this share of its window is held: below
    # the model's own absence threshold (udml_stream.model.preprocess.MISSING_ABSENT_FRACTION,
    # kept equal by hand: sync imports no torch) it would carry no usable stream at all.
    fallback_min_valid: float = 0.5
    # Another camera's newest frame joins a sample when its capture time is within this of the
    # sample's instant: about three frame periods at 30 fps, so a camera running a frame or two
    # out of phase still counts, and a stalled one drops out long before its deadline.
    other_max_age_ns: int = 100_000_000


@dataclass
class SyncedSample:
    """One fusion input: a frame and/or an audio window, with their provenance."""

    frame: CameraFrame | None
    audio: np.ndarray | None
    t_ns: int  # the capture instant the sample describes
    source_seq: dict[str, int] = field(default_factory=dict)
    wait_ns: int = 0  # how long the frame waited for its audio (sync wait)
    rx_ns: int = 0  # when the frame was received (monotonic)
    audio_valid: float = 0.0  # share of ``audio`` that is measured (not NaN); 0.0 without audio
    others: dict[str, CameraFrame] = field(default_factory=dict)  # other cameras: stream → frame


class Pairer:
    """Consumes camera frames and audio chunks; yields synced samples when they are ready."""

    def __init__(self, cfg: PairingConfig, camera: str = "camera", audio: str = "mic",
                 others: Sequence[str] = ()) -> None:
        """``camera``: the trigger camera's stream; ``audio``: the audio stream; ``others``:
        the streams of further cameras, sampled at each trigger frame."""
        if camera in others or audio in others or len(set(others)) != len(others):
            raise ValueError(f"streams must be distinct: camera {camera!r}, audio {audio!r}, "
                             f"others {list(others)}")
        self.cfg = cfg
        self.camera_stream, self.audio_stream = camera, audio
        self.other_streams = tuple(others)
        self.latest: dict[str, CameraFrame] = {}  # other camera → its newest frame
        self.latest_rx_ns: dict[str, int] = {}  # other camera → when that frame arrived
        self.others_stale = 0  # samples sent without another camera (none, or too old a frame)
        self.ring = AudioRing(cfg.sample_rate, capacity_s=max(5.0, 3 * cfg.window_samples
                                                               / cfg.sample_rate))
        self.pending: CameraFrame | None = None
        self.pending_since_ns = 0  # when the current wait started (the first frame waiting)
        self.pending_rx_ns = 0  # when the frame now waiting arrived
        self.frames_superseded = 0  # frames replaced by a newer one before they were fused
        self.last_frame_rx_ns: int | None = None
        self.last_audio_rx_ns: int | None = None
        self.last_audio_seq = -1
        self._last_fallback_ns = 0
        self.partial_windows = 0  # samples sent with a window the ring held only in part
        self.missing_samples = 0  # NaN samples in the windows sent, in total
        # Frames sent without audio although the audio stream was alive: the ring held nothing
        # of their window (the two streams' capture clocks disagree, or the audio restarted).
        self.windows_missed = 0

    def add(self, msg: Message, now_ns: int) -> None:
        """Take one received message (other streams and kinds are ignored)."""
        if isinstance(msg, CameraFrame) and msg.stream == self.camera_stream:
            if self.pending is not None:
                self.frames_superseded += 1
            else:
                # The wait starts with the first frame waiting, not the newest: restarting it on
                # every newer frame stalled the node for good whenever the audio ran behind the
                # camera by more than a frame interval (a late first PulseAudio block does that).
                self.pending_since_ns = now_ns
            self.pending, self.pending_rx_ns = msg, now_ns
            self.last_frame_rx_ns = now_ns
        elif isinstance(msg, AudioChunk) and msg.stream == self.audio_stream:
            self.ring.push(msg)
            self.last_audio_rx_ns = now_ns
            self.last_audio_seq = msg.seq
        elif isinstance(msg, CameraFrame) and msg.stream in self.other_streams:
            self.latest[msg.stream] = msg
            self.latest_rx_ns[msg.stream] = now_ns

    def other_alive(self, stream: str, now_ns: int) -> bool:
        """Whether another camera's frame arrived within the camera deadline."""
        rx = self.latest_rx_ns.get(stream)
        return rx is not None and now_ns - rx <= self.cfg.camera_deadline_ns

    def _others(self, t_ns: int, now_ns: int, seq: dict[str, int]) -> dict[str, CameraFrame]:
        """The other cameras' frames for a sample at instant ``t_ns`` (adds their seqs)."""
        out: dict[str, CameraFrame] = {}
        for s in self.other_streams:
            f = self.latest.get(s)
            if (f is not None and abs(f.capture_ns - t_ns) <= self.cfg.other_max_age_ns
                    and self.other_alive(s, now_ns)):
                out[s] = f
                seq[s] = f.seq
            else:
                self.others_stale += 1
        return out

    def camera_alive(self, now_ns: int) -> bool:
        """Whether a frame arrived within the camera deadline."""
        return (self.last_frame_rx_ns is not None
                and now_ns - self.last_frame_rx_ns <= self.cfg.camera_deadline_ns)

    def audio_alive(self, now_ns: int) -> bool:
        """Whether audio arrived within the audio deadline."""
        return (self.last_audio_rx_ns is not None
                and now_ns - self.last_audio_rx_ns <= self.cfg.audio_deadline_ns)

    def _window(self, end_ns: int) -> tuple[np.ndarray | None, int]:
        """The audio window ending at ``end_ns`` and how many of its samples are missing."""
        audio = self.ring.window(end_ns, self.cfg.window_samples)
        return audio, 0 if audio is None else int(np.count_nonzero(np.isnan(audio)))

    def _sent(self, audio: np.ndarray | None, missing: int) -> float:
        """Account for a window that goes out in a sample; returns its valid fraction."""
        if audio is None:
            return 0.0
        if missing:
            self.partial_windows += 1
            self.missing_samples += missing
        return 1.0 - missing / audio.shape[0]

    def ready(self, now_ns: int) -> SyncedSample | None:
        """The next sample to fuse, if one is due now."""
        cfg = self.cfg
        f = self.pending
        if f is not None:
            covered = (self.ring.end_ns is not None
                       and self.ring.end_ns >= f.capture_ns - cfg.audio_lag_ns)
            waited = now_ns - self.pending_since_ns
            if covered or waited >= cfg.slop_ns or not self.audio_alive(now_ns):
                self.pending = None
                audio, missing = None, 0
                if self.audio_alive(now_ns):
                    # After the slop the window ends where the audio stops, not in the future.
                    end = min(f.capture_ns, self.ring.end_ns or f.capture_ns)
                    audio, missing = self._window(end)
                    if audio is None:
                        self.windows_missed += 1
                valid = self._sent(audio, missing)
                seq = {self.camera_stream: f.seq}
                if audio is not None:
                    seq[self.audio_stream] = self.last_audio_seq
                others = self._others(f.capture_ns, now_ns, seq)
                # The sync wait reported is the emitted frame's own; the slop deadline above
                # runs from the first frame of the wait.
                return SyncedSample(f, audio, f.capture_ns, seq, now_ns - self.pending_rx_ns,
                                    self.pending_rx_ns, valid, others)
            return None
        if self.camera_alive(now_ns) or now_ns - self._last_fallback_ns < 1e9 / cfg.fallback_hz:
            return None
        # The trigger camera is absent: results go on at fallback_hz from the healthy streams.
        audio, missing = None, 0
        tried = self.audio_alive(now_ns) and self.ring.end_ns is not None
        if tried:
            audio, missing = self._window(self.ring.end_ns)
            if audio is not None and 1.0 - missing / audio.shape[0] < cfg.fallback_min_valid:
                audio = None
        # Without audio the sample's instant is the newest live other camera's frame.
        t = (self.ring.end_ns if audio is not None else
             max((self.latest[s].capture_ns for s in self.other_streams
                  if s in self.latest and self.other_alive(s, now_ns)), default=None))
        if tried or t is not None:
            self._last_fallback_ns = now_ns  # one attempt per fallback period, sent or not
        if t is None:
            return None
        seq = {self.audio_stream: self.last_audio_seq} if audio is not None else {}
        others = self._others(t, now_ns, seq)
        if audio is None and not others:
            return None
        valid = self._sent(audio, missing)
        return SyncedSample(None, audio, t, seq, audio_valid=valid, others=others)
