"""Faults that only show across time: a camera mounted turned, streams that keep disagreeing.

The switch rule judges each sample on its own, and two kinds of fault cannot be seen in one
sample:

* **A camera mounted on its side or upside down.** The pretext gate closes it frame by frame,
  so the answer leans on the other streams as it should. But nothing tells the operator that
  setting the camera node's ``rotate`` would give the camera back.
* **Two healthy-looking streams that name different classes.** Examples: a microphone that
  hears another talker, a frozen or torn frame buffer that holds an old scene, two robots'
  topics swapped. Per sample no rule can say which stream is wrong (docs/results/unseen.md:
  ``talker_swap``, ``stale_frame``). The conflict rule still answers; it just cannot know.

Over a window of recent results both faults are plain to see:

* **turned**: in the camera frames where the pretext head names a transform, one quarter turn
  is the clear majority. The head names one only where it is sure and where the σ̂ and
  confidence gates keep the stream open (``rules.udml``), so a covered or noisy camera does
  not count. The finding says which ``rotate`` to set. Cameras only: the microphone's
  transforms (time reversal, a flipped spectrum) are no fault a real device has, and echo
  reads like them.
* **disagree**: in the results where every present stream is open under all the gates, the
  streams' own heads name different classes at least half the time. On clean validation input
  this happens in 1% of such results.

A finding is logged when it begins and when it ends, with hysteresis so it does not flap. The
heartbeat carries it: ``diag.<modality>.rotate`` is the further clockwise turn to add to the
camera node's ``rotate`` (0: none);
``diag.disagree`` is 1 while that finding is active and ``diag.disagree_permille`` the current
share; ``diag.findings`` counts the active findings.
The thresholds and how often each finding fires are measured on the validation split
(``training/probe_diagnose.py``, docs/results/diagnose.md).
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass

from udml_stream.serve.runner import Prediction

log = logging.getLogger(__name__)

#: Results a finding is judged over (per robot), the fewest that must carry evidence for it to
#: begin, and the fewest that keep an active one (a camera judged on only a few frames
#: must not make it flap; none at all for a window ends it).
WINDOW, MIN_EVIDENCE, HOLD_EVIDENCE = 100, 20, 5
#: turned: the share of named frames one quarter turn needs to begin, and below which it ends.
TURN_BEGIN, TURN_END = 0.6, 0.4
#: disagree: the share of all-open results with a conflict to begin, and below which it ends.
DISAGREE_BEGIN, DISAGREE_END = 0.5, 0.3
#: A stream counts as open under the gates from this openness on.
OPEN = 0.5


@dataclass(frozen=True)
class Finding:
    """One fault seen across recent results."""

    code: str  # "turned.<modality>" or "disagree"
    text: str  # what was seen and what to check, for the log
    # turned: the further clockwise turn that sets the picture right, i.e. the camera node's
    # ``rotate`` becomes (its current value + this) mod 360: just this from rotate = 0.
    rotate: int = 0


class _Window:
    """The last ``size`` observations (hashable; None = no evidence) and their tally."""

    def __init__(self, size: int) -> None:
        self.items: deque[object] = deque(maxlen=size)
        self.tally: Counter[object] = Counter()

    def add(self, item: object) -> None:
        if len(self.items) == self.items.maxlen:
            self.tally[self.items[0]] -= 1
        self.items.append(item)
        self.tally[item] += 1

    def evidence(self) -> int:
        """Observations that carry evidence (not None)."""
        return len(self.items) - self.tally[None]


class Diagnostics:
    """Watches one robot's fusion results for a turned camera and for disagreeing streams."""

    def __init__(self, cameras: Mapping[str, str], topics: Mapping[str, str],
                 window: int = WINDOW) -> None:
        """``cameras``: camera modality → its topic; ``topics``: every modality → its topic
        (named in the findings)."""
        self.cameras, self.topics = dict(cameras), dict(topics)
        self._looks = {m: _Window(window) for m in self.cameras}
        self._conflicts = _Window(window)
        self.active: dict[str, Finding] = {}
        self.disagree_share = 0.0

    def add(self, pred: Prediction) -> list[tuple[str, Finding]]:
        """Take one result; returns the findings that began (``"begins"``) or ended
        (``"ends"``) with it."""
        for m, w in self._looks.items():
            k = pred.looks.get(m, -1)
            w.add(None if k < 0 else k)
        present = [m for m, p in pred.present.items() if p]
        open_all = len(present) >= 2 and bool(pred.health) and all(
            pred.health.get(m, 0.0) >= OPEN for m in present)
        # A result without two open streams is no evidence either way (and ages the window, so
        # a finding ends when a stream goes away for good).
        self._conflicts.add(pred.conflict if open_all else None)
        changes: list[tuple[str, Finding]] = []
        for code, finding in [*((f"turned.{m}", self._turned(m)) for m in self._looks),
                              ("disagree", self._disagree())]:
            was = self.active.get(code)
            if finding is not None and was is None:
                changes.append(("begins", finding))
                self.active[code] = finding
            elif finding is None and was is not None:
                changes.append(("ends", was))
                del self.active[code]
            elif finding is not None:
                self.active[code] = finding  # the share moved: the newest text
        return changes

    def _turned(self, m: str) -> Finding | None:
        w = self._looks[m]
        named = w.evidence()
        was = self.active.get(f"turned.{m}")
        # An active finding holds while its own turn keeps TURN_END of a few judged frames
        # (even if another turn edges past it); a new one needs TURN_BEGIN of MIN_EVIDENCE.
        k = was.rotate // 90 if was is not None else 0
        if not (k and named >= HOLD_EVIDENCE and w.tally[k] >= TURN_END * named):
            if named < MIN_EVIDENCE:
                return None
            count, k = max((w.tally[j], j) for j in (1, 2, 3))
            if count < TURN_BEGIN * named:
                return None
        share = w.tally[k] / named
        how = {1: "turned 90° counter-clockwise", 2: "upside down", 3: "turned 90° clockwise"}[k]
        return Finding(f"turned.{m}", (
            f"{self.cameras[m]} looks {how} in {share:.0%} of the last {named} frames whose "
            "orientation the model could judge, so the camera's weight is kept low; if it is "
            f"mounted so, turn it {90 * k}° further clockwise on its camera node (rotate = "
            f"{90 * k} if it is 0 now)"), rotate=90 * k)

    def _disagree(self) -> Finding | None:
        w = self._conflicts
        n = w.evidence()
        holding = "disagree" in self.active
        if n < (HOLD_EVIDENCE if holding else MIN_EVIDENCE):
            self.disagree_share = 0.0
            return None
        self.disagree_share = w.tally[True] / n
        if self.disagree_share < (DISAGREE_END if holding else DISAGREE_BEGIN):
            return None
        names = " and ".join(self.topics.values())
        return Finding("disagree", (
            f"{names} disagree in {self.disagree_share:.0%} of the last {n} results where each "
            "looks healthy (clean input: about 1%): one stream may carry another scene (a "
            "swapped or misnamed topic, a frozen or torn frame buffer, another talker at the "
            "microphone), and no single sample can tell which"))

    def forget(self, m: str) -> None:
        """Drop camera ``m``'s window and its finding, without reporting an end: its frames are
        turned from now on (``FusionService(auto_orient=True)``), so what the window holds no
        longer describes them."""
        self._looks[m] = _Window(self._looks[m].items.maxlen or WINDOW)
        self.active.pop(f"turned.{m}", None)

    def rotate_hint(self, m: str) -> int:
        """The further clockwise turn the active finding on camera ``m`` suggests (0: none)."""
        f = self.active.get(f"turned.{m}")
        return f.rotate if f is not None else 0

    def counters(self) -> dict[str, int]:
        """Heartbeat counters: ``diag.<camera>.rotate``, ``diag.disagree`` (1 while active),
        ``diag.disagree_permille`` and ``diag.findings``."""
        out = {f"diag.{m}.rotate": self.rotate_hint(m) for m in self.cameras}
        out["diag.disagree"] = int("disagree" in self.active)
        out["diag.disagree_permille"] = round(1000 * self.disagree_share)
        out["diag.findings"] = len(self.active)
        return out


def report(robot: str, changes: list[tuple[str, Finding]]) -> None:
    """Log findings that began (a warning) or ended, on this module's own logger: they are rare
    by construction, and a node's rate limiter, keyed by message template, must not fold one
    robot's finding into another's."""
    for change, f in changes:
        (log.warning if change == "begins" else log.info)(
            "%s%s %s: %s", f"{robot}: " if robot else "", f.code, change, f.text)
