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
  this happens in 1% of such results (2.7% at 30 frames/s). A microphone answers from its
  last second of audio, so at each change of scene it still names the old scene for a while,
  and the camera the new one. Given the results' capture times, a disagreement where one
  stream names what the other named within the first's window counts as none: it is
  explained by time, not by another scene.
* **lag**: a camera's own head keeps naming what another stream's named a few results earlier,
  the cross-correlation of their answers peaking at a delay of k ≥ 1 results rather than at 0.
  A frame buffer that hands out old frames, a clock offset between two nodes: the sync layer
  pairs by timestamp, so a camera whose stamps run late carries an older scene. Unlike
  ``disagree`` this names the stream at fault, and the disagree finding says so while both are
  active. A microphone's answer comes from a window of the last second, so in step it already
  follows the camera by up to that window (about half of it on average: 15 results at 30
  frames/s). It is judged late only with the results' capture times, and only by a delay beyond
  its window; the delay named then includes that usual trail, and it must be within MAX_LAG
  results (at 30 frames/s a microphone up to about 1.5 s late; above 64 results/s its window
  alone exceeds that, and a microphone is not judged late). A camera in step leads. For the
  same reason a camera is seen late against a microphone only once it is behind by more than
  that trail (a clock offset of a second, not a few frames); between two cameras there is none.

