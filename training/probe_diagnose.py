"""Program: how often the fusion node's diagnostics fire, and on what (``serve.diagnose``).

The node watches its recent results for a camera that looks turned and for streams that keep
disagreeing although each looks healthy. This program streams every sample of a split, in
order, through the shipped model and one ``Diagnostics``, as a robot would send them, once per
condition. For each finding it reports the share of results during which the finding was
active, counted from the ``WINDOW``-th result on, when a full window can be judged.

* **Must stay silent:** clean input (natural variation), both streams degraded at once (a random
  family and level per sample and stream), every training family at levels 3, 6, 9 and 11.
* **Must fire, with the right ``rotate``:** the camera turned 90° either way or upside down.
* **Must name a late camera, with the right delay:** the camera carrying the scene of 1 to 3
  results before (scenes lasting 1, 4 or 10 results); silent on clean input with such scenes.
  A microphone one result late is not named here (without capture times the node cannot tell
  it from the trail its window gives it; it raises ``disagree``).
* **At 30 frames/s** (``served_at_rate``): scenes of 1.5 s as a live robot sends them, in step,
  a camera or the microphone 1.2 s late, or another talker at the microphone.
* **Held-out degradations** (``udml eval-unseen``), every severity. The pretext head never saw
  them (the 180° ``rotate`` aside), so this is where we learn what the findings catch.

Thresholds were chosen on the validation split; report on test::

    python -m training.probe_diagnose checkpoints/default --split test --out docs/results/diagnose
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from udml_stream_apps.training.probe_conflict import condition_batches, families_of

from udml_stream import corrupt
from udml_stream.data.avdigits import Split
from udml_stream.data.batching import Batch
from udml_stream.evaluate import unseen
from udml_stream.evaluate.field import _batch, _natural_rng
from udml_stream.model import checkpoint
from udml_stream.model.fusion import FusionNet
from udml_stream.serve import diagnose
from udml_stream.serve.runner import Prediction
from udml_stream.train.trainer import load_data_for_checkpoint, to_torch

log = logging.getLogger(__name__)

TRAINED_LEVELS = (3, 6, 9, 11)
#: The camera's frame turned as a camera mounted so sends it, and the ``rotate`` that undoes it.
TURNS = {"camera turned 90° ccw": (cv2.ROTATE_90_COUNTERCLOCKWISE, 90),
         "camera upside down": (cv2.ROTATE_180, 180),
         "camera turned 90° cw": (cv2.ROTATE_90_CLOCKWISE, 270)}


#: A stream that runs late: (results each scene lasts, the late stream's kind, by how many
#: results, the delay the camera's lag finding should name: 0 for none). A kind of None: every
#: stream in step (must stay silent). A microphone one result late is not named
#: (``serve.diagnose``: in step it already follows the camera by up to its window, and these
#: results carry no capture times to measure that window in results).
LATE = {"clean, scenes of 4 results": (4, None, 0, 0),
        "clean, scenes of 10 results": (10, None, 0, 0),
        "camera 1 result late": (1, "image", 1, 1),
        "camera 2 results late, scenes of 4": (4, "image", 2, 2),
        "camera 3 results late, scenes of 10": (10, "image", 3, 3),
        "microphone 1 result late": (1, "audio", 1, 0)}


def _late(hold: int, late: str | None, by: int) -> Callable[[Batch, np.random.Generator], None]:
    """Each scene (a sample) held for ``hold`` results; stream ``late`` shows the scene of
    ``by`` results before (within the batch: its first rows keep the batch's first scene)."""
    def edit(b: Batch, rng: np.random.Generator) -> None:
        n = len(b.labels)
        now = (np.arange(n) // hold) * hold
        then = (np.maximum(np.arange(n) - by, 0) // hold) * hold
        for m, x in b.inputs.items():
            b.inputs[m] = x[then if m == late else now]
        b.labels = b.labels[now]
    return edit


def _turn(code: int) -> Callable[[Batch, np.random.Generator], None]:
    def edit(b: Batch, rng: np.random.Generator) -> None:
        b.inputs["image"] = np.stack([cv2.rotate(np.ascontiguousarray(f), code)
                                      for f in b.inputs["image"]])
    return edit


@torch.no_grad()
def predictions(model: FusionNet, split: Split, seed: int, tag: str = "",
                levels: dict[str, int] | None = None, kinds: dict[str, str] | None = None,
                edit: Callable[..., None] | None = None, mixture: bool = False
                ) -> Iterator[Prediction]:
    """The served answer for each sample of ``split``, in order, as the node's runner gives it
    (what ``Diagnostics`` reads: presence, the gates' openness, the conflict flag, the pretext
    head's pick), under one condition (the natural draws and corruption seeds of ``run_pass``)."""
    model.eval()
    mods = tuple(split.tables)
    for b in condition_batches(split, seed, tag, levels, kinds, edit, mixture):
        inputs, present, lvt, _ = to_torch(b, "cpu")
        out = model(inputs, present, lvt)
        aux = {k: v.numpy() for k, v in out.aux.items()
               if isinstance(v, torch.Tensor) and v.ndim == 1}
        pres = {m: out.present[m].numpy() for m in mods}
        ans = {m: out.unimodal_logits[m].argmax(1).numpy() for m in mods}
        for i in range(len(b.labels)):
            on = [m for m in mods if pres[m][i]]
            yield Prediction(
                probs=[], pred=-1, weights={}, sigma_hat={},
                present={m: bool(pres[m][i]) for m in mods}, preprocess_ns=0, inference_ns=0,
                conflict=bool(aux["conflict"][i]),
                health={m: float(aux[f"gate/{m}"][i]) for m in on},
                looks={m: int(aux[f"looks/{m}"][i]) for m in on},
                answers={m: int(ans[m][i]) for m in on})


def watch(preds: Iterator[Prediction], cameras: dict[str, str], topics: dict[str, str]
          ) -> dict[str, Any]:
    """Stream ``preds`` through one ``Diagnostics``: per finding, the share of results (from
    the ``WINDOW``-th on) during which it was active, the result at which it first began, for a
    turned camera the ``rotate`` it suggested most often, and for a late stream the delay."""
    d = diagnose.Diagnostics(cameras, topics)
    active: dict[str, int] = {}
    first: dict[str, int] = {}
    rotates: dict[str, list[int]] = {m: [] for m in cameras}
    lags: dict[str, list[int]] = {m: [] for m in topics}
    judged = 0
    for i, p in enumerate(preds):
        for change, f in d.add(p):
            if change == "begins":
                first.setdefault(f.code, i + 1)
        if i + 1 < diagnose.WINDOW:
            continue
        judged += 1
        for code in d.active:
            active[code] = active.get(code, 0) + 1
        for m in cameras:
            if d.rotate_hint(m):
                rotates[m].append(d.rotate_hint(m))
        for m in topics:
            if d.lag(m):
                lags[m].append(d.lag(m))
    out: dict[str, Any] = {"results": judged, "active": {k: v / max(judged, 1)
                                                         for k, v in active.items()},
                           "first": first}
    out["rotate"] = {m: int(np.bincount(r).argmax()) for m, r in rotates.items() if r}
    out["lag"] = {m: int(np.bincount(r).argmax()) for m, r in lags.items() if r}
    return out


def _service(ckpt: Path, **options: bool) -> tuple[Any, str, str]:
    """A one-robot ``FusionService`` on ``ckpt`` (CPU, one thread) with ``options``, and its
    camera and microphone modalities."""
    from udml_stream.serve import FusionRunner, FusionService
    from udml_stream.sync import PairingConfig

    runner = FusionRunner(ckpt, "cpu", 1)
    cam = next(m for m, k in runner.kinds.items() if k == "image")
    mic = next(m for m, k in runner.kinds.items() if k == "audio")
    svc = FusionService(runner, PairingConfig(sample_rate=runner.sample_rate,
                                              window_samples=runner.window_samples), **options)
    return svc, cam, mic


def served(ckpt: Path, split: Split, seed: int, turn: Callable[[np.ndarray], np.ndarray] | None,
           auto_orient: bool, late: str | None = None, set_aside: bool = True
           ) -> dict[str, Any]:
    """The split streamed through a ``FusionService`` as sensors send it (a second of speech in
    20 ms chunks, then the frame, ``turn`` applied to every frame; ``late``: ``"camera"`` or
    ``"mic"`` carries the sample before): fused accuracy and the camera's share of the
    multipliers over the results from the ``WINDOW``-th on, the turn ``auto_orient`` ended up
    applying, and with ``set_aside`` (``set_aside_late``) the results answered without a late
    stream."""
    from udml_stream.messages import AudioChunk, CameraFrame

    svc, cam, mic = _service(ckpt, auto_orient=auto_orient, set_aside_late=set_aside)
    ms, t0, res, labels = 1_000_000, 5_000_000_000, [], []
    prev: dict[str, np.ndarray] = {}
    mods = tuple(split.tables)
    for start in range(0, len(split), 250):
        rows = np.arange(start, min(start + 250, len(split)))
        lv = {m: np.full(len(rows), corrupt.CLEAN, np.int64) for m in mods}
        b = _batch(split, rows, lv, _natural_rng(seed, start),
                   np.random.default_rng([seed, start]), None, (), None)
        for i in range(len(b.labels)):
            t = t0 + int(rows[i]) * 1000 * ms
            wave = np.nan_to_num(b.inputs[mic][i]).astype(np.float32)
            img = np.clip(b.inputs[cam][i], 0, 255).astype(np.uint8)
            now = {"mic": wave, "camera": img}
            if late is not None:  # the late stream carries the sample before (the first: its own)
                now[late], prev[late] = prev.get(late, now[late]), now[late]
            wave, img = now["mic"], now["camera"]
            for j in range(50):
                svc.add(AudioChunk("mic", int(rows[i]) * 50 + j, t + j * 20 * ms,
                                   samples=wave[j * 320:(j + 1) * 320]), t + j * 20 * ms)
            svc.add(CameraFrame("camera", int(rows[i]), t + 1000 * ms,
                                image=turn(img) if turn else img), t + 1000 * ms)
            res += svc.results(t + 1200 * ms)
            labels.append(int(b.labels[i]))
    tail = slice(diagnose.WINDOW, None)
    share = [r.weights[cam] / max(sum(r.weights.values()), 1e-9) for r in res[tail]]
    return {"accuracy": float(np.mean([r.pred == y for r, y in zip(res[tail], labels[tail],
                                                                   strict=True)])),
            "camera_share": float(np.mean(share)),
            "applied": 90 * svc.lanes[""].turns.get(cam, 0),
            "set_aside": sum(svc.lanes[""].set_aside.values())}


#: The real-rate conditions: (the camera's delay, the microphone's delay) in seconds. A 1.5 s
#: scene at 30 frames/s, as in the demo; the microphone's answer trails the camera's by about
#: half its one-second window when in step.
RATE_FPS, RATE_SEGMENT_S, RATE_SCENES = 30.0, 1.5, 200
#: The third entry: the microphone hears another talker, naming the scenes' digits in another
#: order (a disagreement that no delay explains).
AT_RATE = {"in step": (0.0, 0.0, False), "camera 0.2 s late": (0.2, 0.0, False),
           "camera 1.2 s late": (1.2, 0.0, False), "microphone 1.2 s late": (0.0, 1.2, False),
           "microphone hears another talker": (0.0, 0.0, True)}


def served_at_rate(ckpt: Path, split: Split, seed: int, camera_delay_s: float,
                   mic_delay_s: float, set_aside: bool = True, mic_other: bool = False
                   ) -> dict[str, Any]:
    """The first ``RATE_SCENES`` samples of ``split`` as a live robot sends them: each a scene
    of ``RATE_SEGMENT_S`` (its second of speech, then a −60 dBFS room floor; its frame at
    ``RATE_FPS``), audio in 20 ms chunks, each stream showing the scene of its delay before
    (``mic_other``: the microphone hears the scenes' speech in a shuffled order instead).
    Fused accuracy over the results whose audio window lies inside one scene (the demo's rule:
    from 1 s after the scene's start) from the 20th scene on, and the share of all results
    from then on during which each finding was active."""
    from udml_stream.messages import AudioChunk, CameraFrame

    svc, cam, mic = _service(ckpt, set_aside_late=set_aside)
    sr, n = svc.runner.sample_rate, min(RATE_SCENES, len(split))
    rows = np.arange(n)
    b = _batch(split, rows, {m: np.full(n, corrupt.CLEAN, np.int64) for m in split.tables},
               _natural_rng(seed, 0), np.random.default_rng([seed, 0]), None, (), None)
    seg = round(RATE_SEGMENT_S * sr)
    floor = np.random.default_rng([seed, 1]).normal(0, 10 ** (-60 / 20), (n, seg))
    audio = floor.astype(np.float32)
    speech = np.nan_to_num(b.inputs[mic]).astype(np.float32)
    if mic_other:
        speech = speech[np.random.default_rng([seed, 2]).permutation(n)]
    audio[:, :speech.shape[1]] = speech
    audio = audio.reshape(-1)
    frames = np.clip(b.inputs[cam], 0, 255).astype(np.uint8)
    ns, t0 = 1_000_000_000, 5_000_000_000
    chunk, d_mic = 320, round(mic_delay_s * sr)
    events: list[tuple[int, int, int]] = []  # (time, 0 audio / 1 frame, index)
    events += [(t0 + j * chunk * ns // sr, 0, j) for j in range(len(audio) // chunk)]
    events += [(t0 + round(f * ns / RATE_FPS), 1, f)
               for f in range(int(n * RATE_SEGMENT_S * RATE_FPS))]
    res: list[tuple[Any, frozenset[str]]] = []  # each result, and the findings active after it
    for t, kind, j in sorted(events):
        if kind == 0:  # the microphone hears what was said mic_delay_s before
            lo = j * chunk - d_mic
            x = audio[max(lo, 0):max(lo + chunk, 0)]
            x = np.concatenate([np.zeros(chunk - len(x), np.float32), x])
            svc.add(AudioChunk("mic", j, t, samples=x), t)
        else:
            shown = max(0.0, (t - t0) / ns - camera_delay_s)
            svc.add(CameraFrame("camera", j, t, image=frames[min(int(shown // RATE_SEGMENT_S),
                                                                n - 1)]), t)
        res += [(r, frozenset(svc.lanes[""].diag.active)) for r in svc.results(t)]
    scored, active, judged = [], Counter[str](), 0
    for r, findings in res:
        at = (r.capture_ns - t0) / ns
        k = int(at // RATE_SEGMENT_S)
        if k < 20 or k >= n:
            continue
        judged += 1
        active.update(findings)
        if at - k * RATE_SEGMENT_S >= 1.0:
            scored.append(r.pred == int(b.labels[k]))
    c = svc.counters(0)
    return {"accuracy": float(np.mean(scored)), "scored": len(scored), "results": len(res),
            "active": {f: v / max(judged, 1) for f, v in sorted(active.items())},
            "lag": c.get(f"diag.{cam}.lag", 0), "mic_lag": c.get(f"diag.{mic}.lag", 0),
            "set_aside": sum(v for k, v in c.items() if k.endswith(".set_aside")),
            "disagree_permille": c.get("diag.disagree_permille", 0)}


def main(ckpt: Path, out: Path | None, split_name: str = "val", seed: int = 0,
         cache_dir: Path = Path("data_cache")) -> dict[str, Any]:
    """Every condition's findings, and the summary (JSON-ready; ``out``: .json and .md)."""
    torch.set_num_threads(1)
    model, meta = checkpoint.load(ckpt, torch.device("cpu"))
    split = load_data_for_checkpoint(meta, cache_dir).splits[split_name]
    mods = tuple(split.tables)
    if not getattr(model.rule, "reads_pooled", False):
        raise SystemExit(f"{ckpt}: its rule has no gates, so the node has no diagnostics")
    kinds = {m: model.cfg.preprocess[m]["kind"] for m in mods}
    cameras = {m: m for m in mods if kinds[m] == "image"}
    topics = {m: m for m in mods}
    conds: dict[str, dict[str, Any]] = {}

    def run(group: str, name: str, **kw: Any) -> None:
        r = watch(predictions(model, split, seed, tag=name, **kw), cameras, topics)
        conds[name] = {"group": group, **r}
        log.info("%-40s %s", name, " ".join(f"{k} {100 * v:.0f}%" for k, v in
                                             r["active"].items()) or "-")

    run("silent", "clean")
    run("silent", "mixture", mixture=True)
    for m in mods:
        for fam in families_of(split, m):
            for lv in TRAINED_LEVELS:
                run("silent", f"trained {m}/{fam}@{lv}", levels={m: lv}, kinds={m: fam})
    cam = next(iter(cameras))
    first_of = {k: next(m for m in mods if kinds[m] == {"image": "image", "audio": "logmel"}[k])
                for k in ("image", "audio")}
    for name, (code, _) in TURNS.items():
        run("turned", name, edit=_turn(code))
    for name, (hold, late, by, _) in LATE.items():
        run("late" if late else "silent", name,
            edit=_late(hold, first_of[late] if late else None, by))
    for deg in unseen.degradations():
        for s in deg.severities:
            run("held-out", f"held-out {deg.modality}/{deg.name}@{s}", edit=unseen.edit(deg, s))
    serving = {}
    turns: list[tuple[str, Callable[[np.ndarray], np.ndarray] | None]] = [("upright", None)]
    turns += [(n, lambda f, c=code: cv2.rotate(f, c)) for n, (code, _) in TURNS.items()]
    for name, fn in turns:
        for auto in (False, True):
            serving[f"{name}, auto_orient {'on' if auto else 'off'}"] = r = served(
                ckpt, split, seed, fn, auto)
            log.info("served %-40s %s", name, r)
    for late in ("camera", "mic"):  # the microphone's lag is not named: nothing set aside
        for on in (False, True):
            serving[f"{late} 1 sample late, set_aside_late {'on' if on else 'off'}"] = r = served(
                ckpt, split, seed, None, False, late, on)
            log.info("served %s late %s %s", late, on, r)
    at_rate = {}
    for name, (dc, dm, other) in AT_RATE.items():
        for on in ((False, True) if dc else (True,)):
            key = f"{name}, set_aside_late {'on' if on else 'off'}"
            at_rate[key] = r = served_at_rate(ckpt, split, seed, dc, dm, on, other)
            log.info("at %g fps %-40s %s", RATE_FPS, key, r)
    silent = [c for c in conds.values() if c["group"] == "silent"]
    summary = {
        "false_alarm_max": max((v for c in silent for v in c["active"].values()), default=0.0),
        "turned_detected": {n: {"active": conds[n]["active"].get(f"turned.{cam}", 0.0),
                                "rotate": conds[n]["rotate"].get(cam), "want": r,
                                "first": conds[n]["first"].get(f"turned.{cam}")}
                            for n, (_, r) in TURNS.items()},
        "late_detected": {n: {"stream": first_of[late],
                              "active": conds[n]["active"].get(f"lag.{first_of[late]}", 0.0),
                              "lag": conds[n]["lag"].get(first_of[late], 0), "want": want,
                              "first": conds[n]["first"].get(f"lag.{first_of[late]}"),
                              "others": {k: v for k, v in conds[n]["active"].items()
                                         if k != f"lag.{first_of[late]}"}}
                          for n, (_, late, _, want) in LATE.items() if late},
        "held_out_firing": {n: c["active"] for n, c in conds.items()
                            if c["group"] == "held-out" and c["active"]},
    }
    result = {"checkpoint": str(ckpt), "split": split_name, "seed": seed, "n": len(split),
              "out": str(out),
              "window": diagnose.WINDOW, "summary": summary, "served": serving,
              "served_at_rate": at_rate,
              "conditions": conds}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(render(result))
    return result


def _shares(active: dict[str, float], digits: int) -> str:
    """Findings and the share of results each was active, for a table cell ("none": none)."""
    return ", ".join(f"{k} {100 * v:.{digits}f}%" for k, v in active.items()) or "none"


def render(result: dict[str, Any]) -> str:
    """The report: false alarms, turned cameras, and which held-out degradations fire."""
    s = result["summary"]
    lines = [f"# Diagnostics across time: `{result['checkpoint']}`", "",
             f"Command: `python -m training.probe_diagnose {result['checkpoint']} --split "
             f"{result['split']} --out {result['out']}`. The {result['n']} samples of the "
             f"{result['split']} split stream in order through the model and one "
             "`serve.diagnose.Diagnostics`, once per condition. A share is the fraction of "
             f"results, from the {result['window']}th on, during which a finding was active. "
             "The thresholds were chosen on the validation split.", "",
             "## Must stay silent", "",
             "Clean input (also with each scene held for 4 and for 10 results), both streams "
             "degraded at once, and every training family at levels "
             f"3, 6, 9 and 11: the largest share of results with any finding active is "
             f"**{100 * s['false_alarm_max']:.1f}%**.", "",
             "## A turned camera", "",
             "| camera | turned active | rotate suggested | right | first result flagged |",
             "| --- | --- | --- | --- | --- |"]
    for n, d in s["turned_detected"].items():
        lines.append(f"| {n} | {100 * d['active']:.1f}% | {d['rotate']} | "
                     f"{'yes' if d['rotate'] == d['want'] else 'no'} | {d['first']} |")
    lines += ["", "## A stream that runs late", "",
              "Each scene (a sample) held for a number of results, one stream carrying the "
              "scene of a few results before (a buffer handing out old data, a clock offset). "
              "Results here carry no capture times, so only cameras are judged late (delay 0 "
              "below: none named, as it should be for a microphone; at 30 frames/s below, a "
              "microphone is judged beyond its window).",
              "", "| condition | lag active | delay named | right | first result flagged | "
              "other findings |", "| --- | --- | --- | --- | --- | --- |"]
    for n, d in s.get("late_detected", {}).items():
        lines.append(f"| {n} | {100 * d['active']:.1f}% | {d['lag']} | "
                     f"{'yes' if d['lag'] == d['want'] else 'no'} | {d['first']} | "
                     f"{_shares(d['others'], 0)} |")
    lines += ["", "## Served: a turned camera or a late stream, with and without acting on it", "",
              "The same split through the fusion service as sensors send it (a second of speech "
              "in 20 ms chunks, then the frame), every frame turned as named (`auto_orient`), "
              "or one stream carrying the sample before (`set_aside_late`: while a stream is "
              "found late, a sample where its answer is the stale one is answered without it; "
              "at one result per second a microphone carrying the sample before is a full "
              "window late, so it is judged too); "
              "accuracy and "
              f"the camera's share over the results from the {result['window']}th on.", "",
              "| condition | fused accuracy | camera share | turn applied | answered without "
              "the late stream |", "| --- | --- | --- | --- | --- |"]
    for n, r in result.get("served", {}).items():
        lines.append(f"| {n} | {100 * r['accuracy']:.1f}% | {r['camera_share']:.2f} | "
                     f"{r['applied']}° | {r.get('set_aside', 0)} |")
    lines += ["", f"## Served at {RATE_FPS:g} frames/s", "",
              f"The first {RATE_SCENES} samples as a live robot sends them: each a scene of "
              f"{RATE_SEGMENT_S:g} s (its second of speech, then a −60 dBFS room floor; its "
              "frame at every camera frame), audio in 20 ms chunks, a stream delayed by showing "
              "the scene of that many seconds before (another talker: the microphone hears the "
              "scenes' speech in a shuffled order). Accuracy over the results whose audio "
              "window lies inside one scene (from 1 s after its start), from the 20th scene on; "
              "a finding's share is of all results from then on. Unlike the tables above, the "
              "microphone's answer here trails the camera's by about half its window when in "
              "step.", "",
              "| condition | fused accuracy | scored | findings active (share of results) | "
              "set aside |", "| --- | --- | --- | --- | --- |"]
    for n, r in result.get("served_at_rate", {}).items():
        lines.append(f"| {n} | {100 * r['accuracy']:.1f}% | {r['scored']} | "
                     f"{_shares(r['active'], 1)} | {r['set_aside']} |")
    lines += ["", "## Held-out degradations where a finding fires", "",
              "| degradation | findings (share of results active) |", "| --- | --- |"]
    for n, act in s["held_out_firing"].items():
        lines.append(f"| {n.removeprefix('held-out ')} | {_shares(act, 0)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--split", default="val", choices=("val", "test"))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--cache-dir", type=Path, default=Path("data_cache"))
    a = ap.parse_args()
    print(json.dumps(main(a.checkpoint, a.out, a.split, cache_dir=a.cache_dir)["summary"],
                     indent=1))
