"""Program: supervise every node of a launch file with a live status table."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from udml_stream.launch.config import load_launch
from udml_stream.launch.monitor import Monitor
from udml_stream.launch.supervisor import CRASH_LOOP_AFTER, Supervisor
from udml_stream.transport.security import configure

log = logging.getLogger(__name__)


def render(sup: Supervisor, mon: Monitor) -> Group:
    """The status view: nodes, streams, and the latest fusion result."""
    nodes = Table(title="nodes")
    for col in ("node", "state", "restarts", "last error", "heartbeat"):
        nodes.add_column(col)
    now = time.monotonic()
    for name, n in sup.nodes.items():
        hb = mon.heartbeats.get(name)
        state = n.state(now)
        failing = n.gave_up or n.streak >= CRASH_LOOP_AFTER
        nodes.add_row(name, f"[red]{state}[/red]" if failing else state, str(n.restarts),
                      Text(n.last_error or "-", style="red" if failing else ""),
                      " ".join(f"{k}={v}" for k, v in hb.counters.items()) if hb else "-")
    streams = Table(title="streams")
    for col in ("stream", "rate Hz", "drops", "latency p50 ms", "p99 ms"):
        streams.add_column(col)
    for row in mon.table_rows():
        streams.add_row(*row)
    r = mon.last_result
    if r is None:
        return Group(nodes, streams)
    label = r.class_names[r.pred] if 0 <= r.pred < len(r.class_names) else str(r.pred)
    fused = Table(title="fusion")
    fused.add_column("prediction")
    for m in r.weights:
        fused.add_column(f"w {m}")
    fused.add_row(f"{label} ({max(r.probs):.2f})",
                  *[f"{w:.2f}{'' if r.present.get(m) else ' (absent)'}"
                    for m, w in r.weights.items()])
    return Group(nodes, streams, fused)


def default_run_dir(path: Path) -> Path:
    """Where a launch keeps its node logs by default: ``runs/launch/<file stem>``."""
    return Path("runs") / "launch" / Path(path).stem


#: Exit status when a node ended failed, crash-looping or never started.
EXIT_NODES_FAILED = 1


def summary(failures: dict[str, str], total: int) -> str:
    """One line naming each failed node and why."""
    return (f"{len(failures)} of {total} nodes failed: "
            + "; ".join(f"{name}: {why}" for name, why in failures.items()))


def main(path: Path, duration_s: float = 0.0, run_dir: Path | None = None) -> int:
    """Run until Ctrl-C, SIGTERM or ``duration_s``; stop every node before returning. Node
    output goes to ``run_dir/logs/<node>.log`` (rotated). Returns 0, or ``EXIT_NODES_FAILED``
    (with a one-line summary) when any node ended failed, crash-looping or never started."""
    launch = load_launch(path)
    configure(launch.security.load())  # the status view subscribes like any other client
    log_dir = (run_dir or default_run_dir(path)) / "logs"
    sup = Supervisor(path, launch, log_dir=log_dir)
    log.info("node logs: %s", log_dir)
    endpoints = [n.endpoint for n in launch.nodes.values()] + launch.status_endpoints
    mon = Monitor(endpoints)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    sup.start()
    end = time.monotonic() + duration_s if duration_s > 0 else float("inf")
    try:
        with Live(render(sup, mon), refresh_per_second=4) as live:
            while not stop.is_set() and time.monotonic() < end:
                mon.pump(100)
                sup.poll()
                live.update(render(sup, mon))
    finally:
        failures = sup.failures(mon.heard_ns)  # judged as the nodes were, before stopping them
        codes = sup.stop()
        mon.close()
        log.info("stopped: %s", codes)
    if failures:
        log.error("%s (node logs: %s)", summary(failures, len(sup.nodes)), log_dir)
        return EXIT_NODES_FAILED
    return 0
