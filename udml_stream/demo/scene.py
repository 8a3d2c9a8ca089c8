"""Build a demo scene: a video of test-split digits and the matching spoken digits as audio.

Each digit is one segment of ``segment_s`` seconds: the image is shown for the whole segment and
its utterance (the one-second AV-Digits window) starts ``lead_s`` into it. Degradations come from
the corruption library and are applied at the model's resolution (28×28 images are corrupted and
then upscaled with nearest-neighbour), so what the fusion node sees after its resize is exactly
the corrupted sample. A frame is scored when its whole audio window (ending at its capture time)
lies inside its own segment.
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


@dataclass(frozen=True)
class Segment:
    """One digit of the scene."""

    index: int
    label: int
    start_s: float
    end_s: float
    condition: str  # clean | camera_noise | audio_noise | camera_killed


@dataclass(frozen=True)
class SceneSpec:
    """What the scene shows, and where each scripted event happens."""

    plan: tuple[tuple[str, int], ...] = (
        ("clean", 5), ("camera_noise", 5), ("audio_noise", 5), ("camera_killed", 6), ("clean", 3))
    segment_s: float = 1.5
    lead_s: float = 0.25
    fps: float = 30.0
    width: int = 640
    height: int = 480
    digit_px: int = 420
    camera_noise_level: int = 10
    audio_noise_level: int = 10
    seed: int = 0


@dataclass
class Scene:
    """Paths of the scene's files and its segments."""

    video: Path
    audio: Path
    segments: list[Segment]
    spec: SceneSpec

    @property
    def duration_s(self) -> float:
        """Length of the scene."""
        return self.segments[-1].end_s


def build_scene(data: AVDigits, out_dir: Path, spec: SceneSpec | None = None) -> Scene:
    """Write ``scene.avi`` (MJPEG), ``scene.wav`` (16 kHz) and ``scene.json`` into ``out_dir``."""
    spec = spec or SceneSpec()
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    test = data.splits["test"]
    n = sum(k for _, k in spec.plan)
    rows = rng.choice(len(test), size=n, replace=False)
    conditions = [c for c, k in spec.plan for _ in range(k)]
    batch = test.batch(rows)
    images, waves = batch["image"], batch["audio"]
    sr = data.sample_rate
    seg_samples = round(spec.segment_s * sr)
    lead = round(spec.lead_s * sr)
    # The 50 ms edges of each window are padding around centred speech: their level is the
    # preset's background noise, which also fills the gaps between utterances.
    floor = float(np.median(np.sqrt(np.mean(waves[:, :800] ** 2, axis=1))))
    audio = rng.normal(0.0, max(floor, 1e-4), size=n * seg_samples).astype(np.float32)
    frames_per_seg = round(spec.segment_s * spec.fps)
    path_v = out_dir / "scene.avi"
    writer = cv2.VideoWriter(str(path_v), cv2.VideoWriter_fourcc(*"MJPG"), spec.fps,
                             (spec.width, spec.height))
    segments = []
    for i in range(n):
        cond = conditions[i]
        img = images[i : i + 1]
        if cond == "camera_noise":
            img = corrupt.apply("image", "gaussian", img, spec.camera_noise_level, rng)
        big = cv2.resize(np.clip(img[0], 0, 255).astype(np.uint8), (spec.digit_px, spec.digit_px),
                         interpolation=cv2.INTER_NEAREST)
        frame = np.zeros((spec.height, spec.width, 3), np.uint8)
        top, left = (spec.height - spec.digit_px) // 2, (spec.width - spec.digit_px) // 2
        frame[top : top + spec.digit_px, left : left + spec.digit_px] = big[..., None]
        for _ in range(frames_per_seg):
            writer.write(frame)
        s0 = i * seg_samples
        audio[s0 + lead : s0 + lead + waves.shape[1]] = waves[i]
        if cond == "audio_noise":
            audio[s0 : s0 + seg_samples] = corrupt.apply(
                "audio", "gaussian", audio[None, s0 : s0 + seg_samples], spec.audio_noise_level,
                rng)[0]
        segments.append(Segment(i, int(test.labels[rows[i]]), i * spec.segment_s,
                                (i + 1) * spec.segment_s, cond))
    writer.release()
    path_a = out_dir / "scene.wav"
    write_wav(path_a, audio, sr)  # no rescaling: the model's log-mel statistics are absolute
    (out_dir / "scene.json").write_text(json.dumps(
        {"spec": asdict(spec), "segments": [asdict(s) for s in segments]}, indent=1))
    return Scene(path_v, path_a, segments, spec)
