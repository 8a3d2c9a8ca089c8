"""What every node process shares: signal handling, parent-death signal, logging, heartbeats."""

from __future__ import annotations

import ctypes
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable

from udml_stream.messages import Heartbeat
from udml_stream.sensors import Source, SourceError
from udml_stream.transport import Publisher

log = logging.getLogger(__name__)

HEARTBEAT_PREFIX = "hb."
EXIT_SOURCE_UNAVAILABLE = 3


def setup_process(name: str, level: int = logging.INFO) -> threading.Event:
    """Configure logging, ask Linux to SIGTERM us if the launcher dies (no orphans), and turn
    SIGINT/SIGTERM into a stop event the node loop polls."""
    logging.basicConfig(level=level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s [{name}] %(message)s", datefmt="%H:%M:%S")
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            log.debug("prctl unavailable; orphan protection off")
    stop = threading.Event()

    def _handler(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    return stop


class Beater:
    """Publishes a heartbeat on ``hb.<node>`` every ``period_s`` (call ``tick`` from the loop)."""

    def __init__(self, pub: Publisher, node: str, period_s: float) -> None:
        self.pub, self.node, self.period_s = pub, node, period_s
        self._seq = 0
        self._next = 0.0

    def due(self) -> bool:
        """Whether ``tick`` would send now (lets a loop skip building its counters)."""
        return time.monotonic() >= self._next

    def tick(self, counters: dict[str, int], state: str = "ok", force: bool = False) -> None:
        """Send a heartbeat if one is due (or ``force``)."""
        now = time.monotonic()
        if not force and now < self._next:
            return
        self._next = now + self.period_s
        self.pub.publish(Heartbeat(self.node, self._seq, time.monotonic_ns(),
                                   topic=HEARTBEAT_PREFIX + self.node, node=self.node,
                                   state=state, counters=counters))
        self._seq += 1


def publish_source(name: str, src: Source, endpoint: str, bind: bool, heartbeat_s: float,
                   stop: threading.Event, read_timeout_s: float,
                   counters: Callable[[], dict[str, int]]) -> int:
    """The loop of every capture node: open ``src`` (exit code 3 with its message if it cannot
    be opened), publish what it reads until ``stop`` or the end of a finite source, beat."""
    try:
        src.connect()
    except SourceError as err:
        log.error("%s", err)
        return EXIT_SOURCE_UNAVAILABLE
    with Publisher(endpoint, bind=bind) as pub:
        beat = Beater(pub, name, heartbeat_s)
        log.info("publishing on %s", pub.endpoint)
        try:
            while not stop.is_set() and not src.finished:
                msg = src.read(read_timeout_s)
                if msg is not None:
                    pub.publish(msg)
                beat.tick({"sent": pub.sent, **counters()})
        finally:
            beat.tick({"sent": pub.sent}, state="stopping", force=True)
            src.close()
    log.info("stopped after %d messages", pub.sent)
    return 0
