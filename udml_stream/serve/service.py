"""The fusion node's logic without sockets: decoded messages in, fusion results out.

``FusionService`` owns the edge policy (``sync.Edge``), the pairer and the runner; the node
program only moves messages between sockets and the service, and tests drive it in memory with
their own clock (every method takes ``now_ns``).
"""

from __future__ import annotations

import logging

from udml_stream.messages import FusionResult, Message
from udml_stream.serve.runner import FusionRunner
from udml_stream.sync import Pairer, PairingConfig
from udml_stream.sync.edge import Edge

log = logging.getLogger(__name__)


class FusionService:
    """Admits messages, pairs them and fuses every sample that is due."""

    def __init__(self, runner: FusionRunner, pairing: PairingConfig, camera: str = "camera",
                 audio: str = "mic", stream: str = "fused") -> None:
        self.runner, self.stream = runner, stream
        self.edge = Edge(camera, audio, runner.sample_rate)
        self.pairer = Pairer(pairing, camera=camera, audio=audio)
        self.seq = 0  # results published so far
        self.last_audio_valid = 0.0  # of the newest sample fused (0 before the first)
        self._alive: tuple[bool, bool] | None = None

    def add(self, msg: Message, now_ns: int) -> None:
        """Take one decoded message received at ``now_ns`` (monotonic)."""
        out = self.edge.admit(msg)
        if out is not None:
            self.pairer.add(out, now_ns)
        elif self.edge.last_rejection is not None:
            log.warning("rejected a message on %r: %s", msg.topic, self.edge.last_rejection)

    def results(self, now_ns: int, wall_minus_mono_ns: int = 0) -> list[FusionResult]:
        """Fuse every sample due at ``now_ns``. ``wall_minus_mono_ns`` (wall clock minus
        monotonic clock, now) converts receive times for frames stamped on the wall clock."""
        out = []
        while (sample := self.pairer.ready(now_ns)) is not None:
            # A partly held audio window goes to the model as is: NaN marks the missing
            # samples, and the model decides from their share whether the stream is present.
            self.last_audio_valid = sample.audio_valid
            pred = self.runner.predict({"image": sample.frame.image if sample.frame else None,
                                        "audio": sample.audio})
            lat = {"sync_wait": sample.wait_ns, "preprocess": pred.preprocess_ns,
                   "inference": pred.inference_ns}
            if sample.frame is not None:
                f = sample.frame
                lat["publish"] = f.publish_ns - f.capture_ns
                # Receive time in the sender's clock: a realtime stamp (a sender on another
                # host) is compared with our wall clock, a monotonic one with our own.
                rx = sample.rx_ns + (wall_minus_mono_ns if f.clock == "realtime" else 0)
                lat["transport"] = rx - f.publish_ns
            out.append(FusionResult(
                self.stream, self.seq, sample.t_ns,
                clock=sample.frame.clock if sample.frame else "monotonic",
                probs=pred.probs, pred=pred.pred, class_names=self.runner.class_names,
                sigma_hat=pred.sigma_hat, weights=pred.weights, present=pred.present,
                source_seq=sample.source_seq, latency_ns=lat, audio_valid=sample.audio_valid))
            self.seq += 1
        return out

    def liveness_changed(self, now_ns: int) -> bool:
        """True when the camera or the audio stream came or went since the last call (the node
        then sends a heartbeat at once instead of at its next period)."""
        alive = (self.pairer.camera_alive(now_ns), self.pairer.audio_alive(now_ns))
        changed = self._alive is not None and alive != self._alive
        if changed:
            log.info("streams now: camera %s, audio %s", *("alive" if a else "absent" for a in alive))
        self._alive = alive
        return changed

    def counters(self, now_ns: int) -> dict[str, int]:
        """Heartbeat counters: results, sync state, audio timeline events, edge rejections by
        reason (``rejected.<reason>``) and degraded input."""
        p, ring = self.pairer, self.pairer.ring
        return {
            "results": self.seq,
            "frames_superseded": p.frames_superseded,
            # Windows fused with missing (NaN) samples; heartbeat counters are ints, so the
            # newest window's missing share travels in thousandths.
            "audio_partial_windows": p.partial_windows,
            "audio_missing_samples": p.missing_samples,
            "audio_missing_permille": round(1000 * (1.0 - self.last_audio_valid)),
            "audio_windows_missed": p.windows_missed,
            "audio_reanchors": ring.reanchors,
            "audio_resets": ring.resets,
            "camera_alive": int(p.camera_alive(now_ns)),
            "audio_alive": int(p.audio_alive(now_ns)),
            **self.edge.counters(),
        }