A finding is logged when it begins and when it ends, with hysteresis so it does not flap. The
heartbeat carries it: ``diag.<modality>.rotate`` is the further clockwise turn to add to the
camera node's ``rotate`` (0: none);
``diag.disagree`` is 1 while that finding is active and ``diag.disagree_permille`` the current
share; ``diag.<stream>.lag`` the results by which that stream follows another (0: none; a
microphone's only where the node knows its window);
``diag.findings`` counts the active findings.
The thresholds and how often each finding fires are measured on the validation split
(``training/probe_diagnose.py``, docs/results/diagnose.md).
"""

from __future__ import annotations

import logging
import math
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

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
#: when every frame counted; a run of 1s and 6s, which read alike upside down, did it). While
#: a finding is active every frame counts, so that frames set right end it.
TURN_BEGIN, TURN_END, TURN_SCENES = 0.6, 0.4, 3
#: disagree: the share of all-open results with a conflict to begin, and below which it ends.
DISAGREE_BEGIN, DISAGREE_END = 0.5, 0.3
#: disagree, with capture times: consecutive results whose streams are open alike and say the
#: same are one observation, taken again after this many seconds (a fault that holds still
#: still adds up: one observation a second).
EPISODE_S = 1.0
#: disagree, with capture times: the finding ends when no result was evidence for this long.
EVIDENCE_AGE_S = 10.0
#: A stream counts as open under the gates from this openness on.
OPEN = 0.5
#: lag: the longest delay looked for (results: about 2 s at 30 frames/s, so a camera a second
#: behind a microphone that itself trails by half its window is still seen); how far the
#: answers' agreement at the best delay must exceed their best agreement at delays that are no
#: lag (none for a camera, those inside its window for a microphone); and, among results
#: where the leading stream's answer changed within that delay, the share where the late stream
#: still names the old answer, to begin and below which an active finding ends.
MAX_LAG, LAG_MARGIN, LAG_BEGIN, LAG_END = 64, 0.1, 0.6, 0.4
#: lag: the results its agreement is measured over, and the fewest changes of the leading
#: stream's answer they must hold to begin a finding. At 30 frames/s a scene lasts dozens of
#: results, so 100 results hold two or three scenes, and a microphone is closed between words:
#: too little to tell a lag from chance (probe_diagnose.served_at_rate).
LAG_WINDOW, LAG_CHANGES = 300, 3
#: lag: delays whose agreement is within this of the best count as the peak.
LAG_PLATEAU = 0.05
#: The lag findings are judged every this many results (the arithmetic spans the whole window).
LAG_EVERY = 30


@dataclass(frozen=True)
class Finding:
    """One fault seen across recent results."""

    code: str  # "turned.<camera>", "disagree" or "lag.<camera>"
    text: str  # what was seen and what to check, for the log
    # turned: the further clockwise turn that sets the picture right, i.e. the camera node's
    # ``rotate`` becomes (its current value + this) mod 360: just this from rotate = 0.
    rotate: int = 0
    # lag: the results by which this camera's answers follow those of stream ``leader``.
    lag: int = 0
    leader: str = ""


class _Window:
    """The last ``size`` observations (hashable; None = no evidence) and their tally."""

    def __init__(self, size: int) -> None:
        self.items: deque[object] = deque(maxlen=size)
        self.tally: Counter[object] = Counter()

    def add(self, item: object) -> object:
        """Take ``item``; returns the observation it pushed out (None: none, or no evidence)."""
        out = None
        if len(self.items) == self.items.maxlen:
            out = self.items[0]
            self.tally[out] -= 1
        self.items.append(item)
        self.tally[item] += 1
        return out

    def evidence(self) -> int:
        """Observations that carry evidence (not None)."""
        return len(self.items) - self.tally[None]


class _Follow:
    """Does one stream name what another named k results earlier (k = 0..MAX_LAG)?

    Keeps each stream's answers over the last ``size + MAX_LAG`` results (−1 where it was not
    open) and, per ordered pair (a, b) and delay k, measures over the last ``size`` results:
    ``agree[k]``, the share of "a's answer now equals b's k results ago" among results where
    both were open then and now (the cross-correlation of the answers), and for k ≥ 1 the same
    among only those where b's answer changed in between (``kept``: did a keep the old one?),
    with the number of such results. Array arithmetic: a fleet's node runs this for every result
    of every robot."""

    def __init__(self, streams: list[str], size: int) -> None:
        self.streams = streams
        self.hist = np.full((len(streams), size + MAX_LAG), -1, dtype=np.int16)
        # The same for every present stream, open or not (what a sample's check reads).
        self.raw = np.full_like(self.hist, -1)
        # Each result's capture time (ns; -1: not given), for what a windowed stream may name.
        self.t_ns = np.full(self.hist.shape[1], -1, dtype=np.int64)
        self.count = 0
        # rows[k]: for each of the last `size` results, where the answer k results before it
        # sits in the chronological history.
        self.rows = MAX_LAG - np.arange(MAX_LAG + 1)[:, None] + np.arange(size)[None, :]

    def add(self, answers: list[int | None], is_open: list[bool], t_ns: int = -1) -> None:
        """One result's answers, in ``streams`` order (None: the stream was not present),
        whether each stream was open under the gates, and its capture time (-1: unknown)."""
        col = self.count % self.hist.shape[1]
        self.raw[:, col] = [-1 if x is None else x for x in answers]
        self.hist[:, col] = [-1 if x is None or not o else x for x, o in zip(answers, is_open,
                                                                              strict=True)]
        self.t_ns[col] = t_ns
        self.count += 1

    def period_ns(self) -> float:
        """The median time between consecutive results over the last ``size`` (ns; 0 when
        capture times are missing)."""
        n = min(self.count, len(self.rows[0]))
        if n < 2:
            return 0.0
        order = (np.arange(self.count - n, self.count)) % self.t_ns.shape[0]
        t = self.t_ns[order]
        return 0.0 if (t < 0).any() else float(np.median(np.diff(t)))

    def named_since(self, a: int, since_ns: int) -> np.ndarray:
        """Stream ``a``'s answers, where it was open, in the results captured after
        ``since_ns`` (the newest result included)."""
        return self.hist[a, self.t_ns > since_ns]

    def measure(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For streams ``a`` following ``b`` (indices), per k: ``agree`` share and its
        evidence, ``kept`` share and its evidence (shares 0 without evidence)."""
        order = (np.arange(self.hist.shape[1]) + self.count) % self.hist.shape[1]
        ha, hb = self.hist[a, order], self.hist[b, order]
        now, then, b_now = ha[self.rows[0]][None, :], hb[self.rows], hb[self.rows[0]][None, :]
        both = (now >= 0) & (then >= 0)
        same = both & (now == then)
        changed = both & (b_now >= 0) & (then != b_now)
        n_both, n_changed = both.sum(axis=1), changed.sum(axis=1)
        agree = same.sum(axis=1) / np.maximum(n_both, 1)
        kept = (same & changed).sum(axis=1) / np.maximum(n_changed, 1)
        return agree, n_both, kept, n_changed

    def changes(self, b: int) -> int:
        """How often stream ``b``'s answer changed from one result where it was open to the
        next such result, over the last ``size`` results (a microphone is closed between
        words, so its changes span a gap)."""
        order = (np.arange(self.hist.shape[1]) + self.count) % self.hist.shape[1]
        hb = self.hist[b, order][self.rows[0][0]:]
        hb = hb[hb >= 0]
        return int((hb[1:] != hb[:-1]).sum())


