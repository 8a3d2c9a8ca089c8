"""A node's output, read from its pipe into a size-rotated file, remembering the last error line."""

from __future__ import annotations

import logging
import re
import threading
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import IO

# Lines that say why a node failed: a logging ERROR/CRITICAL line, the node runner's
# "error: ..." line, or the last line of a Python traceback ("ValueError: ...").
_ERROR_LINE = re.compile(r"\b(ERROR|CRITICAL)\b|^error:|^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b")
MAX_LINE_CHARS = 2000  # a runaway line is cut, so one message cannot fill the file alone


class NodeLog:
    """Copies every line a child writes to ``path`` (rotated at ``max_bytes``, ``backups`` kept;
    no file when ``path`` is None) on a daemon thread per process run."""

    def __init__(self, path: Path | None, max_bytes: int = 10_000_000, backups: int = 3) -> None:
        self.path = path
        self._handler: RotatingFileHandler | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._handler = RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups,
                                                encoding="utf-8")
            self._handler.setFormatter(logging.Formatter("%(message)s"))
        self.last_error: str | None = None
        self.lines = 0
        self._thread: threading.Thread | None = None

    def write(self, line: str) -> None:
        """Append one line (and remember it if it reports an error)."""
        line = line.rstrip("\r\n")[:MAX_LINE_CHARS]
        self.lines += 1
        if _ERROR_LINE.search(line):
            self.last_error = line
        if self._handler is not None:
            self._handler.handle(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))

    def follow(self, stream: IO[bytes]) -> None:
        """Read ``stream`` to its end on a background thread (one per process run)."""
        def pump() -> None:
            with stream:
                for raw in stream:
                    self.write(raw.decode("utf-8", errors="replace"))

        self._thread = threading.Thread(target=pump, name="node-log", daemon=True)
        self._thread.start()

    def drain(self, timeout_s: float = 1.0) -> None:
        """Wait (bounded) until the exited process's last lines are in."""
        if self._thread is not None:
            self._thread.join(timeout_s)

    def close(self) -> None:
        """Flush and close the file."""
        self.drain()
        if self._handler is not None:
            self._handler.close()
