"""Training data from recorded sensor logs: the fusion node's own decode and sync, offline.

Each log is read in log-time order (the order the fusion node received it); every message goes
through ``messages.decode`` and the node's ``sync.Pairer`` with the log time as the clock, so a
camera frame is paired with exactly the audio window the live node would have fused. A paired
sample is labelled from the label topic: label ``k`` holds from its capture time until the next
label, and a sample is kept only when its whole audio window lies inside one label's span (the
rule ``udml log eval`` scores by). Frames go through the model's image geometry (crop, grey,
resize: ``ImagePrep.pixels``) so that training corrupts them at the model's resolution, as it
does the array data set; waveforms stay waveforms. The result is an ordinary ``Split``.

The pairer marks audio it does not hold with NaN (a gap in the stream, or less audio than a
window at the start of a log) and reports each window's valid fraction. A sample is kept only
when that fraction reaches ``LogSource.min_audio_valid`` (by default 1.0: complete windows, so the
training pipeline, whose noise injection measures signal power, never sees a NaN).
"""

from __future__ import annotations

import bisect
import glob
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from udml_stream.data.avdigits import CLASS_NAMES, AVDigits, Preset, Split
from udml_stream.errors import ConfigError
from udml_stream.logs import LogError, iter_wire
from udml_stream.messages import AudioChunk, CameraFrame, DecodeError, Label, decode
from udml_stream.model.preprocess import ImagePrep
from udml_stream.sync import Pairer, PairingConfig
from udml_stream.sync.pairing import SyncedSample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogSource:
    """Which topics of a log hold the streams and the ground truth."""

    camera_topic: str = "camera"
    audio_topic: str = "mic"
    label_topic: str = "label"
    condition_topic: str = "condition"
    conditions: tuple[str, ...] | None = None  # keep only these condition names (None = all)
    sample_rate: int = 16000
    window_samples: int = 16000
    image_size: int = 28
    # Keep a frame only when at least this share of its audio window was recorded: below 1.0
    # the waveforms carry NaN where samples are missing, which the corruption must then accept.
    min_audio_valid: float = 1.0
    # The live node's pairing timing (launch file ``slop_ms`` / ``audio_deadline_ms``), so that
    # a frame is kept or superseded as it was live; None = the node's defaults.
    slop_ms: float | None = None
    audio_deadline_ms: float | None = None
    # Further cameras (a robot with two): model modality → topic, e.g. {"image2": "camera2"}.
    # Each frame of ``camera_topic`` takes the newest frame of each within ``other_max_age_ms``
    # of it, as the live node does; a sample lacking one is dropped (``no_other_camera``).
    cameras: dict[str, str] = field(default_factory=dict)
    other_max_age_ms: float | None = None

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities of the samples read: the trigger camera, the others, the audio."""
        return ("image", *self.cameras, "audio")


@dataclass
class LogReadStats:
    """What happened to the frames of the logs read (every frame is accounted for)."""

    files: int = 0
    frames: int = 0
    samples: int = 0
    no_audio: int = 0  # paired without audio, or with less than ``min_audio_valid`` of it
    partial_audio: int = 0  # of ``no_audio``: a window partly recorded (gap, or log start)
    unlabelled: int = 0  # window straddles a label change, or before the first label
    no_other_camera: int = 0  # a further camera had no frame close enough to the trigger's
    other_condition: int = 0  # filtered out by ``conditions``
    superseded: int = 0  # replaced by a newer frame before audio covered it (as live)
    pending_at_end: int = 0  # the log ended while the frame waited for its audio
    decode_errors: int = 0
    per_label: dict[int, int] = field(default_factory=dict)
    per_file: dict[str, dict[str, int]] = field(default_factory=dict)  # frames/samples/superseded


def expand(patterns: Iterable[str | Path]) -> list[Path]:
    """Log paths from file names and glob patterns, sorted; an unmatched pattern is an error."""
    paths: list[Path] = []
    for p in patterns:
        hits = sorted(glob.glob(str(p)))
        if not hits:
            raise ConfigError(f"no log matches {str(p)!r}")
        paths += [Path(h) for h in hits]
    return paths


def _span_index(starts: list[int], t0: int, t1: int) -> int:
    """Index of the span ``[starts[j], starts[j+1])`` holding all of ``[t0, t1]``, else -1."""
    j = bisect.bisect_right(starts, t0) - 1
    if j < 0 or (j + 1 < len(starts) and starts[j + 1] <= t1):
        return -1
    return j


def _truth(path: Path, src: LogSource) -> tuple[list[tuple[int, int, str]],
                                                 list[tuple[int, int, str]]]:
    """Label and condition spans of ``path`` (a cheap first pass over two small topics)."""
    found: dict[str, list[tuple[int, int, str]]] = {src.label_topic: [], src.condition_topic: []}
    for rec in iter_wire(path, topics=list(found)):
        try:
            msg = decode(rec.frames)
        except DecodeError:
            continue  # counted in the main pass, which sees every message again
        if isinstance(msg, Label) and rec.topic in found:
            found[rec.topic].append((msg.capture_ns, msg.label, msg.name))
    if not found[src.label_topic]:
        raise LogError(f"{path} has no messages on the label topic {src.label_topic!r}: "
                       "training needs the ground truth recorded with the streams")
    return sorted(found[src.label_topic]), sorted(found[src.condition_topic])


def _release_ns(pairer: Pairer) -> int | None:
    """When the waiting frame, if any, goes out with no further input: its slop runs out, or
    the audio stream dies (``audio_alive`` turns false one ns after its deadline)."""
    if pairer.pending is None:
        return None
    due = pairer.pending_since_ns + pairer.cfg.slop_ns
    if pairer.last_audio_rx_ns is not None:
        due = min(due, pairer.last_audio_rx_ns + pairer.cfg.audio_deadline_ns + 1)
    return due


def read_log(path: Path, src: LogSource, stats: LogReadStats, labelled: bool = True
             ) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Images (model pixels) of the trigger camera, waveforms and labels of the usable samples
    of one log (``read_log_streams`` gives every camera of ``src``)."""
    inputs, ys = read_log_streams(path, src, stats, labelled)
    return inputs["image"], inputs["audio"], ys


