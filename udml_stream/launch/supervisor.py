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
from udml_stream.launch.nodelog import NodeLog

log = logging.getLogger(__name__)


#: Consecutive fast failures from which a node counts as crash-looping in the status view.
CRASH_LOOP_AFTER = 3


@dataclass
class NodeProcess:
    """One supervised node and its restart state."""

    name: str
    cmd: list[str]
    policy: str
    delay_s: float
    max_restarts: int
    max_delay_s: float = 30.0
    stable_s: float = 10.0
    proc: subprocess.Popen | None = None
    restarts: int = 0  # in total
    streak: int = 0  # restarts since the node last ran stably (drives backoff and the limit)
    exits: list[int] = field(default_factory=list)
    restart_at: float | None = None
    started_at: float = 0.0
    gave_up: bool = False
    output: NodeLog | None = None
    ran_ok: bool = False  # some run lasted ``stable_s`` or ended with status 0 on its own

    @property
    def log_path(self) -> Path | None:
        """The node's log file (None when logs are not kept)."""
        return self.output.path if self.output else None

    @property
    def last_error(self) -> str | None:
        """The newest error line the node wrote (a traceback's last line, an ERROR record)."""
        return self.output.last_error if self.output else None

    def backoff_s(self) -> float:
        """The delay before the next restart: ``delay_s`` doubled per failure in a row."""
        return min(self.delay_s * 2.0 ** self.streak, self.max_delay_s)

    def state(self, now: float) -> str:
        """running, restarting in …, crash loop, gave up, exited or stopped."""
        if self.proc is not None:
            return "running"
        if self.gave_up:
            return f"gave up after {self.streak} restarts in a row"
        if self.restart_at is not None:
            wait = f"restart in {max(0.0, self.restart_at - now):.1f} s"
            return f"crash loop ({self.streak}): {wait}" if self.streak >= CRASH_LOOP_AFTER else wait
        return f"exited ({self.exits[-1]})" if self.exits else "stopped"

    def failure(self, now: float, heard_since_start: bool = False) -> str | None:
        """Why this node counts as failed at the end of a launch (None when it does not): it
        gave up, ended on a failure (restart pending or not wanted), is crash-looping, or failed
        without ever starting (no run lasted ``stable_s`` or ended well, and the current one has
        not been heard from: ``heard_since_start``, a heartbeat since its last start). A node
        that failed and then ran again stably, or was heard from, has recovered."""
        failures = [rc for rc in self.exits if rc != 0]
        if not failures:
            return None
        why = f" ({self.last_error})" if self.last_error else ""
        if self.gave_up:
            return f"gave up after {self.streak} restarts in a row{why}"
        runs = f"{len(failures)} failed run{'s' if len(failures) > 1 else ''}"
        loop = f"crash loop: {runs}, the last exited with {failures[-1]}{why}"
        if self.proc is not None:  # running again after a failure
            if heard_since_start or now - self.started_at >= self.stable_s:
                return None
            if self.streak >= CRASH_LOOP_AFTER:
                return loop
            return None if self.ran_ok else (
                f"never started: {runs}, the last exited with {failures[-1]}{why}")
        if self.exits[-1] == 0:
            return None  # its last run ended well
        return loop if self.streak >= CRASH_LOOP_AFTER else f"exited with {self.exits[-1]}{why}"


class Supervisor:
    """Runs the nodes of ``launch`` (file ``path``) as child processes; each node's output goes to
    ``log_dir/<node>.log`` (rotated at ``log_max_bytes``, ``log_backups`` kept)."""

    def __init__(self, path: Path, launch: LaunchFile, log_dir: Path | None = None,
                 overrides: dict[str, list[str]] | None = None, log_max_bytes: int = 10_000_000,
                 log_backups: int = 3) -> None:
        self.path = Path(path)
        self.nodes: dict[str, NodeProcess] = {}
        self.log_dir = log_dir
        for name, spec in launch.nodes.items():
            cmd = [sys.executable, "-m", "udml_stream_apps.nodes", str(self.path), name]
            for item in (overrides or {}).get(name, []):
                cmd += ["--set", item]
            self.nodes[name] = NodeProcess(
                name, cmd, spec.restart, spec.restart_delay_s, spec.max_restarts,
                spec.restart_max_delay_s, spec.stable_after_s,
                output=NodeLog(log_dir / f"{name}.log" if log_dir is not None else None,
                               log_max_bytes, log_backups))

    def _spawn(self, n: NodeProcess) -> None:
        # A session of its own: a terminal's Ctrl-C reaches only the launcher, which then stops
        # the nodes in order; each node also asks for SIGTERM if the launcher dies. Output comes
        # through a pipe so the launcher can rotate the file and keep the last error line.
        n.proc = subprocess.Popen(n.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        n.started_at = time.monotonic()
        if n.output is not None and n.proc.stdout is not None:
            n.output.follow(n.proc.stdout)
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

    def poll(self, restart: bool = True) -> list[str]:
        """Reap exited nodes and restart them per policy, with exponential backoff that resets
        after a stable run (``restart`` False: reap and schedule only); returns event lines."""
        events = []
        now = time.monotonic()
        for n in self.nodes.values():
            if n.proc is not None and (rc := n.proc.poll()) is not None:
                n.exits.append(rc)
                n.proc = None
                if n.output is not None:
                    n.output.drain()
                if now - n.started_at >= n.stable_s:
                    n.streak = 0  # it ran long enough: this failure starts a fresh backoff
                    n.ran_ok = True
                n.ran_ok = n.ran_ok or rc == 0
                wanted = n.policy == "always" or (n.policy == "on-failure" and rc != 0)
                again = wanted and n.streak < n.max_restarts
                n.gave_up = wanted and not again
                why = f": {n.last_error}" if rc != 0 and n.last_error else ""
                if again:
                    n.restart_at = now + n.backoff_s()
                    events.append(f"{n.name} exited with {rc}{why}; restarting in "
                                  f"{n.backoff_s():.1f} s")
                else:
                    events.append(f"{n.name} exited with {rc}{why}" + (
                        f"; gave up after {n.streak} restarts in a row" if n.gave_up else ""))
            if restart and n.proc is None and n.restart_at is not None and now >= n.restart_at:
                n.restart_at = None
                n.restarts += 1
                n.streak += 1
                self._spawn(n)
                events.append(f"{n.name} restarted ({n.restarts})")
        for e in events:
            log.info("%s", e)
        return events

    def failures(self, heard_ns: dict[str, int] | None = None) -> dict[str, str]:
        """Node → why it counts as failed now (``NodeProcess.failure``); ``heard_ns`` maps a node
        to the ``time.monotonic_ns()`` of its latest heartbeat. Call before ``stop``."""
        self.poll(restart=False)  # reap what exited since the last poll, start nothing
        now = time.monotonic()
        out = {}
        for name, n in self.nodes.items():
            heard = (heard_ns or {}).get(name, -1) >= n.started_at * 1e9
            if (why := n.failure(now, heard)) is not None:
                out[name] = why
        return out

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
        for n in self.nodes.values():
            if n.output is not None:
                n.output.close()
        return codes
