"""Rate-limited warnings that always name their reason.

A peer flooding a node with malformed messages must not flood its log too: 20,000 bad messages a
second used to write 20,000 warning lines a second. ``RateLimitFilter`` lets through at most one
record per (logger, level, reason) every ``period_s``; the next one that passes says how many
were held back. A record's reason is the ``reason`` attribute of its first argument that has one
(``DecodeError``, an edge rejection), else its message template. Every record is tallied by
reason in ``seen``, passed or not, so a node can report per-reason counts from it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

#: Distinct keys remembered at most; reasons are a small fixed set, this only bounds memory if
#: some caller logs with ever-new templates.
MAX_KEYS = 1024


def record_reason(record: logging.LogRecord) -> str:
    """The reason a record reports: the first argument's ``reason``, else the message template."""
    args = record.args if isinstance(record.args, tuple) else ()
    for a in args:
        reason = getattr(a, "reason", None)
        if isinstance(reason, str) and reason:
            return reason
    return str(record.msg)


class RateLimitFilter(logging.Filter):
    """At most one record per (logger, level, reason) every ``period_s`` seconds."""

    def __init__(self, period_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.period_s, self.clock = period_s, clock
        self.seen: Counter[str] = Counter()
        self._next: dict[tuple[str, int, str], float] = {}
        self._held: Counter[tuple[str, int, str]] = Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        """Tally the record; let it through if its key has not passed within ``period_s``."""
        reason = record_reason(record)
        self.seen[reason] += 1
        key = (record.name, record.levelno, reason)
        now = self.clock()
        if now < self._next.get(key, float("-inf")):
            self._held[key] += 1
            return False
        if len(self._next) >= MAX_KEYS and key not in self._next:
            self._next.clear()
            self._held.clear()
        self._next[key] = now + self.period_s
        held = self._held.pop(key, 0)
        if held:
            # Format now: appending to the template could clash with its own % placeholders.
            record.msg = (f"{record.getMessage()} (+{held} more like this in the last "
                          f"{self.period_s:g} s)")
            record.args = None
        return True
