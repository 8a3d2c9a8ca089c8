"""Run the demo scene through camera, microphone and fusion nodes, then score it per segment.

Two stream faults are played live: the launcher kills the camera node in the ``camera_killed``
segments and the microphone node in the ``mic_unplugged`` ones, once each, early in the first
segment, and the supervisor restarts each after its restart delay. A restarted node resumes at
the current scene time (both file sources seek to it from ``start_at_unix``; a PulseAudio source
hears what the player is playing now), so the rest of the condition shows the recovery.
"""

from __future__ import annotations

import bisect
import logging
import shutil
import subprocess
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from udml_stream import modalities
from udml_stream.data.avdigits import AVDigits
from udml_stream.demo.scene import Scene, SceneSpec, Segment, build_scene
from udml_stream.errors import ConfigError
from udml_stream.launch.config import load_launch, write_launch
from udml_stream.launch.monitor import Monitor
from udml_stream.launch.supervisor import Supervisor
from udml_stream.logs import Recorder, RecorderConfig
from udml_stream.messages import FusionResult, Label
from udml_stream.transport import Publisher

log = logging.getLogger(__name__)


#: The faults the launcher plays: node killed, condition it is killed in, and when (seconds
#: after the condition's first segment starts: early, so the outage fills the condition's start).
KILLS: tuple[tuple[str, str, float], ...] = (("mic", "mic_unplugged", 0.1),
                                             ("camera", "camera_killed", 0.3))
#: Restart delay of a killed node: about 3 s of outage (plus the node's start-up) shows the
#: stream absent for two to three digits, and the condition's remaining digits its recovery.
RESTART_DELAY_S = 3.0
#: The fusion node's slop in frame intervals (see ``demo_launch``).
SLOP_FRAMES = 0.75


@dataclass
class SegmentScore:
    """Fusion outcome over the scored results of one condition."""

    condition: str
    results: int
    accuracy: float
    weight_share: dict[str, float]
    camera_absent: float
    audio_absent: float = float("nan")  # share of scored results fused without the audio


