"""Fusion node: camera frames + audio → UDML → one fusion result per frame."""

from __future__ import annotations

import logging
import time

from udml_stream.launch.config import FusionNode
from udml_stream.launch.runtime import Beater, setup_process
from udml_stream.messages import FusionResult
from udml_stream.serve import FusionRunner
from udml_stream.sync import Pairer, PairingConfig
from udml_stream.transport import Publisher, Subscriber

log = logging.getLogger(__name__)


def run(name: str, spec: FusionNode) -> int:
    """Fuse until stopped."""
    stop = setup_process(name)
    runner = FusionRunner(spec.checkpoint, spec.device, spec.threads)
    runner.warm_up()
    image_stream = spec.streams.get("image", "camera")
    audio_stream = spec.streams.get("audio", "mic")
    pairer = Pairer(PairingConfig(
        sample_rate=runner.sample_rate, window_samples=runner.window_samples,
        slop_ns=int(spec.slop_ms * 1e6), camera_deadline_ns=int(spec.camera_deadline_ms * 1e6),
        audio_deadline_ns=int(spec.audio_deadline_ms * 1e6), fallback_hz=spec.fallback_hz,
    ), camera=image_stream, audio=audio_stream)
    # A deep receive queue: audio keeps queueing in ZeroMQ while a sample is being fused.
    with Subscriber(spec.subscribe, topics=[image_stream, audio_stream],
                    latest_only=[image_stream], hwm=5000) as sub, \
            Publisher(spec.endpoint, bind=spec.bind) as pub:
        beat = Beater(pub, name, spec.heartbeat_s)
        log.info("fusing %s + %s from %s on %s", image_stream, audio_stream, spec.subscribe,
                 pub.endpoint)
        seq = 0
        last_audio_valid = 0.0  # of the newest sample fused (0 before the first)
        while not stop.is_set():
            for msg in sub.receive(timeout_ms=5):
                pairer.add(msg, time.monotonic_ns())
            while (sample := pairer.ready(time.monotonic_ns())) is not None:
                # A partly held audio window goes to the model as is: NaN marks the missing
                # samples, and the model decides from their share whether the stream is present.
                last_audio_valid = sample.audio_valid
                pred = runner.predict({"image": sample.frame.image if sample.frame else None,
                                       "audio": sample.audio})
                lat = {"sync_wait": sample.wait_ns, "preprocess": pred.preprocess_ns,
                       "inference": pred.inference_ns}
                if sample.frame is not None:
                    f = sample.frame
                    lat["publish"] = f.publish_ns - f.capture_ns
                    # Receive time in the sender's clock: a realtime stamp (a sender on another
                    # host) is compared with our wall clock, a monotonic one with our own.
                    rx = sample.rx_ns + (time.time_ns() - time.monotonic_ns()
                                         if f.clock == "realtime" else 0)
                    lat["transport"] = rx - f.publish_ns
                pub.publish(FusionResult(
                    spec.stream, seq, sample.t_ns,
                    clock=sample.frame.clock if sample.frame else "monotonic",
                    probs=pred.probs, pred=pred.pred,
                    class_names=runner.class_names, sigma_hat=pred.sigma_hat,
                    weights=pred.weights, present=pred.present, source_seq=sample.source_seq,
                    latency_ns=lat, audio_valid=sample.audio_valid))
                seq += 1
            stats = sub.stats
            beat.tick({"results": seq, "decode_errors": sub.total_decode_errors,
                       "frames_superseded": pairer.frames_superseded,
                       "frames_dropped_stale": sum(st.dropped_stale for st in stats.values()),
                       "audio_gaps": sum(st.gaps for s, st in stats.items() if s == audio_stream),
                       # Windows fused with missing (NaN) samples; heartbeat counters are ints,
                       # so the newest window's missing share travels in thousandths.
                       "audio_partial_windows": pairer.partial_windows,
                       "audio_missing_samples": pairer.missing_samples,
                       "audio_missing_permille": round(1000 * (1.0 - last_audio_valid)),
                       "camera_alive": int(pairer.camera_alive(time.monotonic_ns())),
                       "audio_alive": int(pairer.audio_alive(time.monotonic_ns()))})
    log.info("stopped after %d results", seq)
    return 0
