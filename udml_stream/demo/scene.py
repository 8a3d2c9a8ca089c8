"""Build a demo scene: a video of test-split digits and the matching spoken digits as audio.

Each digit is one segment of ``segment_s`` seconds: the image is shown for the whole segment and
its utterance (the one-second AV-Digits window) starts ``lead_s`` into it. Image degradations come
from the corruption library and are applied at the model's resolution (28×28 images are corrupted
and then upscaled with nearest-neighbour), so each one keeps the library's documented severity:
the fusion node's crop and resize only rescale it. The stream faults (``camera_killed``,
``mic_unplugged``) are not in the files: the launcher kills the node during those segments
(``udml_stream.demo.run``), which also says which results are scored.

Two kinds of data make two kinds of scene:

* the benchmark presets (``balanced``, ``imbalanced``): the preset's own weakened images, and its
  audio windows as they are, over a floor at the level of the preset's background noise;
* a natural preset (``field``): the original 28×28 MNIST digits (the preset's image table holds
  camera views of them already resized back, which would be resized twice), and the clean
  utterances put at a natural level (``speech_peak_dbfs``) over a constant room floor
  (``room_floor_dbfs``, white) that fills the whole track, between utterances included.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from udml_stream import corrupt
from udml_stream.data.avdigits import AVDigits
from udml_stream.sensors.microphone import write_wav

#: Every condition a plan may name; the stream faults among them are played by the launcher.
CONDITIONS = ("clean", "camera_noise", "audio_noise", "camera_covered", "mic_unplugged",
              "camera_killed", "camera2_covered")


@dataclass(frozen=True)
class Segment:
    """One digit of the scene."""

    index: int
    label: int
    start_s: float
    end_s: float
    condition: str  # one of CONDITIONS


@dataclass(frozen=True)
class SceneSpec:
    """What the scene shows, and where each scripted event happens."""

    # 35 digits of 1.5 s: 52.5 s of scene, under a minute and a half with the nodes' start-up.
    plan: tuple[tuple[str, int], ...] = (
        ("clean", 5), ("camera_noise", 5), ("audio_noise", 5), ("camera_covered", 5),
        ("mic_unplugged", 6), ("camera_killed", 6), ("clean", 3))
    segment_s: float = 1.5
    lead_s: float = 0.25
    fps: float = 30.0
    width: int = 640
    height: int = 480
    digit_px: int = 420
    camera_noise_level: int = 10
    audio_noise_level: int = 10
    covered_level: int = 10  # a hand over the lens: nearly black, sensor noise left
    speech_peak_dbfs: float = -20.0  # natural data: a talker at a normal distance
    room_floor_dbfs: float = -70.0  # natural data: RMS of the room's (white) noise floor
    seed: int = 0


@dataclass
class Scene:
    """Paths of the scene's files and its segments."""

    video: Path
    audio: Path
    segments: list[Segment]
    spec: SceneSpec
    video2: Path | None = None  # the second camera's view (two-camera data: ``image2``)

    @property
    def duration_s(self) -> float:
        """Length of the scene."""
        return self.segments[-1].end_s


def _db(dbfs: float) -> float:
    """Amplitude of a level in dB relative to full scale."""
    return float(10.0 ** (dbfs / 20.0))