def pulse_available() -> bool:
    """Whether a PulseAudio server answers (``pactl info``)."""
    if shutil.which("pactl") is None or shutil.which("paplay") is None:
        return False
    try:
        return subprocess.run(["pactl", "info"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_null_sink(name: str) -> None:
    """Create the PulseAudio null sink ``name`` (idempotent) and make its monitor the default source."""
    sinks = subprocess.run(["pactl", "list", "short", "sinks"], capture_output=True, text=True,
                           timeout=5).stdout
    if name not in sinks.split():
        subprocess.run(["pactl", "load-module", "module-null-sink", f"sink_name={name}"],
                       check=True, capture_output=True, timeout=5)
    subprocess.run(["pactl", "set-default-source", f"{name}.monitor"], check=True,
                   capture_output=True, timeout=5)


def demo_launch(scene: Scene, out_dir: Path, checkpoint: Path, start_at: float,
                pulse: bool) -> Path:
    """The demo's launch file: the robot configuration with file and null-sink sources."""
    ep = {n: f"ipc://{out_dir.resolve()}/{n}.sock" for n in ("camera", "camera2", "mic",
                                                              "fusion")}
    mic: dict[str, Any] = ({"source": "device", "device": "pulse"} if pulse
                           else {"source": "file", "file": scene.audio.resolve()})
    path = out_dir / "launch.toml"
    cameras = {"camera": scene.video} | ({"camera2": scene.video2} if scene.video2 else {})
    write_launch(path, {
        **{cam: {"program": "camera", "stream": cam, "source": video.resolve(),
                 "fps": scene.spec.fps, "start_at_unix": start_at, "endpoint": ep[cam],
                 "restart": "on-failure", "restart_delay_s": RESTART_DELAY_S}
           for cam, video in cameras.items()},
        "mic": {"program": "microphone", **mic, "start_at_unix": start_at, "chunk_ms": 20.0,
                "endpoint": ep["mic"], "restart": "on-failure",
                "restart_delay_s": RESTART_DELAY_S},
        # A frame waits for its audio less than one frame interval, so the newest frame is fused
        # with the audio at hand rather than superseded while a microphone whose timeline runs
        # a few tens of ms behind (a PulseAudio stream that started with a late first block)
        # catches up.
        "fusion": {"program": "fusion", "checkpoint": checkpoint.resolve(), "device": "auto",
                   "threads": 1, "subscribe": [*(ep[c] for c in cameras), ep["mic"]],
                   "slop_ms": SLOP_FRAMES * 1000.0 / scene.spec.fps,
                   "endpoint": ep["fusion"], "restart": "on-failure"},
    }, comment="Written by `udml demo`: the robot configuration (configs/robot.toml) with the "
               "camera\nplaying a video file and the microphone fed "
               + ("through a PulseAudio null sink." if pulse else "from a WAV file."))
    return path


def segment_at(segments: list[Segment], t_s: float) -> Segment | None:
    """The segment playing at scene time ``t_s`` (segments sorted by start)."""
    i = bisect.bisect_right([s.start_s for s in segments], t_s) - 1
    return segments[i] if 0 <= i < len(segments) and t_s < segments[i].end_s else None


def _mean(flags: list[bool]) -> float:
    """Share of true ``flags``; NaN when there are none (no results is not 0 %)."""
    return float(np.mean(flags)) if flags else float("nan")


def _is_camera(modality: str) -> bool:
    """Whether a result's modality is a camera (``image``, a second camera ``image2``)."""
    try:
        return modalities.kind_of(modality).sync == "trigger"
    except ConfigError:  # a name outside the registry: not a camera, as before it existed
        return False


def score_results(segments: list[Segment], results: list[FusionResult], start_mono_ns: int,
                  window_s: float) -> list[SegmentScore]:
    """Per condition: accuracy and mean weight share over the results that belong to a segment.

    A result sits at its capture time ``t`` (scene time). It is scored in the segment playing at
    ``t`` when everything it fused came from that segment:

    * with the audio present, its audio window ``[t - window_s, t]`` must lie inside the segment,
      so results are scored from ``start + window_s`` on (audio-only results of a dead camera
      included: their window ends at ``t``);
    * with the audio absent (a dead or unplugged microphone, or a window mostly missing), the
      prediction rests on the frame at ``t`` alone, which shows the segment's digit from its
      start: such results are scored from ``start`` on. Without this rule an outage would leave
      few results, since the window rule keeps only the last ``segment_s - window_s`` seconds of
      each digit.

    Weight shares are each stream's effective multiplier over their sum (a stream missing from a
    result's weights counts as 0).
    """
    by: dict[str, list[tuple[bool, dict[str, float], bool, bool]]] = defaultdict(list)
    for r in results:
        t = (r.capture_ns - start_mono_ns) / 1e9
        seg = segment_at(segments, t)
        if seg is None:
            continue
        image = r.present.get("image", False)
        audio = any(p for m, p in r.present.items() if not _is_camera(m))
        if audio and t - seg.start_s < window_s:
            continue
        total = sum(r.weights.values()) or 1.0
        share = {m: w / total for m, w in r.weights.items()}
        by[seg.condition].append((r.pred == seg.label, share, not image, not audio))
    out = []
    for cond in dict.fromkeys(s.condition for s in segments):
        rows = by.get(cond, [])
        mods = sorted({m for _, sh, _, _ in rows for m in sh})
        out.append(SegmentScore(
            cond, len(rows), _mean([r[0] for r in rows]),
            {m: float(np.mean([sh.get(m, 0.0) for _, sh, _, _ in rows])) for m in mods},
            _mean([r[2] for r in rows]), _mean([r[3] for r in rows])))
    return out


def recovery_times(results: list[FusionResult], start_mono_ns: int,
                   kills: dict[str, float]) -> dict[str, float | None]:
    """Scene time at which each killed stream's modality is present in a result again after its
    kill (``kills``: node → scene time of the kill); None if it never came back."""
    modality = {"camera": "image", "mic": "audio"}
    out: dict[str, float | None] = {}
    for node, at in kills.items():
        gone, back = False, None
        for r in sorted(results, key=lambda r: r.capture_ns):
            t = (r.capture_ns - start_mono_ns) / 1e9
            if t < at:
                continue
            present = r.present.get(modality[node], False)
            gone = gone or not present
            if gone and present:
                back = t
                break
        out[node] = back
    return out


class LabelPublisher:
    """Publishes the ground truth as it plays: ``label`` (the digit) and ``condition`` (the
    scripted degradation) at each segment's start, so recordings carry their own labels."""

    def __init__(self, endpoint: str, segments: list[Segment], start_mono_ns: int) -> None:
        self.pub = Publisher(endpoint)
        self.segments, self.start_mono_ns = segments, start_mono_ns
        self.conditions = list(dict.fromkeys(s.condition for s in segments))
        self._next = 0

    def tick(self, now_mono_ns: int) -> None:
        """Publish the labels of every segment that has started by ``now_mono_ns``."""
        while self._next < len(self.segments):
            seg = self.segments[self._next]
            t_ns = self.start_mono_ns + int(seg.start_s * 1e9)
            if t_ns > now_mono_ns:
                return
            self.pub.publish(Label("label", seg.index, t_ns, label=seg.label, name=str(seg.label)))
            self.pub.publish(Label("condition", seg.index, t_ns,
                                   label=self.conditions.index(seg.condition), name=seg.condition))
            self._next += 1

    def close(self) -> None:
        """Close the socket."""
        self.pub.close()


def scene_spec(data: AVDigits) -> SceneSpec:
    """The demo's scene for ``data``: with two cameras, one of them is also covered for five
    digits before the closing clean ones (the other camera and the audio carry on)."""
    spec = SceneSpec()
    if "image2" not in data.modalities:
        return spec
    plan = (*spec.plan[:-1], ("camera2_covered", 5), *spec.plan[-1:])
    return SceneSpec(plan=plan)


def run_demo(checkpoint: Path, data: AVDigits, out_dir: Path, pulse: bool | None = None,
             startup_s: float = 8.0, record: Path | None = None
             ) -> tuple[list[SegmentScore], dict[str, object]]:
    """Build the scene, run the nodes under a supervisor, kill the microphone and the camera
    node in their segments (``KILLS``; the supervisor restarts them), and score the fusion
    results; with ``record``, also record every stream and the ground-truth labels into that
    MCAP file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    scene = build_scene(data, out_dir, scene_spec(data))
    use_pulse = pulse_available() if pulse is None else pulse
    sink = "udml_vmic"
    if use_pulse:
        ensure_null_sink(sink)
    start_at = time.time() + startup_s
    start_mono_ns = time.monotonic_ns() + int((start_at - time.time()) * 1e9)
    path = demo_launch(scene, out_dir, checkpoint, start_at, use_pulse)
    launch = load_launch(path)
    sup = Supervisor(path, launch, log_dir=out_dir / "logs")
    monitor = Monitor([launch.nodes["fusion"].endpoint])
    player: threading.Thread | None = None
    if use_pulse:
        def _play() -> None:
            time.sleep(max(0.0, start_at - time.time()))
            subprocess.run(["paplay", "-d", sink, str(scene.audio)], check=False, timeout=600)
        player = threading.Thread(target=_play, daemon=True)
        player.start()
    labels = LabelPublisher(f"ipc://{out_dir.resolve()}/labels.sock", scene.segments,
                            start_mono_ns)
    recorder = None
    rec_thread = None
    if record is not None:
        eps = [n.endpoint for n in launch.nodes.values()] + [labels.pub.endpoint]
        recorder = Recorder(RecorderConfig(eps, record))
        rec_thread = threading.Thread(target=recorder.run, name="recorder", daemon=True)
        rec_thread.start()
    # Scene time of each kill, for the conditions this scene plays.
    pending = {node: first.start_s + offset for node, cond, offset in KILLS
               if (first := next((s for s in scene.segments if s.condition == cond), None))}
    kills: dict[str, float] = {}
    events: list[str] = []
    sup.start()
    try:
        end = start_at + scene.duration_s + 1.0
        while time.time() < end:
            monitor.pump(50)
            labels.tick(time.monotonic_ns())
            now_s = time.time() - start_at
            events += [f"{e} at scene t={now_s:.1f}s" for e in sup.poll()]
            for node, at in list(pending.items()):
                if now_s >= at:
                    sup.kill(node)
                    kills[node] = now_s
                    events.append(f"{node} killed at scene t={now_s:.1f}s")
                    del pending[node]
    finally:
        codes = sup.stop()
        monitor.close()
        labels.close()
        if recorder is not None and rec_thread is not None:
            recorder.stop()
            rec_thread.join(30)
    viewer = None
    if record is not None and record.is_file():
        # A copy with Foxglove's viewer channels (camera as JPEG, audio level, weights, σ̂):
        # open it in Foxglove with configs/foxglove_layout.json. The recording itself stays
        # the exact wire frames.
        from udml_stream.view import export_foxglove

        viewer = export_foxglove(record, record.with_suffix(".foxglove.mcap")).output
    scores = score_results(scene.segments, monitor.results, start_mono_ns, 1.0)
    facts = {"audio_path": "pulseaudio null sink" if use_pulse else "wav file source",
             "results": len(monitor.results), "events": events, "exit_codes": codes,
             "duration_s": scene.duration_s, "log": str(record) if record else None,
             "viewer_log": str(viewer) if viewer else None,
             # Whether the restart delay lets each stream come back within its condition.
             "back_at": recovery_times(monitor.results, start_mono_ns, kills)}
    return scores, facts
