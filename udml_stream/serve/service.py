"""The fusion node's logic without sockets: decoded messages in, fusion results out.

``FusionService`` owns the edge policy (``sync.Edge``), the pairers and the runner; the node
program only moves messages between sockets and the service, and tests drive it in memory with
their own clock (every method takes ``now_ns``).

One service serves one robot or a fleet. A fleet's streams are namespaced by robot
(``<robot>/camera``, ``<robot>/mic``; results on ``<robot>/fused``): each robot has its own
lane (edge state, pairer, result sequence, counters), and the samples that are due across all
lanes are fused in one batched forward pass (micro-batching: a sample may wait up to
``batch_wait_ns`` for others to join its batch, never longer).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from udml_stream import modalities
from udml_stream.errors import CheckpointError
from udml_stream.messages import FusionResult, Message
from udml_stream.messages.topics import check_robot_names, namespaced
from udml_stream.sensors.camera import orient
from udml_stream.serve.diagnose import OPEN, Diagnostics, Finding, report
from udml_stream.serve.runner import FusionRunner
from udml_stream.sync import Pairer, PairingConfig, SyncedSample
from udml_stream.sync.edge import Edge

log = logging.getLogger(__name__)

#: auto_orient changes a robot's camera turns at most this often (a camera set right on its node
#: while the service turns it is found turned again and undone: one more).
MAX_CORRECTIONS = 4


def _roles(kinds: Mapping[str, str]) -> tuple[str, str, tuple[str, ...]]:
    """(trigger camera, audio window, other cameras) among a model's modalities: the first
    trigger-kind modality triggers samples, the others are sampled at its frames. Live serving
    needs a camera and exactly one continuous (window) stream."""
    trig = [m for m, k in kinds.items() if modalities.REGISTRY[k].sync == "trigger"]
    win = [m for m, k in kinds.items() if modalities.REGISTRY[k].sync == "window"]
    if not trig or len(win) != 1:
        raise CheckpointError(f"the model takes {dict(kinds)}; live serving needs at least one "
                              "camera and exactly one audio stream")
    return trig[0], win[0], tuple(trig[1:])


@dataclass
class Lane:
    """One robot's streams: admission, pairing and its own result sequence."""

    robot: str
    camera: str  # topic of its trigger camera stream
    audio: str  # topic of its audio stream
    stream: str  # topic of its results
    edge: Edge
    pairer: Pairer
    topics: dict[str, str] = field(default_factory=dict)  # model modality → its topic here
    seq: int = 0  # results published so far
    conflicts: int = 0  # of them, answered by the conflict rule (the streams disagreed)
    last_audio_valid: float = 0.0  # of the newest sample fused (0 before the first)
    alive: tuple[bool, bool] | None = None
    # Faults seen across its recent results (a turned camera, streams that keep disagreeing).
    diag: Diagnostics = field(default_factory=lambda: Diagnostics({}, {}))
    # auto_orient: quarter turns clockwise the service applies to each camera's frames, and
    # how many times it changed them (capped: a scene that keeps reading turned must not spin).
    turns: dict[str, int] = field(default_factory=dict)
    corrections: int = 0
    # set_aside_late: results answered without a stream found running late, per stream.
    set_aside: Counter[str] = field(default_factory=Counter)


