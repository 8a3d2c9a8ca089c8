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
  not count. A frame counts once until the head's pick or the camera's class changes, and the
  frames read as turned must show at least three different classes, so one scene held for long
  does not add up to a finding. The finding says which ``rotate`` to set. Cameras only: the microphone's
  transforms (time reversal, a flipped spectrum) are no fault a real device has, and echo
  reads like them.
* **disagree**: in the results where every present stream is open under all the gates, the
  streams' own heads name different classes at least half the time. On clean validation input
  this happens in 1% of such results.
* **lag**: one stream's own head keeps naming what another's named a few results earlier, the
  cross-correlation of their answers peaking at a delay of k ≥ 1 results rather than at 0. A
  frame buffer that hands out old frames, a microphone node that buffers, a clock offset
  between two nodes: the sync layer pairs windows by their timestamps, so a stream whose
  timestamps run late carries an older scene. Unlike ``disagree`` this names the stream at
  fault, and the disagree finding says so while both are active.

A finding is logged when it begins and when it ends, with hysteresis so it does not flap. The
heartbeat carries it: ``diag.<modality>.rotate`` is the further clockwise turn to add to the
camera node's ``rotate`` (0: none);
``diag.disagree`` is 1 while that finding is active and ``diag.disagree_permille`` the current
share; ``diag.<modality>.lag`` the results by which that stream follows another (0: none);
``diag.findings`` counts the active findings.
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
#: turned: the share of named frames one quarter turn needs to begin, and below which it ends;
#: and the fewest distinct classes the camera's own head must have named on the frames read as
#: that turn. A robot looking at one scene for a long time sends the same frame again and
#: again, so a frame counts once until the pretext head's pick or the camera's class changes
#: (validation, each scene held for 10 results: 12% of the results flagged a turned camera
#: when every frame counted; a run of 1s and 6s, which read alike upside down, did it).
TURN_BEGIN, TURN_END, TURN_SCENES = 0.6, 0.4, 3
#: disagree: the share of all-open results with a conflict to begin, and below which it ends.
DISAGREE_BEGIN, DISAGREE_END = 0.5, 0.3
#: A stream counts as open under the gates from this openness on.
OPEN = 0.5
#: lag: the longest delay looked for (results), how far the answers' agreement at the best
#: delay must exceed their agreement at none, and, among results where the leading stream's
#: answer changed within that delay, the share where the lagging one still names the old
#: answer to begin and below which an active finding ends.
MAX_LAG, LAG_MARGIN, LAG_BEGIN, LAG_END = 8, 0.1, 0.6, 0.4


@dataclass(frozen=True)
class Finding:
    """One fault seen across recent results."""

    code: str  # "turned.<modality>", "disagree" or "lag.<modality>"
    text: str  # what was seen and what to check, for the log
    # turned: the further clockwise turn that sets the picture right, i.e. the camera node's
    # ``rotate`` becomes (its current value + this) mod 360: just this from rotate = 0.
    rotate: int = 0
    # lag: the results by which this stream's answers follow those of stream ``leader``.
    lag: int = 0
    leader: str = ""


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

    def share(self) -> float:
        """Share of the observations with evidence that are True (0 without any)."""
        n = self.evidence()
        return self.tally[True] / n if n else 0.0


class _Follow:
    """Does stream ``a`` name what stream ``b`` named k results earlier (k = 0..MAX_LAG)?

    Per k, a window of "a's answer now equals b's answer k results ago" over the results where
    both were open then and now (the cross-correlation of the answers), and for k ≥ 1 a window
    over only those where b's answer changed in between (did a keep the old one?)."""

    def __init__(self, size: int) -> None:
        self.agree = [_Window(size) for _ in range(MAX_LAG + 1)]
        self.kept_old = [_Window(size) for _ in range(MAX_LAG + 1)]

    def add(self, a_now: int | None, b_hist: deque[int | None]) -> None:
        """``a_now``: a's answer (None: not open); ``b_hist[-1 - k]``: b's k results ago."""
        b_now = b_hist[-1]
        for k in range(MAX_LAG + 1):
            b_then = b_hist[-1 - k] if k < len(b_hist) else None
            both = a_now is not None and b_then is not None
            self.agree[k].add(a_now == b_then if both else None)
            changed = both and k > 0 and b_now is not None and b_then != b_now
            self.kept_old[k].add(a_now == b_then if changed else None)


