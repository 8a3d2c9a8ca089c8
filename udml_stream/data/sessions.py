"""AV-Digits splits written as recorded sensor sessions (MCAP), as a robot would have logged them.

One session per split. Sample ``i`` is a segment of ``window + gap`` seconds starting at
``t_i``: the camera (``mono8`` frames at ``fps``) shows the sample's image for the whole segment,
the microphone (``int16`` chunks) carries the sample's one-second waveform from ``t_i`` and the
preset's background noise in the gap, and the ``label`` / ``condition`` topics announce the
digit and ``clean`` at ``t_i`` (the same topics ``udml demo --record`` writes). The camera
frame captured at ``t_i + window`` is therefore paired, by the fusion node's own sync, with
exactly the sample's waveform; it is the one frame per segment whose whole audio window lies in
its segment, so a ``LogDataset`` over a session yields the split's samples one for one.

Stamps: capture times on a ``monotonic`` timeline from ``start_ns``; a message's log time is
when a live recorder would have received it (a frame 2 ms after capture, an audio chunk 2 ms
after its last sample).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from udml_stream.data.avdigits import AVDigits, Split
from udml_stream.errors import ConfigError
from udml_stream.logs.writer import LogWriter
from udml_stream.messages import AudioChunk, CameraFrame, Label, Message, encode

log = logging.getLogger(__name__)

_NS = 1_000_000_000
_TRANSPORT_NS = 2_000_000  # nominal capture → recorder delay


@dataclass(frozen=True)
class SessionSpec:
    """Rates and topics of an emitted session."""

    fps: int = 10
    # 50 ms at 16 kHz. A frame waits for the chunk covering its instant for at most the fusion
    # node's slop (60 ms by default), so a chunk plus its 2 ms transport must stay below it:
    # with 64 ms chunks about one frame in sixteen went out with a window cut short, live and
    # (once the log data set paced its pairer as the live node does) in training too.
    chunk_samples: int = 800
    gap_s: float = 0.1  # after each utterance window, before the next sample's segment
    camera_topic: str = "camera"
    audio_topic: str = "mic"
    label_topic: str = "label"
    condition_topic: str = "condition"
    compression: str = "zstd"
    chunk_bytes: int = 1024 * 1024  # ~30 samples per chunk: seeks and damage stay local
    start_ns: int = 10 * _NS
    seed: int = 0


def _frames_per(seconds: float, fps: int, what: str) -> int:
    n = seconds * fps
    if abs(n - round(n)) > 1e-9 or round(n) < 1:
        raise ConfigError(f"sessions: {what} = {seconds} s must be a whole number (≥ 1) of "
                          f"frame periods at fps = {fps}")
    return round(n)


def write_session(split: Split, path: Path, sample_rate: int, class_names: tuple[str, ...],
                  spec: SessionSpec | None = None) -> dict[str, int]:
    """Write ``split`` as one session into ``path``; returns message counts per topic and the
    number of audio samples clipped at full scale."""
    spec = spec or SessionSpec()
    if set(split.tables) != {"image", "audio"}:
        raise ConfigError(f"sessions need a raw-track split (image + audio waveforms); "
                          f"{split.name} has {sorted(split.tables)}")
    window = split.tables["audio"].shape[1]
    gap = round(spec.gap_s * sample_rate)
    if spec.gap_s <= 0 or abs(gap - spec.gap_s * sample_rate) > 1e-6:
        raise ConfigError(f"sessions: gap_s = {spec.gap_s} must be > 0 and a whole number of "
                          f"samples at {sample_rate} Hz (a frame must see only its own sample)")
    seg_frames = _frames_per(window / sample_rate + spec.gap_s, spec.fps, "window + gap_s")
    _frames_per(window / sample_rate, spec.fps, "the audio window")
    seg_ns = seg_frames * _NS // spec.fps
    frame_ns = _NS // spec.fps
    rng = np.random.default_rng(spec.seed)
    out = LogWriter(path, spec.compression, spec.chunk_bytes)
    counts = {t: 0 for t in (spec.camera_topic, spec.audio_topic, spec.label_topic,
                             spec.condition_topic)}
    counts["audio_clipped_samples"] = 0  # beyond full scale: int16 PCM clips, as an ADC would

    def put(msg: Message, log_ns: int) -> None:
        frames = encode(msg)
        out.write(msg.topic or msg.stream, frames[1:], msg.seq, msg.capture_ns, log_ns,
                  msg.kind, msg.stream, msg.clock)
        counts[msg.topic or msg.stream] += 1

    pending = np.zeros(0, np.float32)  # audio not yet chunked
    pending_t0 = spec.start_ns  # capture time of pending[0]
    chunk_seq = 0
    try:
        for i in range(len(split)):
            t_i = spec.start_ns + i * seg_ns
            sample = split.batch(np.array([i]))
            y = int(split.labels[i])
            put(Label(spec.label_topic, i, t_i, t_i, label=y, name=class_names[y]), t_i)
            put(Label(spec.condition_topic, i, t_i, t_i, label=0, name="clean"), t_i)
            img = np.clip(np.rint(sample["image"][0]), 0, 255).astype(np.uint8)
            wave = sample["audio"][0]
            # The gap carries the background the window's 50 ms edges hold (the preset's floor).
            floor = float(np.sqrt(np.mean(np.square(wave[:800], dtype=np.float64))))
            fill = (max(floor, 1e-4) * rng.standard_normal(gap, dtype=np.float32))
            pending = np.concatenate([pending, wave, fill])
            events: list[tuple[int, Message]] = []
            for k in range(seg_frames):
                t = t_i + k * frame_ns
                events.append((t + _TRANSPORT_NS, CameraFrame(
                    spec.camera_topic, i * seg_frames + k, t, t, image=img, encoding="mono8")))
            while len(pending) >= spec.chunk_samples:
                block, pending = pending[: spec.chunk_samples], pending[spec.chunk_samples :]
                scaled = np.rint(block * 32768.0)  # the inverse of the ring's /32768
                counts["audio_clipped_samples"] += int(np.count_nonzero(
                    (scaled > 32767) | (scaled < -32768)))
                pcm = np.clip(scaled, -32768, 32767).astype(np.int16)
                end = pending_t0 + spec.chunk_samples * _NS // sample_rate
                events.append((end + _TRANSPORT_NS, AudioChunk(
                    spec.audio_topic, chunk_seq, pending_t0, pending_t0, samples=pcm,
                    sample_rate=sample_rate)))
                chunk_seq += 1
                pending_t0 = spec.start_ns + chunk_seq * spec.chunk_samples * _NS // sample_rate
            for log_ns, msg in sorted(events, key=lambda e: e[0]):
                put(msg, log_ns)
    finally:
        out.finish({"udml_session": {
            "split": split.name, "samples": str(len(split)), "fps": str(spec.fps),
            "chunk_samples": str(spec.chunk_samples), "gap_s": str(spec.gap_s),
            "sample_rate": str(sample_rate), "window_samples": str(window)}})
    return counts


def write_sessions(data: AVDigits, out_dir: Path, splits: tuple[str, ...] = ("train", "val", "test"),
                   spec: SessionSpec | None = None) -> list[Path]:
    """Write each of ``splits`` of ``data`` as ``<out_dir>/<preset>-<split>.mcap``."""
    paths = []
    for name in splits:
        path = Path(out_dir) / f"{data.preset.name}-{name}.mcap"
        counts = write_session(data.splits[name], path, data.sample_rate, data.class_names, spec)
        log.info("wrote %s: %s", path, counts)
        paths.append(path)
    return paths