class FusionService:
    """Admits messages, pairs them per robot and fuses every sample that is due, batched."""

    def __init__(self, runner: FusionRunner, pairing: PairingConfig, camera: str = "camera",
                 audio: str = "mic", stream: str = "fused", robots: Sequence[str] = (),
                 max_batch: int = 64, batch_wait_ns: int = 0, freeze_ns: int = 0,
                 streams: Mapping[str, str] | None = None, auto_orient: bool = False,
                 set_aside_late: bool = True) -> None:
        """``streams``: model modality → topic (the launch file's ``streams``); a modality it
        does not name reads its registry default (``modalities.default_topic``: ``image2`` →
        ``camera2``), except the trigger camera and the audio stream, which read ``camera``
        and ``audio``. ``robots``: names of the robots served (topics ``<robot>/<topic>``);
        empty for one robot whose topics are as named. ``max_batch`` caps one forward pass;
        ``batch_wait_ns`` is how long a due sample may wait for batch mates; ``freeze_ns`` > 0
        turns on the frozen-camera check (``sync.edge.Edge``). ``auto_orient``: when the
        diagnostics find a camera turned (``serve.diagnose``), turn its frames back before the
        model from then on, instead of only saying so. ``set_aside_late``: while the
        diagnostics find a stream running late (``lag``: it carries an older scene; a camera,
        or a microphone beyond its window), a sample on which its answer is the stale one is
        answered without it."""
        if max_batch < 1 or batch_wait_ns < 0:
            raise ValueError(f"max_batch = {max_batch} (expected ≥ 1), batch_wait_ns = "
                             f"{batch_wait_ns} (expected ≥ 0)")
        check_robot_names(robots)
        self.runner, self.max_batch, self.batch_wait_ns = runner, max_batch, batch_wait_ns
        self.auto_orient, self.set_aside_late = auto_orient, set_aside_late
        self.trigger, self.window, self.others = _roles(runner.kinds)
        topics = {self.trigger: camera, self.window: audio, **(streams or {})}
        self.streams = modalities.live_streams(runner.modalities, topics, runner.kinds)
        self.lanes: dict[str, Lane] = {}
        # The audio stream's answer comes from its window of past input (the diagnostics allow
        # for that when they judge a disagreement).
        window_s = runner.window_samples / runner.sample_rate
        for r in robots or [""]:
            t = {s.name: namespaced(r, s.topic) for s in self.streams}
            cam, mic, others = t[self.trigger], t[self.window], [t[m] for m in self.others]
            self.lanes[r] = Lane(r, cam, mic, namespaced(r, stream),
                                 Edge(cam, mic, runner.sample_rate, freeze_ns, others),
                                 Pairer(pairing, camera=cam, audio=mic, others=others), t,
                                 diag=Diagnostics({m: t[m] for m in (self.trigger, *self.others)},
                                                  t, memory_s={self.window: window_s}))
        self._by_topic = {t: lane for lane in self.lanes.values() for t in lane.topics.values()}
        self.fleet = bool(robots)
        self.other_topics = 0  # messages on a topic no robot of the fleet publishes
        self.batches: Counter[int] = Counter()  # batch size → forward passes
        self.set_aside_passes = 0  # set_aside_late's forward passes without a late stream
        self._due: list[tuple[Lane, SyncedSample, int]] = []  # (lane, sample, due since)
        self._findings_changed = False  # a diagnostic began or ended since the last heartbeat

    # The single robot's lane, for callers that serve one robot.
    @property
    def edge(self) -> Edge:
        """The first (for one robot: the only) lane's edge."""
        return next(iter(self.lanes.values())).edge

    @property
    def pairer(self) -> Pairer:
        """The first (for one robot: the only) lane's pairer."""
        return next(iter(self.lanes.values())).pairer

    @property
    def seq(self) -> int:
        """Results produced so far, all robots."""
        return sum(lane.seq for lane in self.lanes.values())

    @property
    def topics(self) -> list[str]:
        """Every topic the service takes (the node subscribes to exactly these)."""
        return list(self._by_topic)

    def add(self, msg: Message, now_ns: int) -> None:
        """Take one decoded message received at ``now_ns`` (monotonic)."""
        topic = msg.topic or msg.stream
        lane = self._by_topic.get(topic)
        if lane is None:
            if self.fleet:
                self.other_topics += 1
                log.warning("rejected a message on %r: other_topic: no robot of the fleet "
                            "publishes it", topic)
                return
            lane = next(iter(self.lanes.values()))  # its edge rejects it by name
        out = lane.edge.admit(msg)
        if out is not None:
            lane.pairer.add(out, now_ns)
        elif lane.edge.last_rejection is not None:
            log.warning("rejected a message on %r: %s", topic, lane.edge.last_rejection)

    def results(self, now_ns: int, wall_minus_mono_ns: int = 0) -> list[FusionResult]:
        """Fuse every sample due at ``now_ns`` (batched across robots). ``wall_minus_mono_ns``
        (wall clock minus monotonic clock, now) converts receive times for frames stamped on
        the wall clock."""
        for lane in self.lanes.values():
            while (sample := lane.pairer.ready(now_ns)) is not None:
                self._due.append((lane, sample, now_ns))
        out: list[FusionResult] = []
        while self._due and (len(self._due) >= self.max_batch
                             or now_ns - self._due[0][2] >= self.batch_wait_ns):
            batch, self._due = self._due[:self.max_batch], self._due[self.max_batch:]
            out.extend(self._fuse(batch, now_ns, wall_minus_mono_ns))
        return out

    def _fuse(self, batch: list[tuple[Lane, SyncedSample, int]], now_ns: int,
              wall_minus_mono_ns: int) -> list[FusionResult]:
        # A partly held audio window goes to the model as is: NaN marks the missing samples,
        # and the model decides from their share whether the stream is present.
        inputs = [self._inputs(lane, s) for lane, s, _ in batch]
        preds = self.runner.predict_batch(inputs)
        # The turns each sample was fused with: a correction made while this batch is read
        # must not let its later, still uncorrected samples into the fresh window.
        turned = [dict(lane.turns) for lane, _, _ in batch]
        self.batches[len(batch)] += 1
        late: dict[int, list[str]] = {}  # sample → the late streams it is answered without
        for i, ((lane, sample, _), pred, used) in enumerate(zip(batch, preds, turned,
                                                                strict=True)):
            judged = used == lane.turns
            changes = lane.diag.add(pred, sample.t_ns) if judged else []
            if changes:
                report(lane.robot, changes)
                self._findings_changed = True
                if self.auto_orient:
                    self._orient(lane, changes)
            if self.set_aside_late and pred.conflict and judged:
                # The streams disagree, and a stream found late names what the stream it follows
                # named `lag` results before: its answer is the stale one. It has no say in this
                # sample, as long as another stream is open to answer it (the diagnostics still
                # read the sample as first fused).
                drop = [m for m, p in pred.present.items() if p and lane.diag.stale(m)]
                rest = [m for m, p in pred.present.items() if p and m not in drop]
                if drop and any(pred.health.get(m, 0.0) >= OPEN for m in rest):
                    late[i] = drop
        if late:
            again = self.runner.predict_batch(
                [{**inputs[i], **dict.fromkeys(ms)} for i, ms in late.items()])
            self.set_aside_passes += 1
            for (i, ms), pred in zip(late.items(), again, strict=True):
                first = preds[i]
                # The answer and the weights of the second pass (the late stream's weight 0);
                # what was received, and its σ̂, as first fused: the stream was there.
                pred.present, pred.sigma_hat = first.present, first.sigma_hat
                pred.conflict = True  # it was answered on a disagreement
                pred.preprocess_ns += first.preprocess_ns  # both passes were spent on it
                pred.inference_ns += first.inference_ns
                preds[i] = pred
                batch[i][0].set_aside.update(ms)
        out = []
        for (lane, sample, since), pred in zip(batch, preds, strict=True):
            lane.last_audio_valid = sample.audio_valid
            lane.conflicts += pred.conflict
            # Time spent waiting for batch mates counts as sync wait: it is time before fusion.
            lat = {"sync_wait": sample.wait_ns + now_ns - since,
                   "preprocess": pred.preprocess_ns, "inference": pred.inference_ns}
            if sample.frame is not None:
                f = sample.frame
                lat["publish"] = f.publish_ns - f.capture_ns
                # Receive time in the sender's clock: a realtime stamp (a sender on another
                # host) is compared with our wall clock, a monotonic one with our own.
                rx = sample.rx_ns + (wall_minus_mono_ns if f.clock == "realtime" else 0)
                lat["transport"] = rx - f.publish_ns
            out.append(FusionResult(
                lane.stream, lane.seq, sample.t_ns,
                clock=sample.frame.clock if sample.frame else "monotonic",
                probs=pred.probs, pred=pred.pred, class_names=self.runner.class_names,
                sigma_hat=pred.sigma_hat, weights=pred.weights, present=pred.present,
                source_seq=sample.source_seq, latency_ns=lat, audio_valid=sample.audio_valid,
                conflict=pred.conflict))
            lane.seq += 1
        return out

    def _orient(self, lane: Lane, changes: list[tuple[str, Finding]]) -> None:
        """Turn a camera found turned back from its next frame on (``auto_orient``)."""
        for change, f in changes:
            if change != "begins" or not f.rotate:
                continue
            m = f.code.removeprefix("turned.")
            if lane.corrections >= MAX_CORRECTIONS:
                log.error("%s%s still looks turned after %d corrections: auto_orient leaves it "
                          "as it is; check the camera", f"{lane.robot}: " if lane.robot else "",
                          lane.topics[m], lane.corrections)
                continue
            lane.corrections += 1
            lane.turns[m] = (lane.turns.get(m, 0) + f.rotate // 90) % 4
            lane.diag.forget(m)
            log.warning("%s%s: frames now turned %d° clockwise before the model (auto_orient)",
                        f"{lane.robot}: " if lane.robot else "", lane.topics[m],
                        90 * lane.turns[m])

    def _inputs(self, lane: Lane, s: SyncedSample) -> dict[str, np.ndarray | None]:
        """The model's inputs of one sample, by modality (None: absent in this sample)."""
        x: dict[str, np.ndarray | None] = {self.trigger: s.frame.image if s.frame else None,
                                           self.window: s.audio}
        for m in self.others:
            f = s.others.get(lane.topics[m])
            x[m] = f.image if f is not None else None
        for m, k in lane.turns.items():
            if k and x[m] is not None:
                x[m] = orient(x[m], rotate=90 * k)
        return x

    @property
    def findings(self) -> list[str]:
        """Active diagnostics across the robots (``serve.diagnose``), as ``[<robot>/]<code>``."""
        return [namespaced(lane.robot, code) for lane in self.lanes.values()
                for code in lane.diag.active]

    def liveness_changed(self, now_ns: int) -> bool:
        """True when a camera or audio stream of any robot came or went, or a diagnostic
        finding began or ended, since the last call (the node then sends a heartbeat at once
        instead of at its next period)."""
        changed, self._findings_changed = self._findings_changed, False
        for lane in self.lanes.values():
            alive = (lane.pairer.camera_alive(now_ns), lane.pairer.audio_alive(now_ns))
            if lane.alive is not None and alive != lane.alive:
                changed = True
                log.info("%sstreams now: camera %s, audio %s",
                         f"{lane.robot}: " if lane.robot else "",
                         *("alive" if a else "absent" for a in alive))
            lane.alive = alive
        return changed

    def counters(self, now_ns: int) -> dict[str, int]:
        """Heartbeat counters: results (``conflicts``: those the conflict rule answered), sync
        state, audio timeline events, edge rejections by reason (``rejected.<reason>``) and
        degraded input; in a fleet, each robot's under ``<robot>/`` and the batching under
        ``batches.<size>``."""
        out: dict[str, int] = {}
        for lane in self.lanes.values():
            p, ring = lane.pairer, lane.pairer.ring
            c = {
                "results": lane.seq,
                "conflicts": lane.conflicts,
                "frames_superseded": p.frames_superseded,
                # Windows fused with missing (NaN) samples; heartbeat counters are ints, so the
                # newest window's missing share travels in thousandths.
                "audio_partial_windows": p.partial_windows,
                "audio_missing_samples": p.missing_samples,
                "audio_missing_permille": round(1000 * (1.0 - lane.last_audio_valid)),
                "audio_windows_missed": p.windows_missed,
                "audio_reanchors": ring.reanchors,
                "audio_resets": ring.resets,
                "audio_gaps": lane.edge.lost[lane.audio],
                "camera_alive": int(p.camera_alive(now_ns)),
                "audio_alive": int(p.audio_alive(now_ns)),
                **lane.edge.counters(),
            }
            c.update(lane.diag.counters())
            if self.auto_orient:
                c.update({f"diag.{m}.applied": 90 * lane.turns.get(m, 0)
                          for m in (self.trigger, *self.others)})
            if self.set_aside_late:
                c.update({f"diag.{m}.set_aside": lane.set_aside[m]
                          for m in (self.trigger, self.window, *self.others)})
            if self.others:  # a second camera: its liveness and the samples that lacked it
                c["others_stale"] = p.others_stale
                c.update({f"{m}_alive": int(p.other_alive(lane.topics[m], now_ns))
                          for m in self.others})
            out.update({namespaced(lane.robot, k): v for k, v in c.items()})
        if self.fleet:
            out["results"] = self.seq
            out["rejected.other_topic"] = self.other_topics
            out.update({f"batches.{n}": k for n, k in sorted(self.batches.items())})
            out["set_aside_passes"] = self.set_aside_passes
        return out
