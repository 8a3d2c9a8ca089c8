"""Both streams broken at once: the camera and the microphone degraded together.

The field and held-out sweeps (``evaluate.field``, ``evaluate.unseen``) break one stream and
leave the other clean, and ask whether the fused answer stays above dropping the broken one.
On a robot both can go bad together (a dusty lens in a loud hall, a shaking robot whose
microphone hears its own motors). With no clean stream left the promise becomes: the fused
answer is at least as good as the better of the two streams alone (each scored with the other
marked absent), within 1 pt; above it wherever the two degraded streams still complement each
other.

Two grids, every sample degraded in both streams:

* **corruption families** (``corrupt``'s, those the model trained on unless its config names
  fewer), camera family × microphone family at the same level, levels ``TRAINED_LEVELS``; level
  11 (pure noise) is left out: both streams are at chance there and the comparison measures
  nothing;
* **held-out degradations** (``evaluate.unseen``), camera × microphone at the same severity,
  severities ``HELD_OUT_SEVERITIES``, without the two that swap in another digit (a stale frame,
  another talker): two confident witnesses naming different digits, which the single-stream
  report covers and no fusion rule can settle from one sample.

Each stream's damage is drawn from a generator of its own, keyed by the seed, the batch and
that stream's condition alone, so a stream alone sees exactly the damage it has in the fused
pass, and one alone pass serves every pair that shares the stream's condition. Any third stream
(a second camera) is marked absent in every pass: a clean witness would make the comparison
meaningless.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from udml_stream import corrupt, modalities
from udml_stream.data.avdigits import Split
from udml_stream.data.batching import Batch
from udml_stream.errors import UdmlError
from udml_stream.evaluate.conditions import weight_share
from udml_stream.evaluate.field import corrupt_stream, run_pass
from udml_stream.evaluate.unseen import DEGRADATIONS, VS_DROPPED, Degradation, edit
from udml_stream.model.fusion import FusionNet

log = logging.getLogger(__name__)

PAIR = ("image", "audio")
TRAINED_LEVELS = (5, 8)
HELD_OUT_SEVERITIES = (3, 5)
#: Held-out degradations that put another digit on the stream (left out: see the module doc).
SWAPS = ("stale_frame", "talker_swap")
#: The promise: fused − the better stream alone ≥ this (accuracy), as against dropping a stream.
VS_BEST = VS_DROPPED

#: An in-place change of a batch, as ``run_pass`` takes it (``edit(batch, rng)``); also one
#: stream's damage, given that stream's own generator.
Edit = Callable[[Batch, np.random.Generator], None]


def _stream_edit(m: str, seed: int, condition: str, damage: Edit) -> Edit:
    """An edit that damages stream ``m`` (where the batch holds it) with a generator keyed by
    ``seed``, the batch's first row and ``condition``: never by the other stream's damage."""

    def edit_stream(b: Batch, _rng: np.random.Generator) -> None:
        if m in b.inputs:
            damage(b, np.random.default_rng(
                [seed, int(b.rows[0]), zlib.crc32(f"joint/{m}/{condition}".encode())]))

    return edit_stream


def _both(edits: Sequence[Edit]) -> Edit:
    def edit_all(b: Batch, rng: np.random.Generator) -> None:
        for e in edits:
            e(b, rng)

    return edit_all


class _Grid:
    """Scores cells of one grid; each stream-alone pass is run once per stream condition."""

    def __init__(self, model: FusionNet, split: Split, seed: int) -> None:
        missing = [m for m in PAIR if m not in split.tables]
        if missing:
            raise UdmlError(f"the joint sweep needs a camera 'image' and a microphone 'audio' "
                            f"stream; this data has {sorted(split.tables)} (missing {missing})")
        self.model, self.split, self.seed = model, split, seed
        self.extra = tuple(m for m in split.tables if m not in PAIR)
        self._alone: dict[tuple[str, str], float] = {}

    def alone(self, m: str, condition: str, e: Edit) -> float:
        key = (m, condition)
        if key not in self._alone:
            others = tuple(k for k in self.split.tables if k != m)
            p = run_pass(self.model, self.split, self.seed, edit=e, missing=others,
                         tag=f"joint/{m}/{condition}")
            self._alone[key] = float(p.correct.mean())
        return self._alone[key]

    def cell(self, conditions: Mapping[str, tuple[str, Edit]]) -> dict[str, Any]:
        """Fused accuracy, each of the pair alone and the camera's share of the effective
        multiplier, with each stream under its (condition name, damage)."""
        edits = {m: _stream_edit(m, self.seed, c, d) for m, (c, d) in conditions.items()}
        tag = "joint/" + "/".join(c for c, _ in conditions.values())
        fused = run_pass(self.model, self.split, self.seed, edit=_both(list(edits.values())),
                         missing=self.extra, tag=tag)
        row: dict[str, Any] = {"fused": float(fused.correct.mean()),
                               "share_image": weight_share(fused.multipliers, "image")}
        for m in PAIR:
            row[f"{m}_alone"] = self.alone(m, conditions[m][0], edits[m])
        row["best_alone"] = max(row["image_alone"], row["audio_alone"])
        row["vs_best"] = row["fused"] - row["best_alone"]
        return row


def _family_damage(m: str, key: str, family: str, level: int) -> Edit:
    def damage(b: Batch, rng: np.random.Generator) -> None:
        corrupt_stream(b, m, key, family, np.full(len(b.labels), level, np.int64), rng)

    return damage


def trained_grid(model: FusionNet, split: Split, seed: int,
                 levels: Sequence[int] = TRAINED_LEVELS,
                 families: Mapping[str, Sequence[str]] | None = None) -> list[dict[str, Any]]:
    """Every camera family × microphone family at each level of ``levels`` (both streams at
    that level). ``families`` narrows the families (default: all of each stream's kind)."""
    grid = _Grid(model, split, seed)
    keys = {m: modalities.kind_of(m, split.kinds).corrupt for m in PAIR}
    fams = {m: tuple(families[m]) if families and m in families else corrupt.kinds_for(keys[m])
            for m in PAIR}
    rows = []
    for lv in levels:
        for fi in fams["image"]:
            for fa in fams["audio"]:
                row = grid.cell({m: (f"{f}@{lv}", _family_damage(m, keys[m], f, lv))
                                 for m, f in (("image", fi), ("audio", fa))})
                rows.append({"image": fi, "audio": fa, "level": lv, **row})
        log.info("families at level %d: %d pairs", lv, len(fams["image"]) * len(fams["audio"]))
    return rows


def held_out_grid(model: FusionNet, split: Split, seed: int,
                  severities: Sequence[int] = HELD_OUT_SEVERITIES,
                  degs: Sequence[Degradation] | None = None) -> list[dict[str, Any]]:
    """Every held-out camera degradation × microphone degradation (without ``SWAPS``) at each
    severity of ``severities``. ``degs`` narrows them (default: ``unseen.DEGRADATIONS``)."""
    grid = _Grid(model, split, seed)
    pool = [d for d in (DEGRADATIONS if degs is None else degs) if d.name not in SWAPS]
    by = {m: [d for d in pool if d.modality == m] for m in PAIR}
    rows = []
    for s in severities:
        for di in by["image"]:
            for da in by["audio"]:
                row = grid.cell({d.modality: (f"unseen/{d.name}@{s}", edit(d, s))
                                 for d in (di, da)})
                rows.append({"image": di.name, "audio": da.name, "severity": s, **row})
        log.info("held-out degradations at severity %d: %d pairs", s,
                 len(by["image"]) * len(by["audio"]))
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means, the worst cell against the better stream alone, and the cells below the promise
    (``pairs`` 0 and nothing else for an empty grid)."""
    if not rows:
        return {"pairs": 0, "below_promise": []}
    worst = min(rows, key=lambda r: r["vs_best"])
    # Accuracies are multiples of 1/n: exactly −1 pt must not count as a break (float noise).
    below = [r for r in rows if r["vs_best"] < VS_BEST - 1e-9]
    return {"pairs": len(rows), "mean_fused": float(np.mean([r["fused"] for r in rows])),
            "mean_best_alone": float(np.mean([r["best_alone"] for r in rows])),
            "above_best": float(np.mean([r["vs_best"] > 0 for r in rows])),
            "worst": worst, "below_promise": sorted(below, key=lambda r: r["vs_best"])}


def joint_sweep(model: FusionNet, split: Split, seed: int,
                seen: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """Both grids and their summaries (JSON-ready). ``seen``: the families the model trained
    on per stream (default: every family); the family grid is restricted to them."""
    fams = None if seen is None else {m: tuple(seen[m]) for m in PAIR if m in seen}
    trained = trained_grid(model, split, seed, families=fams)
    held = held_out_grid(model, split, seed)
    return {"trained": {"levels": list(TRAINED_LEVELS), "rows": trained,
                        "summary": summarise(trained)},
            "held_out": {"severities": list(HELD_OUT_SEVERITIES), "left_out": list(SWAPS),
                         "rows": held, "summary": summarise(held)},
            "absent_throughout": [m for m in split.tables if m not in PAIR]}


# ---- the report ----

def _pt(x: float) -> str:
    return f"{100 * x:+.1f}"


def _where(r: dict[str, Any]) -> str:
    at = f"L{r['level']}" if "level" in r else f"S{r['severity']}"
    return f"image/{r['image']} + audio/{r['audio']} @ {at}"


def _matrix(rows: list[dict[str, Any]], key: str, value: int) -> list[str]:
    sel = [r for r in rows if r[key] == value]
    ims = list(dict.fromkeys(r["image"] for r in sel))
    aus = list(dict.fromkeys(r["audio"] for r in sel))
    cell = {(r["image"], r["audio"]): r for r in sel}
    lines = ["| camera \\ microphone | " + " | ".join(aus) + " |",
             "| --- |" + " --- |" * len(aus)]
    for i in ims:
        cells = []
        for a in aus:
            r = cell[(i, a)]
            mark = " **✗**" if r["vs_best"] < VS_BEST - 1e-9 else ""
            cells.append(f"{_pt(r['vs_best'])}{mark}")
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    return lines


def _section(title: str, grid: dict[str, Any], key: str, values: list[int]) -> list[str]:
    s = grid["summary"]
    out = [f"## {title}", ""]
    if not s.get("pairs"):
        return [*out, "No pairs scored.", ""]
    w = s["worst"]
    out += [f"- {s['pairs']} pairs; mean fused {100 * s['mean_fused']:.2f}% against the better "
            f"stream alone {100 * s['mean_best_alone']:.2f}%; fused above the better stream "
            f"alone in {100 * s['above_best']:.0f}% of the pairs",
            f"- worst: {_where(w)}: fused {100 * w['fused']:.1f}%, camera alone "
            f"{100 * w['image_alone']:.1f}%, microphone alone {100 * w['audio_alone']:.1f}% "
            f"({_pt(w['vs_best'])} pt)",
            f"- below the promise (fused < the better stream alone − 1 pt): "
            f"{len(s['below_promise'])}" + (": " + "; ".join(
                f"{_where(r)} {_pt(r['vs_best'])} pt (fused {100 * r['fused']:.1f}%, alone "
                f"{100 * r['image_alone']:.1f} / {100 * r['audio_alone']:.1f}%)"
                for r in s["below_promise"]) if s["below_promise"] else ""), ""]
    for v in values:
        label = f"level {v}" if key == "level" else f"severity {v}"
        out += [f"### {label}: fused − the better stream alone (pt)", ""]
        out += [*_matrix(grid["rows"], key, v), ""]
    return out


def render_markdown(result: dict[str, Any], command: str) -> str:
    """The report: per grid, the summary and one matrix per level or severity."""
    absent = result.get("absent_throughout") or []
    head = [f"# Both streams broken at once: `{result['checkpoint']}`", "",
            f"Command: `{command}`. {result['n_test']} {result['split']} samples (the "
            f"`eval-field` split, seed {result['seed']}), every one degraded in the camera and "
            "in the microphone at once, paired by class only. Each cell: fused accuracy minus "
            "the better of the two streams alone (each scored with the other marked absent, "
            "under the same damage: each stream's damage comes from a generator of its own); "
            "**✗** where it is more than 1 pt below. Held-out grid without "
            f"{' and '.join(result['held_out']['left_out'])} (another digit on the stream: "
            "`docs/results/unseen.md`)."
            + (f" Marked absent in every pass: {', '.join(absent)}." if absent else "")
            + " Module: `udml_stream.evaluate.joint`.", ""]
    return "\n".join(
        head + _section("Trained families, both streams at one level", result["trained"],
                        "level", result["trained"]["levels"])
        + _section("Held-out degradations, both streams at one severity", result["held_out"],
                   "severity", result["held_out"]["severities"]))


def plot(result: dict[str, Any], path: Path) -> Path | None:
    """Heat maps of fused − the better stream alone, one per level and severity that has
    cells; nothing is written (``None``) when no grid has any."""
    panels = [(grid, key, v) for grid, key, vals in (
        ("trained", "level", result["trained"]["levels"]),
        ("held_out", "severity", result["held_out"]["severities"]))
        for v in vals if any(r[key] == v for r in result[grid]["rows"])]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5.5), squeeze=False)
    for ax, (grid, key, v) in zip(axes[0], panels, strict=True):
        sel = [r for r in result[grid]["rows"] if r[key] == v]
        ims = list(dict.fromkeys(r["image"] for r in sel))
        aus = list(dict.fromkeys(r["audio"] for r in sel))
        cell = {(r["image"], r["audio"]): 100 * r["vs_best"] for r in sel}
        a = np.array([[cell[(i, u)] for u in aus] for i in ims])
        im = ax.imshow(a, cmap="RdBu", vmin=-10, vmax=10)
        ax.set_xticks(range(len(aus)), aus, rotation=90, fontsize=7)
        ax.set_yticks(range(len(ims)), ims, fontsize=7)
        ax.set_title(f"{grid.replace('_', '-')} {key} {v}: fused − better alone (pt)",
                     fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