class Diagnostics:
    """Watches one robot's fusion results for a turned camera and for disagreeing streams."""

    def __init__(self, cameras: Mapping[str, str], topics: Mapping[str, str],
                 window: int = WINDOW) -> None:
        """``cameras``: camera modality → its topic; ``topics``: every modality → its topic
        (named in the findings)."""
        self.cameras, self.topics = dict(cameras), dict(topics)
        # Per camera: (the turn the pretext head names, the camera's own class) of each new
        # frame it judged, None for frames it did not (they age the window); and the last pair.
        self._looks = {m: _Window(window) for m in self.cameras}
        self._last_look: dict[str, tuple[int, int | None]] = {}
        self._conflicts = _Window(window)
        # Each stream's recent answers where it was open (None otherwise), and per ordered
        # pair (a, b) whether a follows b.
        self._answers: dict[str, deque[int | None]] = {
            m: deque(maxlen=MAX_LAG + 1) for m in self.topics}
        self._follow = {(a, b): _Follow(window) for a in self.topics for b in self.topics
                        if a != b}
        self.active: dict[str, Finding] = {}
        self.disagree_share = 0.0

    def add(self, pred: Prediction) -> list[tuple[str, Finding]]:
        """Take one result; returns the findings that began (``"begins"``) or ended
        (``"ends"``) with it."""
        for m, w in self._looks.items():
            look = (pred.looks.get(m, -1), pred.answers.get(m))
            if look[0] < 0:
                w.add(None)
            elif look != self._last_look.get(m):  # the same frame again counts once
                w.add(look)
            self._last_look[m] = look
        present = [m for m, p in pred.present.items() if p]
        open_all = len(present) >= 2 and bool(pred.health) and all(
            pred.health.get(m, 0.0) >= OPEN for m in present)
        # A result without two open streams is no evidence either way (and ages the window, so
        # a finding ends when a stream goes away for good).
        self._conflicts.add(pred.conflict if open_all else None)
        for m, hist in self._answers.items():
            ok = pred.present.get(m, False) and pred.health.get(m, 0.0) >= OPEN
            hist.append(pred.answers.get(m) if ok else None)
        for (a, b), f in self._follow.items():
            f.add(self._answers[a][-1], self._answers[b])
        changes: list[tuple[str, Finding]] = []
        lags = [(f"lag.{m}", self._lag(m)) for m in self.topics]
        for code, finding in [*((f"turned.{m}", self._turned(m)) for m in self._looks),
                              *lags, ("disagree", self._disagree())]:
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
        per_turn: Counter[int] = Counter()
        classes: dict[int, set[int | None]] = {}
        for (k_, cls), c in ((key, c) for key, c in w.tally.items() if key is not None and c):
            per_turn[k_] += c
            classes.setdefault(k_, set()).add(cls)
        was = self.active.get(f"turned.{m}")
        # An active finding holds while its own turn keeps TURN_END of a few judged frames
        # (even if another turn edges past it); a new one needs TURN_BEGIN of MIN_EVIDENCE,
        # seen on at least TURN_SCENES different things.
        k = was.rotate // 90 if was is not None else 0
        if not (k and named >= HOLD_EVIDENCE and per_turn[k] >= TURN_END * named):
            if named < MIN_EVIDENCE:
                return None
            count, k = max((per_turn[j], j) for j in (1, 2, 3))
            if count < TURN_BEGIN * named or len(classes.get(k, set()) - {None}) < TURN_SCENES:
                return None
        share = per_turn[k] / named
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
        late = [self.topics[m] for m in self.topics if f"lag.{m}" in self.active]
        which = (f"; {' and '.join(late)} runs late (see its lag finding), so the stale "
                 "answers are most likely its own" if late else ", and no single sample can "
                 "tell which")
        return Finding("disagree", (
            f"{names} disagree in {self.disagree_share:.0%} of the last {n} results where each "
            "looks healthy (clean input: about 1%): one stream may carry another scene (a "
            "swapped or misnamed topic, a frozen or torn frame buffer, another talker at the "
            f"microphone){which}"))

    def _lag(self, m: str) -> Finding | None:
        """Stream ``m`` follows another by k ≥ 1 results: the agreement of its answers with
        the other's k results earlier peaks at k, clearly above the agreement at no delay, and
        where the other's answer changed within k results, ``m`` mostly kept the old one."""
        was = self.active.get(f"lag.{m}")
        best: tuple[float, int, str] | None = None
        for (a, b), f in self._follow.items():
            if a != m:
                continue
            if was is not None and was.leader == b:
                w = f.kept_old[was.lag]
                if w.evidence() >= HOLD_EVIDENCE and w.share() >= LAG_END:
                    return self._lag_finding(m, b, was.lag, f)
                continue
            agree = [w.share() if w.evidence() >= MIN_EVIDENCE else 0.0 for w in f.agree]
            k = max(range(MAX_LAG + 1), key=lambda j: (agree[j], -j))
            old = f.kept_old[k]
            if (k and agree[k] - agree[0] >= LAG_MARGIN and old.evidence() >= MIN_EVIDENCE
                    and old.share() >= LAG_BEGIN and (best is None or agree[k] > best[0])):
                best = (agree[k], k, b)
        return None if best is None else self._lag_finding(m, best[2], best[1],
                                                          self._follow[(m, best[2])])

    def _lag_finding(self, m: str, b: str, k: int, f: _Follow) -> Finding:
        w, late, lead = f.kept_old[k], self.topics[m], self.topics[b]
        return Finding(f"lag.{m}", (
            f"{late} follows {lead} by {k} result{'s' * (k > 1)}: after {lead}'s answer "
            f"changed, {late} still named the old one in {w.share():.0%} of the "
            f"last {w.evidence()} such results. Check for a frame or audio buffer handing out "
            "old data, or a clock offset between the two nodes (the sync layer pairs windows by "
            "timestamp)"), lag=k, leader=b)

    def forget(self, m: str) -> None:
        """Drop camera ``m``'s window and its finding, without reporting an end: its frames are
        turned from now on (``FusionService(auto_orient=True)``), so what the window holds no
        longer describes them."""
        self._looks[m] = _Window(self._looks[m].items.maxlen or WINDOW)
        self._last_look.pop(m, None)
        self.active.pop(f"turned.{m}", None)

    def rotate_hint(self, m: str) -> int:
        """The further clockwise turn the active finding on camera ``m`` suggests (0: none)."""
        f = self.active.get(f"turned.{m}")
        return f.rotate if f is not None else 0

    def lag(self, m: str) -> int:
        """The results by which stream ``m`` follows another (0: no lag finding on it)."""
        f = self.active.get(f"lag.{m}")
        return f.lag if f is not None else 0

    def counters(self) -> dict[str, int]:
        """Heartbeat counters: ``diag.<camera>.rotate``, ``diag.<stream>.lag``,
        ``diag.disagree`` (1 while active), ``diag.disagree_permille`` and ``diag.findings``."""
        out = {f"diag.{m}.rotate": self.rotate_hint(m) for m in self.cameras}
        out.update({f"diag.{m}.lag": self.lag(m) for m in self.topics})
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
