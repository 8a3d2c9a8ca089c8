"""Start every node of a launch file as its own process, restart per policy, stop cleanly."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from udml_stream.launch.config import LaunchFile

log = logging.getLogger(__name__)


@dataclass
class NodeProcess:
    """One supervised node."""

    name: str
    cmd: list[str]
    policy: str
    delay_s: float
    max_restarts: int
    proc: subprocess.Popen | None = None
    restarts: int = 0
    exits: list[int] = field(default_factory=list)
    restart_at: float | None = None
    log_path: Path | None = None


class Supervisor:
    """Runs the nodes of ``launch`` (file ``path``) as child processes."""

    def __init__(self, path: Path, launch: LaunchFile, log_dir: Path | None = None,
                 overrides: dict[str, list[str]] | None = None) -> None:
        self.path = Path(path)
        self.nodes: dict[str, NodeProcess] = {}
        self.log_dir = log_dir
        for name, spec in launch.nodes.items():
            cmd = [sys.executable, "-m", "udml_stream_apps.nodes", str(self.path), name]
            for item in (overrides or {}).get(name, []):
                cmd += ["--set", item]
            self.nodes[name] = NodeProcess(name, cmd, spec.restart, spec.restart_delay_s,
                                           spec.max_restarts)

    def _spawn(self, n: NodeProcess) -> None:
        out = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            n.log_path = self.log_dir / f"{n.name}.log"
            out = open(n.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        # A session of its own: a terminal's Ctrl-C reaches only the launcher, which then stops
        # the nodes in order; each node also asks for SIGTERM if the launcher dies.
        n.proc = subprocess.Popen(n.cmd, stdout=out or subprocess.DEVNULL,
                                  stderr=out or subprocess.DEVNULL, start_new_session=True,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if out is not None:
            out.close()
        log.info("started %s (pid %d)", n.name, n.proc.pid)

    def start(self) -> None:
        """Start every node."""
        for n in self.nodes.values():
            self._spawn(n)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to one node (fault injection for demos and tests)."""
        n = self.nodes[name]
        if n.proc is not None and n.proc.poll() is None:
            n.proc.send_signal(sig)

    def poll(self) -> list[str]:
        """Reap exited nodes and restart them per policy; returns event lines."""
        events = []
        now = time.monotonic()
        for n in self.nodes.values():
            if n.proc is not None and (rc := n.proc.poll()) is not None:
                n.exits.append(rc)
                n.proc = None
                again = (n.policy == "always" or (n.policy == "on-failure" and rc != 0)) \
                    and n.restarts < n.max_restarts
                events.append(f"{n.name} exited with {rc}" + ("; restarting" if again else ""))
                if again:
                    n.restart_at = now + n.delay_s
            if n.proc is None and n.restart_at is not None and now >= n.restart_at:
                n.restart_at = None
                n.restarts += 1
                self._spawn(n)
                events.append(f"{n.name} restarted ({n.restarts})")
        for e in events:
            log.info("%s", e)
        return events

    def alive(self) -> dict[str, bool]:
        """Which nodes are running now."""
        return {name: n.proc is not None and n.proc.poll() is None for name, n in self.nodes.items()}

    def stop(self, timeout_s: float = 5.0) -> dict[str, int | None]:
        """SIGTERM every node, wait up to ``timeout_s``, SIGKILL what remains; returns exit codes."""
        for n in self.nodes.values():
            n.restart_at = None
            if n.proc is not None and n.proc.poll() is None:
                n.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        codes: dict[str, int | None] = {}
        for n in self.nodes.values():
            if n.proc is None:
                codes[n.name] = n.exits[-1] if n.exits else None
                continue
            try:
                codes[n.name] = n.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", n.name)
                n.proc.kill()
                codes[n.name] = n.proc.wait()
            n.proc = None
        return codes