def read_log_streams(path: Path, src: LogSource, stats: LogReadStats, labelled: bool = True
                     ) -> tuple[dict[str, list[np.ndarray]], list[int]]:
    """Per modality (``src.modalities``: images as model pixels, waveforms), the inputs of the
    usable samples of one log, and their labels. With ``labelled=False`` the log needs no
    label topic: every paired sample is kept, label -1 (what adapting the health estimator
    takes: its targets are synthetic degradation levels)."""
    labels, conds = _truth(path, src) if labelled else ([], [])
    starts = [t for t, _, _ in labels]
    cstarts = [t for t, _, _ in conds]
    window_ns = src.window_samples * 1_000_000_000 // src.sample_rate
    # The pairer matches streams by name; the topic is authoritative in a log (it may have been
    # remapped), so messages are renamed to the topic they were recorded on.
    timing: dict[str, int] = {}
    if src.slop_ms is not None:
        timing["slop_ns"] = int(src.slop_ms * 1e6)
    if src.audio_deadline_ms is not None:
        timing["audio_deadline_ns"] = int(src.audio_deadline_ms * 1e6)
    if src.other_max_age_ms is not None:
        timing["other_max_age_ns"] = int(src.other_max_age_ms * 1e6)
    pairer = Pairer(PairingConfig(sample_rate=src.sample_rate, window_samples=src.window_samples,
                                  **timing), camera=src.camera_topic, audio=src.audio_topic,
                    others=list(src.cameras.values()))
    geometry = ImagePrep(size=src.image_size)
    cams = {"image": src.camera_topic, **src.cameras}  # modality → topic, trigger first
    inputs: dict[str, list[np.ndarray]] = {m: [] for m in src.modalities}
    ys: list[int] = []

    def take(sample: SyncedSample | None) -> None:
        if sample is None or sample.frame is None:
            return  # an audio-only result while the camera was silent
        if sample.audio is None or sample.audio_valid < src.min_audio_valid:
            stats.no_audio += 1
            stats.partial_audio += int(sample.audio is not None)
            return
        if len(sample.others) < len(src.cameras):
            stats.no_other_camera += 1
            return
        # The window ends at the frame's instant, or earlier when the audio stopped short of it.
        end = min(sample.t_ns, pairer.ring.end_ns or sample.t_ns)
        j = _span_index(starts, end - window_ns, sample.t_ns) if labelled else -1
        if labelled and (j < 0 or labels[j][1] < 0):  # a negative label closes a span
            stats.unlabelled += 1
            return
        if labelled and src.conditions is not None:
            c = _span_index(cstarts, end - window_ns, sample.t_ns)
            if c < 0 or conds[c][2] not in src.conditions:
                stats.other_condition += 1
                return
        # Labelled: only now are the frames reduced to model pixels and the window kept.
        frames = {m: sample.frame if t == src.camera_topic else sample.others[t]
                  for m, t in cams.items()}
        with torch.no_grad():
            for m, f in frames.items():
                px = torch.from_numpy(np.ascontiguousarray(f.image))[None]
                inputs[m].append(geometry.pixels(px)[0, 0].numpy())
        inputs["audio"].append(sample.audio)
        y = labels[j][1] if labelled else -1
        ys.append(y)
        stats.per_label[y] = stats.per_label.get(y, 0) + 1

    def drain(now_ns: int) -> None:
        while (sample := pairer.ready(now_ns)) is not None:
            take(sample)

    frames_before = stats.frames
    for rec in iter_wire(path, topics=[*cams.values(), src.audio_topic]):
        try:
            msg = decode(rec.frames)
        except DecodeError as err:
            stats.decode_errors += 1
            log.warning("%s: dropped a malformed %s message: %s", path, rec.topic, err)
            continue
        if not isinstance(msg, (CameraFrame, AudioChunk)):
            continue
        msg.stream = rec.topic
        if isinstance(msg, CameraFrame) and rec.topic == src.camera_topic:
            stats.frames += 1  # trigger frames: one sample each at most
        # The live node polls its pairer every few ms, so a waiting frame goes out when its
        # slop (or the audio deadline) runs out, not when the next message happens to arrive:
        # without this, each frame was superseded by the next before its wait was checked.
        due = _release_ns(pairer)
        if due is not None and due <= rec.log_ns:
            drain(due)
        pairer.add(msg, rec.log_ns)
        drain(rec.log_ns)
    due = _release_ns(pairer)  # the log ended: the live node would still have sent it then
    if due is not None:
        drain(due)
    stats.superseded += pairer.frames_superseded
    stats.pending_at_end += int(pairer.pending is not None)
    stats.files += 1
    stats.samples += len(ys)
    stats.per_file[str(path)] = {
        "frames": stats.frames - frames_before, "samples": len(ys),
        "superseded": pairer.frames_superseded}
    log.info("%s: %d of %d frames kept, %d superseded", path, len(ys),
             stats.frames - frames_before, pairer.frames_superseded)
    return inputs, ys