def _scene_sources(data: AVDigits, rows: np.ndarray, spec: SceneSpec, rng: np.random.Generator,
                   n_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The scene's raw material for test ``rows``.

    Returns:
        (digits ``[n, 28, 28]`` in pixels 0..255, utterances at their level ``[n, N]``, the
        reference power of each utterance for the audio SNR families ``[n]`` (NaN: let the
        library measure the noisy segment, as the benchmark presets always did), the whole
        track's floor ``[n_samples]``).
    """
    test = data.splits["test"]
    if data.preset.natural:
        from udml_stream.data.sources import load_mnist

        # The field tables hold camera views already resized to 28 px; the video needs the
        # digit itself, and the image ids index the bundled MNIST digits.
        images = load_mnist()[0][test.index["image"][rows]].astype(np.float32)
        clean = test.tables["audio"][test.index["audio"][rows]].astype(np.float32)
        peak = np.abs(clean).max(axis=1, keepdims=True) + 1e-12
        waves = (clean * (_db(spec.speech_peak_dbfs) / peak)).astype(np.float32)
        # SNRs refer to the clean speech at its level, not to speech plus the room floor.
        ref = corrupt.active_power(waves)
        floor = rng.normal(0.0, _db(spec.room_floor_dbfs), size=n_samples).astype(np.float32)
        return images, waves, ref, floor
    batch = test.batch(rows)
    waves = batch["audio"]
    # The 50 ms edges of each window are padding around centred speech: their level is the
    # preset's background noise, which also fills the gaps between utterances.
    level = float(np.median(np.sqrt(np.mean(waves[:, :800] ** 2, axis=1))))
    floor = rng.normal(0.0, max(level, 1e-4), size=n_samples).astype(np.float32)
    return batch["image"], waves, np.full(len(rows), np.nan), floor


def _second_view(data: AVDigits, rows: np.ndarray) -> np.ndarray | None:
    """The second camera's digits ``[n, 28, 28]`` for test ``rows`` (None: one camera)."""
    if "image2" not in data.modalities:
        return None
    test = data.splits["test"]
    if data.preset.natural:  # as for the first camera: the digit itself, not its camera view
        from udml_stream.data.sources import load_mnist

        return load_mnist()[0][test.index["image2"][rows]].astype(np.float32)
    return test.batch(rows)["image2"]


def _frame(img: np.ndarray, spec: SceneSpec) -> np.ndarray:
    """A camera frame showing the 28×28 digit ``img`` (nearest-neighbour upscaled, centred)."""
    big = cv2.resize(np.clip(img, 0, 255).astype(np.uint8), (spec.digit_px, spec.digit_px),
                     interpolation=cv2.INTER_NEAREST)
    frame = np.zeros((spec.height, spec.width, 3), np.uint8)
    top, left = (spec.height - spec.digit_px) // 2, (spec.width - spec.digit_px) // 2
    frame[top : top + spec.digit_px, left : left + spec.digit_px] = big[..., None]
    return frame


def build_scene(data: AVDigits, out_dir: Path, spec: SceneSpec | None = None) -> Scene:
    """Write ``scene.avi`` (MJPEG), ``scene.wav`` (16 kHz) and ``scene.json`` into ``out_dir``;
    with two-camera data (``image2``) also ``scene2.avi``, the second camera's view of the
    same digits (``camera2_covered`` covers it alone; the other camera conditions act on the
    first camera only)."""
    spec = spec or SceneSpec()
    unknown = sorted({c for c, _ in spec.plan} - set(CONDITIONS))
    if unknown:
        raise ValueError(f"unknown scene conditions {unknown}; expected some of {CONDITIONS}")
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    test = data.splits["test"]
    n = sum(k for _, k in spec.plan)
    rows = rng.choice(len(test), size=n, replace=False)
    conditions = [c for c, k in spec.plan for _ in range(k)]
    sr = data.sample_rate
    seg_samples = round(spec.segment_s * sr)
    lead = round(spec.lead_s * sr)
    images, waves, ref, audio = _scene_sources(data, rows, spec, rng, n * seg_samples)
    frames_per_seg = round(spec.segment_s * spec.fps)
    path_v = out_dir / "scene.avi"
    writer = cv2.VideoWriter(str(path_v), cv2.VideoWriter_fourcc(*"MJPG"), spec.fps,
                             (spec.width, spec.height))
    images2 = _second_view(data, rows)
    if images2 is None and "camera2_covered" in conditions:
        raise ValueError("condition camera2_covered needs two-camera data (modality image2)")
    path_v2 = out_dir / "scene2.avi" if images2 is not None else None
    writer2 = (cv2.VideoWriter(str(path_v2), cv2.VideoWriter_fourcc(*"MJPG"), spec.fps,
                               (spec.width, spec.height)) if path_v2 is not None else None)
    segments = []
    for i in range(n):
        cond = conditions[i]
        img = images[i : i + 1]
        if cond == "camera_noise":
            img = corrupt.apply("image", "gaussian", img, spec.camera_noise_level, rng)
        elif cond == "camera_covered":
            img = corrupt.apply("image", "covered", img, spec.covered_level, rng)
        frame = _frame(img[0], spec)
        for _ in range(frames_per_seg):
            writer.write(frame)
        if writer2 is not None and images2 is not None:
            img2 = images2[i : i + 1]
            if cond == "camera2_covered":
                img2 = corrupt.apply("image", "covered", img2, spec.covered_level, rng)
            frame2 = _frame(img2[0], spec)
            for _ in range(frames_per_seg):
                writer2.write(frame2)
        s0 = i * seg_samples
        span = slice(s0 + lead, s0 + lead + waves.shape[1])
        if data.preset.natural:
            audio[span] += waves[i]  # the room floor goes on under the speech
        else:
            audio[span] = waves[i]  # the window carries the preset's background already
        if cond == "audio_noise":
            seg = slice(s0, s0 + seg_samples)
            audio[seg] = corrupt.apply(
                "audio", "gaussian", audio[None, seg], spec.audio_noise_level, rng,
                ref_power=None if np.isnan(ref[i]) else ref[i])[0]
        segments.append(Segment(i, int(test.labels[rows[i]]), i * spec.segment_s,
                                (i + 1) * spec.segment_s, cond))
    writer.release()
    if writer2 is not None:
        writer2.release()
    path_a = out_dir / "scene.wav"
    write_wav(path_a, audio, sr)  # no rescaling: the model's log-mel statistics are absolute
    (out_dir / "scene.json").write_text(json.dumps(
        {"spec": asdict(spec), "segments": [asdict(s) for s in segments]}, indent=1))
    return Scene(path_v, path_a, segments, spec, path_v2)
