"""Fusion node: camera frames (one camera or several) + audio → UDML → one fusion result per
frame of the trigger camera.

The logic lives in ``udml_stream.serve.FusionService``; this program wires it to sockets, logs
rejections rate-limited and never lets one message take the node down.
"""

from __future__ import annotations

import logging
import time

from udml_stream.launch.config import FusionNode
from udml_stream.launch.runtime import Beater, setup_process
from udml_stream.messages.codec import DECODE_REASONS
from udml_stream.serve import FusionRunner, FusionService
from udml_stream.serve import service as service_module
from udml_stream.serve.ratelimit import RateLimitFilter
from udml_stream.sync import PairingConfig
from udml_stream.transport import Publisher, Subscriber

log = logging.getLogger(__name__)

#: How long the loop waits for traffic: absence is declared at most this much after a deadline.
POLL_MS = 5


def run(name: str, spec: FusionNode) -> int:
    """Fuse until stopped."""
    stop = setup_process(name)
    runner = FusionRunner(spec.checkpoint, spec.device, spec.threads)
    runner.warm_up()
    service = FusionService(runner, PairingConfig(
        sample_rate=runner.sample_rate, window_samples=runner.window_samples,
        slop_ns=int(spec.slop_ms * 1e6), audio_lag_ns=int(spec.audio_lag_ms * 1e6),
        camera_deadline_ns=int(spec.camera_deadline_ms * 1e6),
        audio_deadline_ns=int(spec.audio_deadline_ms * 1e6), fallback_hz=spec.fallback_hz,
        other_max_age_ns=int(spec.other_max_age_ms * 1e6),
    ), stream=spec.stream, robots=spec.robots, streams=spec.streams,
        max_batch=spec.max_batch, batch_wait_ns=int(spec.batch_wait_ms * 1e6),
        freeze_ns=int(spec.freeze_ms * 1e6), auto_orient=spec.auto_orient,
        set_aside_late=spec.set_aside_late)
    # One line per reason every few seconds, however fast bad messages come; the filter on the
    # transport's logger also tallies its decode errors by reason for the heartbeat.
    limiter = RateLimitFilter()
    for lg in (Subscriber.__module__, service_module.__name__, __name__):
        logging.getLogger(lg).addFilter(limiter)
    internal_errors = 0
    # A deep receive queue: audio keeps queueing in ZeroMQ while a sample is being fused.
    # No latest-only draining in the transport: it would keep the newest *decoded* frame of a
    # batch, which may be one the edge then rejects (a peer could starve the camera that way);
    # the pairer keeps the newest *admitted* frame instead (counted as frames_superseded).
    with Subscriber(spec.subscribe, topics=service.topics, hwm=5000 * len(service.lanes)
                    ) as sub, \
            Publisher(spec.endpoint, bind=spec.bind) as pub:
        beat = Beater(pub, name, spec.heartbeat_s)
        log.info("fusing %s%s from %s on %s",
                 " + ".join(f"{st.name}={st.topic}" for st in service.streams),
                 f" of {len(spec.robots)} robots" if spec.robots else "", spec.subscribe,
                 pub.endpoint)
        while not stop.is_set():
            try:
                for msg in sub.receive(timeout_ms=POLL_MS):
                    service.add(msg, time.monotonic_ns())
                for result in service.results(time.monotonic_ns(),
                                              time.time_ns() - time.monotonic_ns()):
                    pub.publish(result)
            except Exception as err:  # last resort: a bug must cost one sample, not the node
                internal_errors += 1
                log.exception("internal error, sample dropped: %s", type(err).__name__)
            now = time.monotonic_ns()
            changed = service.liveness_changed(now)
            if not (changed or beat.due()):
                continue  # counters are built only for a heartbeat that goes out
            stats = sub.stats
            decode_reasons = {f"rejected.{r}": n for r, n in sorted(limiter.seen.items())
                              if r in DECODE_REASONS}
            beat.tick({**service.counters(now), "decode_errors": sub.total_decode_errors,
                       **decode_reasons, "internal_errors": internal_errors,
                       "frames_dropped_stale": sum(st.dropped_stale for st in stats.values())},
                      state="check" if service.findings else "ok", force=changed)
    log.info("stopped after %d results", service.seq)
    return 0