def read_split(name: str, patterns: Iterable[str | Path], src: LogSource | None = None,
               labelled: bool = True) -> tuple[Split, LogReadStats]:
    """One ``Split`` from every usable sample of the logs ``patterns`` name (``labelled=False``:
    no ground truth needed, labels -1)."""
    src = src or LogSource()
    stats = LogReadStats()
    inputs: dict[str, list[np.ndarray]] = {m: [] for m in src.modalities}
    ys: list[int] = []
    for path in expand(patterns):
        got, y = read_log_streams(path, src, stats, labelled)
        for m, xs in got.items():
            inputs[m] += xs
        ys += y
    if not ys:
        raise LogError(f"{name}: no {'labelled ' if labelled else ''}camera+audio sample in "
                       f"{list(patterns)} "
                       f"({stats})")
    n = len(ys)
    split = Split(name, np.asarray(ys, dtype=np.int64),
                  {m: np.stack(xs).astype(np.float32) for m, xs in inputs.items()},
                  {m: np.arange(n) for m in inputs})
    log.info("%s: %d samples from %d log(s); %s", name, n, stats.files, stats)
    return split, stats


def load_logs(splits: dict[str, list[str]], src: LogSource | None = None,
              class_names: tuple[str, ...] = CLASS_NAMES) -> AVDigits:
    """A data set whose splits (``train``, ``val``, optionally ``test``) come from logs."""
    src = src or LogSource()
    out: dict[str, Split] = {}
    info: dict[str, object] = {}
    for name, patterns in splits.items():
        out[name], stats = read_split(name, patterns, src)
        info[name] = vars(stats)
    return AVDigits(Preset("logs", "raw", image_pca_energy=1.0, audio_base_snr_db=None),
                    src.modalities, out, class_names, src.sample_rate, info)