class Diagnostics:
    """Watches one robot's fusion results for a turned camera and for disagreeing streams."""

    def __init__(self, cameras: Mapping[str, str], topics: Mapping[str, str],
                 window: int = WINDOW, memory_s: Mapping[str, float] | None = None,
                 lag_window: int = LAG_WINDOW) -> None:
        """``cameras``: camera modality → its topic; ``topics``: every modality → its topic
        (named in the findings); ``memory_s``: the modalities whose answer comes from a window
        of past input (a microphone), with that window's length in seconds. Such a stream
        may still name what another stream showed within its window: with the results' capture
        times (``add``'s ``t_ns``), that disagreement is no evidence for ``disagree``."""
        self.cameras, self.topics = dict(cameras), dict(topics)
        self._memory_ns = {m: round(1e9 * v) for m, v in (memory_s or {}).items() if v > 0}
        # Per camera: (the turn the pretext head names, the camera's own class) of each new
        # frame it judged, None for frames it did not (they age the window); and the last pair.
        self._looks = {m: _Window(window) for m in self.cameras}
        self._last_look: dict[str, tuple[int, int | None]] = {}
        self._turn_tally: dict[str, Counter[int]] = {m: Counter() for m in self.cameras}
        self._conflicts = _Window(window)
        # The last observation taken into that window, and its capture time.
        self._seen: tuple[object, object] | None = None
        self._seen_ns = 0
        # The newest result's capture time, and that of the newest one that was evidence.
        self._now_ns: int | None = None
        self._evidence_ns: int | None = None
        # Each stream's recent answers where it was open, for the lag findings (judged every
        # LAG_EVERY results: between, the last judgement stands).
        self._follow = _Follow(list(self.topics), lag_window)
        self._lags: dict[str, Finding | None] = {}
        # The streams a lag finding is looked for on: cameras, and streams that answer from a
        # window of the past, beyond that window (with capture times only).
        self._judged_late = [m for m in self.topics if m in self.cameras or m in self._memory_ns]
        self.active: dict[str, Finding] = {}
        self.disagree_share = 0.0

    def add(self, pred: Prediction, t_ns: int | None = None) -> list[tuple[str, Finding]]:
        """Take one result (``t_ns``: the capture time of the sample, if known); returns the
        findings that began (``"begins"``) or ended (``"ends"``) with it."""
        for m, w in self._looks.items():
            look = (pred.looks.get(m, -1), pred.answers.get(m))
            # The same frame again counts once, unless a finding on this camera is active: then
            # every frame counts, so that frames set right end it however long they repeat.
            if (look[0] < 0 or look != self._last_look.get(m)
                    or f"turned.{m}" in self.active):
                new = look if look[0] >= 0 else None
                old = w.add(new)
                tally = self._turn_tally[m]
                if isinstance(old, tuple):
                    tally[old[0]] -= 1
                if new is not None:
                    tally[new[0]] += 1
            self._last_look[m] = look
        present = [m for m, p in pred.present.items() if p]
        open_all = len(present) >= 2 and bool(pred.health) and all(
            pred.health.get(m, 0.0) >= OPEN for m in present)
        self._follow.add([pred.answers.get(m) if pred.present.get(m, False) else None
                          for m in self.topics],
                         [pred.health.get(m, 0.0) >= OPEN for m in self.topics],
                         -1 if t_ns is None else t_ns)
        conflict = pred.conflict
        if conflict and open_all and t_ns is not None and self._memory_ns:
            conflict = not self._in_memory(pred, present, t_ns)
        # A result without two open streams is no evidence either way (and ages the window, so
        # a finding ends when a stream goes away for good).
        seen = (conflict if open_all else None,
                tuple(pred.answers.get(m) for m in present) if open_all else None)
        # With capture times, a run of results that say the same counts once per EPISODE_S:
        # at a real frame rate one scene gives dozens of results, and a window of them would
        # judge one or two scenes (a digit misread for a whole scene read as a disagreement).
        if (t_ns is None or seen != self._seen
                or t_ns - self._seen_ns >= round(EPISODE_S * 1e9)):
            self._conflicts.add(seen[0])
            self._seen, self._seen_ns = seen, t_ns if t_ns is not None else 0
        self._now_ns = t_ns
        if seen[0] is not None and t_ns is not None:
            self._evidence_ns = t_ns
        if self._follow.count % LAG_EVERY == 0:
            self._lags = {m: self._lag(m) for m in self._judged_late}
        changes: list[tuple[str, Finding]] = []
        lags = [(f"lag.{m}", self._lags.get(m)) for m in self._judged_late]
        for code, finding in [*((f"turned.{m}", self._turned(m)) for m in self._looks),
                              *lags, ("disagree", self._disagree())]:
            was = self.active.get(code)
            if finding is not None and was is None:
                changes.append(("begins", finding))
                self.active[code] = finding
            elif finding is None and was is not None:
                changes.append(("ends", was))
                del self.active[code]
            elif finding is not None and (finding.lag, finding.leader) != (was.lag, was.leader):
                # A late stream now follows another stream, or by another delay: a new finding.
                changes += [("ends", was), ("begins", finding)]
                self.active[code] = finding
            elif finding is not None:
                self.active[code] = finding  # the share moved: the newest text
        return changes

    def _in_memory(self, pred: Prediction, present: list[str], t_ns: int) -> bool:
        """Whether every two present streams that name different classes are explained by
        time: one of them answers from a window of past input, and the other named its class
        within that window. A microphone in step trails a camera at each change of scene by up
        to its window (about half of it on average): what it names then is no other scene."""
        names = self._follow.streams
        for i, a in enumerate(present):
            for b in present[i + 1:]:
                if pred.answers.get(a) == pred.answers.get(b):
                    continue
                if a not in names or b not in names:
                    return False  # a stream the diagnostics were not told of: no history
                if not any(
                        m in self._memory_ns and pred.answers.get(m) in self._follow.named_since(
                            names.index(o), t_ns - self._memory_ns[m])
                        for m, o in ((a, b), (b, a))):
                    return False
        return True

    def _turned(self, m: str) -> Finding | None:
        w = self._looks[m]
        named = w.evidence()
        per_turn = self._turn_tally[m]
        was = self.active.get(f"turned.{m}")
        # An active finding holds while its own turn keeps TURN_END of a few judged frames
        # (even if another turn edges past it); a new one needs TURN_BEGIN of MIN_EVIDENCE,
        # seen on at least TURN_SCENES different things.
        k = was.rotate // 90 if was is not None else 0
        if not (k and named >= HOLD_EVIDENCE and per_turn[k] >= TURN_END * named):
            if named < MIN_EVIDENCE:
                return None
            count, k = max((per_turn[j], j) for j in (1, 2, 3))
            if count < TURN_BEGIN * named:
                return None
            classes = {key[1] for key, c in w.tally.items()
                       if c and key is not None and key[0] == k and key[1] is not None}
            if len(classes) < TURN_SCENES:
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
        # A run without evidence is one observation a second, so a stream gone for good would
        # take the whole window's seconds to age it out: past EVIDENCE_AGE_S without evidence
        # the finding ends.
        aged = (self._now_ns is not None and self._evidence_ns is not None
                and self._now_ns - self._evidence_ns > round(EVIDENCE_AGE_S * 1e9))
        if aged or n < (HOLD_EVIDENCE if holding else MIN_EVIDENCE):
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
            "looks healthy (healthy streams: 1-3%): one stream may carry another scene (a "
            "swapped or misnamed topic, a frozen or torn frame buffer, another talker at the "
            f"microphone){which}"))

    def _lag(self, m: str) -> Finding | None:
        """Stream ``m`` follows another by k ≥ 1 results (beyond its window, for a stream
        that answers from one): the agreement of its answers with the other's k results
        earlier peaks at k, clearly above the best agreement at delays that are no lag, the
        other's answer changed at least ``LAG_CHANGES`` times, and where it changed within k
        results, ``m`` mostly kept the old one."""
        was = self.active.get(f"lag.{m}")
        names = self._follow.streams
        i = names.index(m)
        # The delays (results) that are no lag: none for a camera; for a stream answering from
        # a window of the past, every delay inside that window (it trails by up to it in step).
        inside = 1
        if m in self._memory_ns:
            period = self._follow.period_ns()
            if period <= 0:
                return None
            # k results back lie k·period before: inside while that is under the window (as
            # ``named_since`` reads it).
            inside = math.ceil(self._memory_ns[m] / period)
            if inside > MAX_LAG:
                return None
        best: tuple[float, int, str, float, int] | None = None
        for j, b in enumerate(names):
            if b == m:
                continue
            agree, n_agree, kept, n_kept = self._follow.measure(i, j)
            if was is not None and was.leader == b:
                k = was.lag
                if n_kept[k] >= HOLD_EVIDENCE and kept[k] >= LAG_END:
                    return self._lag_finding(m, b, k, float(kept[k]), int(n_kept[k]))
                continue
            agree = np.where(n_agree >= MIN_EVIDENCE, agree, 0.0)
            top = agree.max()
            if top - agree[:inside].max() < LAG_MARGIN or self._follow.changes(j) < LAG_CHANGES:
                continue
            # The delays at the peak (a microphone's varying trail makes it broad); of those,
            # the one where the camera most often kept the old answer, then the one with the
            # most such results (the first of equals: the shortest delay).
            ks = np.flatnonzero((agree >= top - LAG_PLATEAU) & (np.arange(len(agree)) >= inside)
                                & (n_kept >= MIN_EVIDENCE) & (kept >= LAG_BEGIN))
            if len(ks) == 0:
                continue
            k = int(ks[np.lexsort((-n_kept[ks], -kept[ks]))[0]])
            if best is None or agree[k] > best[0]:
                best = (float(agree[k]), k, b, float(kept[k]), int(n_kept[k]))
        return None if best is None else self._lag_finding(m, best[2], best[1], best[3],
                                                          best[4])

    def _lag_finding(self, m: str, b: str, k: int, kept: float, n: int) -> Finding:
        late, lead = self.topics[m], self.topics[b]
        return Finding(f"lag.{m}", (
            f"{late} follows {lead} by {k} result{'s' * (k > 1)}: after {lead}'s answer "
            f"changed, {late} still named the old one in {kept:.0%} of the last {n} such "
            "results. Check for a buffer handing out old data (frames or audio), or a clock "
            "offset between the two nodes (the sync layer pairs them by timestamp)"),
            lag=k, leader=b)

    def forget(self, m: str) -> None:
        """Drop camera ``m``'s window and its finding, without reporting an end: its frames are
        turned from now on (``FusionService(auto_orient=True)``), so what the window holds no
        longer describes them."""
        self._looks[m] = _Window(self._looks[m].items.maxlen or WINDOW)
        self._last_look.pop(m, None)
        self._turn_tally[m] = Counter()
        self.active.pop(f"turned.{m}", None)

    def rotate_hint(self, m: str) -> int:
        """The further clockwise turn the active finding on camera ``m`` suggests (0: none)."""
        f = self.active.get(f"turned.{m}")
        return f.rotate if f is not None else 0

    def stale(self, m: str) -> bool:
        """Whether stream ``m``'s answer in the latest result is what its lag finding predicts
        and nothing else does: the leader's answer from ``lag`` results before, which the leader
        has since changed. Only then does the lag explain a disagreement in that result. The
        finding rests on open streams; this check reads what each present stream said, open or
        not (a stream known late is stale whatever its gates say)."""
        f = self.active.get(f"lag.{m}")
        if f is None:
            return False
        names, h, n = self._follow.streams, self._follow.raw, self._follow.raw.shape[1]
        now, then = (self._follow.count - 1) % n, (self._follow.count - 1 - f.lag) % n
        mine, lead = h[names.index(m)], h[names.index(f.leader)]
        return bool(mine[now] >= 0 and mine[now] == lead[then] and lead[now] >= 0
                    and lead[now] != lead[then])

    def lag(self, m: str) -> int:
        """The results by which stream ``m`` follows another (0: no lag finding on it)."""
        f = self.active.get(f"lag.{m}")
        return f.lag if f is not None else 0

    def counters(self) -> dict[str, int]:
        """Heartbeat counters: ``diag.<camera>.rotate``, ``diag.<stream>.lag``,
        ``diag.disagree`` (1 while active), ``diag.disagree_permille`` and ``diag.findings``."""
        out = {f"diag.{m}.rotate": self.rotate_hint(m) for m in self.cameras}
        out.update({f"diag.{m}.lag": self.lag(m) for m in self._judged_late})
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
