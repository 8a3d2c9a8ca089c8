"""Program: does a candidate checkpoint replace the shipped one? The replacement rule as code.

The rule (written in session 16 before any candidate was scored under it; docs/method.md, "The
replacement rule") compares two checkpoints on a validation draw that nothing was chosen on:
the validation split under corruption and natural-variation seed 1, through the held-out
degradations (``udml eval-unseen``), the probe set (``training.probe_fresh``, its first 500
samples) and the trained families at levels 2-11 (``udml eval-field``'s family sweep). Both
models score the very same batches (``Paired``), and one bootstrap over samples, paired across
the two models and shared by the sweeps (2,000 resamples, generator seed 0), decides:

(a) for each stream, the 90% interval of the candidate's mean fused accuracy over its held-out
    degradations minus the incumbent's does not lie wholly below 0, and for at least one stream
    it lies wholly above 0;
(b) the 5th percentile of the candidate's count of degradations more than 1 pt below dropping
    their stream (held-out and probe set) minus the incumbent's is at most 0;
(c) no trained family is more than 1 pt below dropping its stream at any level.

    python -m training.compare_checkpoints checkpoints/default CANDIDATE \\
        --out docs/results/compare_NAME

writes ``compare_NAME.json`` and ``.md``. The sweeps run without their stream-alone passes
(``alone=False``: about half their passes, which the rule never reads; every other number is the
same): 12.5 minutes for two three-member ensembles on two CPU cores that other jobs shared
(session 20), against about 20 with them.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import Tensor, nn
from udml_stream_apps.training import probe_fresh
from udml_stream_apps.training.field_eval import seen_families

from udml_stream.data.avdigits import Split
from udml_stream.evaluate import field, unseen
from udml_stream.model import checkpoint
from udml_stream.train.config import DataSection
from udml_stream.train.trainer import load_data_for_checkpoint, load_data_section

log = logging.getLogger(__name__)

#: The rule's fixed choices (docs/method.md).
SEED, RESAMPLES, BOOT_SEED, PROBE_LIMIT = 1, 2000, 0, 500
#: The promise: fused − dropped ≥ −1 pt (``unseen.VS_DROPPED``; float noise at exactly −1 pt
#: is not a break, as there).
VS_DROPPED = unseen.VS_DROPPED - 1e-9
MODELS = ("incumbent", "candidate")


class Paired(nn.Module):
    """Two models on the same inputs: answers as the incumbent, and keeps both models'
    predicted classes of every batch (``preds``) for ``recording``."""

    def __init__(self, incumbent: nn.Module, candidate: nn.Module) -> None:
        super().__init__()
        self.incumbent, self.candidate = incumbent, candidate
        self.preds: dict[str, list[np.ndarray]] = {k: [] for k in MODELS}

    def forward(self, inputs: Mapping[str, Tensor], present: Mapping[str, Tensor],
                levels: Mapping[str, Tensor] | None = None) -> Any:
        """The incumbent's output; both models' argmax kept."""
        cand = self.candidate(inputs, present, levels)
        out = self.incumbent(inputs, present, levels)
        self.preds["candidate"].append(cand.logits.argmax(1).cpu().numpy())
        self.preds["incumbent"].append(out.logits.argmax(1).cpu().numpy())
        return out


#: Per pass (its corruption tag and the streams marked absent): each model's per-sample
#: correctness, ``{(tag, missing): {"incumbent": bool[n], "candidate": bool[n]}}``.
Passes = dict[tuple[str, tuple[str, ...]], dict[str, np.ndarray]]


class _Recorder:
    """Stores both models' correctness per pass (``field.PassObserver``)."""

    def __init__(self, paired: Paired, passes: Passes) -> None:
        self.paired, self.passes = paired, passes

    def pass_started(self) -> None:
        for v in self.paired.preds.values():
            v.clear()

    def pass_ended(self, split: Split, tag: str, missing: tuple[str, ...]) -> None:
        key = (tag, tuple(missing))
        got = {k: np.concatenate(self.paired.preds[k]) == split.labels for k in MODELS}
        # Two sweeps may run the same pass (each drops a stream with tag ""): the same draw,
        # so the same answers; anything else would mean two passes share a key.
        if key in self.passes and any(not np.array_equal(self.passes[key][k], got[k])
                                      for k in MODELS):
            raise RuntimeError(f"two different passes recorded under {key}")
        self.passes[key] = got


@contextmanager
def recording(paired: Paired, passes: Passes) -> Iterator[None]:
    """While open, every ``run_pass`` of the field and held-out sweeps stores both models'
    correctness in ``passes`` (the sweeps themselves run as documented, on the incumbent's
    answers)."""
    with field.observe_passes(_Recorder(paired, passes)):
        yield


def _weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """``[resamples, n]``: how often each sample is drawn in each bootstrap resample. One
    bootstrap serves every sweep: the probe set's samples are the first of the validation
    split, and its weights are these weights' first columns (``_mean``)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    return np.stack([np.bincount(r, minlength=n) for r in idx]).astype(np.float64)


def _mean(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per resample, the weighted mean of per-sample values ``x`` (``[n]`` → ``[R]``, or
    ``[S, n]`` → ``[R, S]``) over the first ``n`` samples the resample drew."""
    w = weights[:, : x.shape[-1]]
    return (w @ x.T) / (w.sum(axis=1) if x.ndim == 1 else w.sum(axis=1, keepdims=True))


def _held_out(result: dict[str, Any], passes: Passes) -> dict[str, Any]:
    """Per stream of a held-out sweep, per degradation and severity: each model's per-sample
    fused − dropped correctness (``float[n]``)."""
    out: dict[str, Any] = {}
    for m, entry in result["modalities"].items():
        dropped = passes[("", (m,))]
        degs: dict[str, Any] = {}
        for name, deg in entry["degradations"].items():
            sevs = {}
            for s in deg["severities"]:
                fused = passes[(f"unseen/{m}/{name}@{s}", ())]
                sevs[s] = {k: fused[k].astype(np.float64) - dropped[k] for k in MODELS}
            degs[name] = sevs
        out[m] = {"degradations": degs}
    return out


def _bootstrap_stream(passes_fused: list[dict[str, np.ndarray]],
                      weights: np.ndarray) -> dict[str, Any]:
    """Mean fused accuracy over a stream's held-out passes: per model, and the candidate's
    difference with its 90% interval over the resamples."""
    mean = {k: np.mean([p[k] for p in passes_fused], axis=0) for k in MODELS}  # per sample
    diff = _mean(weights, mean["candidate"] - mean["incumbent"])
    return {"incumbent": float(mean["incumbent"].mean()),
            "candidate": float(mean["candidate"].mean()),
            "difference": float((mean["candidate"] - mean["incumbent"]).mean()),
            "interval_90": [float(np.percentile(diff, 5)), float(np.percentile(diff, 95))]}


def _counts(sets: list[tuple[dict[str, Any], np.ndarray]]) -> dict[str, Any]:
    """The count of degradations whose worst severity is more than 1 pt below dropping, per
    model: the point value, the bootstrap counts, the difference's 5th percentile, and which
    degradations break."""
    point = {k: 0 for k in MODELS}
    boot = {k: 0 for k in MODELS}
    breaks: dict[str, list[str]] = {k: [] for k in MODELS}
    for streams, weights in sets:
        for m, entry in streams.items():
            for name, sevs in entry["degradations"].items():
                for k in MODELS:
                    vs = np.stack([d[k] for d in sevs.values()])  # [S, n]
                    worst = vs.mean(axis=1).min()
                    if worst < VS_DROPPED:
                        point[k] += 1
                        breaks[k].append(f"{m}/{name} ({100 * worst:+.1f} pt)")
                    boot[k] = boot[k] + (_mean(weights, vs).min(axis=1) < VS_DROPPED)
    diff = boot["candidate"] - boot["incumbent"]
    return {"point": point, "breaks": breaks,
            "bootstrap_mean": {k: float(np.mean(boot[k])) for k in MODELS},
            "bootstrap_std": {k: float(np.std(boot[k])) for k in MODELS},
            "difference_p5": float(np.percentile(diff, 5)),
            "difference_p95": float(np.percentile(diff, 95))}


def _trained(result: dict[str, Any], passes: Passes,
             seen: Mapping[str, tuple[str, ...]]) -> dict[str, Any]:
    """Per model, the worst fused − dropped over the trained families at levels 2-11."""
    out: dict[str, Any] = {}
    for k in MODELS:
        worst, where = 1.0, ""
        for m, entry in result["modalities"].items():
            dropped = passes[("", (m,))][k].mean()
            for fam in entry["families"]:
                if fam not in seen.get(m, ()):
                    continue
                for lv in range(2, 12):
                    d = passes[(f"{m}/{fam}@{lv}", ())][k].mean() - dropped
                    if d < worst:
                        worst, where = float(d), f"{m}/{fam}@{lv}"
        out[k] = {"worst_vs_dropped": worst, "at": where}
    return out


def _data_section(meta: Mapping[str, Any]) -> DataSection:
    """A checkpoint's stored data section, every default filled in (a key added after the
    checkpoint was trained, stored without it, is that key's default)."""
    try:
        return DataSection.model_validate(meta.get("config", {}).get("data", {}))
    except ValidationError as e:
        raise SystemExit(f"a checkpoint's stored data section no longer reads as one: {e}") from e


def trained_on(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The data section of a checkpoint's training config, every default filled in, less
    where the data was cached (the same data under another path is the same data)."""
    data = _data_section(meta).model_dump()
    data.pop("cache_dir", None)
    return data


def same_split(a: Split, b: Split) -> bool:
    """Whether two splits hold the same samples: labels, every modality's rows (NaN, a
    missing sample, equal to NaN), and how a batch of them is prepared."""
    if (set(a.tables) != set(b.tables) or a.natural != b.natural or a.kinds != b.kinds
            or not np.array_equal(a.labels, b.labels)):
        return False
    return all(np.array_equal(a.tables[m][a.index[m]], b.tables[m][b.index[m]],
                              equal_nan=np.issubdtype(a.tables[m].dtype, np.floating))
               for m in a.tables)


def validation_split(meta: Mapping[str, Any], cache_dir: Path) -> Split:
    """The validation split of the data a checkpoint was trained on, read with its whole data
    section (``more_digits`` included: the rule's own draw, ``load_data_for_checkpoint``, reads
    only what the evaluation needs)."""
    d = _data_section(meta)
    if d.source != "avdigits":
        raise SystemExit("the rule's draw is an AV-Digits validation split; a checkpoint trained "
                         "from logs has none")
    return load_data_section(d.model_copy(update={"cache_dir": cache_dir})).splits["val"]


def check_one_validation_split(meta: Mapping[str, Any], cmeta: Mapping[str, Any],
                               cache_dir: Path) -> None:
    """Refuse (SystemExit) two checkpoints whose training data hold different validation
    splits. Different training data is a candidate like any other (``data.more_digits`` adds
    handwriting to the train split only); the rule needs both judged on one validation split."""
    if trained_on(meta) == trained_on(cmeta):
        return
    if not same_split(validation_split(meta, cache_dir), validation_split(cmeta, cache_dir)):
        raise SystemExit("the two checkpoints were trained on data with different validation "
                         "splits")
    log.info("the two were trained on different data with the same validation split")


def compare(incumbent: Path, candidate: Path, cache_dir: Path, resamples: int = RESAMPLES,
            limit: int = 0, held_out: tuple[unseen.Degradation, ...] = unseen.DEGRADATIONS,
            probe: tuple[unseen.Degradation, ...] = probe_fresh.DEGRADATIONS
            ) -> dict[str, Any]:
    """Score both checkpoints on the rule's validation draw and apply the rule. ``limit``
    (the first N validation samples), ``held_out`` and ``probe`` narrow the draw for tests."""
    inc, meta = checkpoint.load(incumbent, torch.device("cpu"))
    cand, cmeta = checkpoint.load(candidate, torch.device("cpu"))
    check_one_validation_split(meta, cmeta, cache_dir)
    data = load_data_for_checkpoint(meta, cache_dir)
    if "val" not in data.splits:
        raise SystemExit(f"{incumbent} has no AV-Digits validation split for the rule's draw")
    val = data.splits["val"]
    if limit:
        val = val.rows(np.arange(min(limit, len(val))))
    probe_rows = val.rows(np.arange(min(PROBE_LIMIT, len(val))))
    paired = Paired(inc, cand).eval()
    passes: Passes = {}
    probe_passes: Passes = {}
    seen = seen_families(meta)
    if seen_families(cmeta) != seen:
        raise SystemExit(f"{incumbent} and {candidate} were trained on different families")
    with recording(paired, passes):
        log.info("held-out degradations (eval-unseen's sweep)")
        held = unseen.unseen_sweep(paired, val, SEED, held_out, alone=False)
        log.info("trained families (eval-field's family sweep)")
        fam = field.family_sweep(paired, val, SEED, seen, alone=False)
    with recording(paired, probe_passes):
        log.info("probe set (training.probe_fresh's sweep)")
        fresh = unseen.unseen_sweep(paired, probe_rows, SEED, probe, alone=False)
    w_val = _weights(len(val), resamples, BOOT_SEED)
    w_probe = w_val  # the probe set is the first samples of the same draw (``_mean``)
    held_d = _held_out(held, passes)
    fresh_d = _held_out(fresh, probe_passes)
    streams = {}
    for m, entry in held_d.items():
        fused = [passes[(f"unseen/{m}/{name}@{s}", ())]
                 for name, sevs in entry["degradations"].items() for s in sevs]
        streams[m] = _bootstrap_stream(fused, w_val)
    counts = _counts([(held_d, w_val), (fresh_d, w_probe)])
    trained = _trained(fam, passes, seen)
    a_ok = (all(s["interval_90"][1] >= 0 for s in streams.values())
            and any(s["interval_90"][0] > 0 for s in streams.values()))
    b_ok = counts["difference_p5"] <= 0
    c_ok = trained["candidate"]["worst_vs_dropped"] >= VS_DROPPED
    return {"incumbent": str(incumbent), "candidate": str(candidate), "seed": SEED,
            "n_val": len(val), "n_probe": len(probe_rows), "resamples": resamples,
            "held_out_means": streams, "below_dropping": counts, "trained": trained,
            "rule": {"a": bool(a_ok), "b": bool(b_ok), "c": bool(c_ok)},
            "replaces": bool(a_ok and b_ok and c_ok)}


def render_markdown(r: dict[str, Any], command: str) -> str:
    """The comparison as a short report."""
    yes = {True: "passes", False: "fails"}
    lines = [f"# Replacement rule: {r['candidate']} against {r['incumbent']}", "",
             f"Command: `{command}`", "",
             f"Validation draw seed {r['seed']}: {r['n_val']} samples (held-out degradations, "
             f"trained families), the first {r['n_probe']} for the probe set; bootstrap over "
             f"samples paired across the two models, {r['resamples']} resamples. The rule: "
             "docs/method.md, \"The replacement rule\".", "",
             "## (a) Held-out degradations, mean fused accuracy", "",
             "| stream | incumbent | candidate | difference | 90% interval |",
             "|---|---|---|---|---|"]
    for m, s in r["held_out_means"].items():
        lo, hi = s["interval_90"]
        lines.append(f"| {m} | {100 * s['incumbent']:.2f}% | {100 * s['candidate']:.2f}% | "
                     f"{100 * s['difference']:+.2f} pt | {100 * lo:+.2f} to {100 * hi:+.2f} |")
    c = r["below_dropping"]
    lines += ["", f"(a) {yes[r['rule']['a']]}.", "",
              "## (b) Degradations more than 1 pt below dropping (held-out + probe set)", "",
              "| | incumbent | candidate |", "|---|---|---|",
              f"| count | {c['point']['incumbent']} | {c['point']['candidate']} |",
              "| bootstrap mean ± std | "
              f"{c['bootstrap_mean']['incumbent']:.2f} ± {c['bootstrap_std']['incumbent']:.2f} | "
              f"{c['bootstrap_mean']['candidate']:.2f} ± {c['bootstrap_std']['candidate']:.2f} |",
              "", f"Candidate − incumbent: 5th percentile {int(c['difference_p5']):+d}, 95th "
              f"{int(c['difference_p95']):+d}. (b) {yes[r['rule']['b']]}.", ""]
    for k in MODELS:
        lines.append(f"* {k}: {', '.join(c['breaks'][k]) or 'none'}")
    t = r["trained"]
    lines += ["", "## (c) Trained families, levels 2-11: worst fused − dropped", "",
              f"* incumbent {100 * t['incumbent']['worst_vs_dropped']:+.1f} pt "
              f"({t['incumbent']['at']}); candidate "
              f"{100 * t['candidate']['worst_vs_dropped']:+.1f} pt ({t['candidate']['at']}).",
              f"* (c) {yes[r['rule']['c']]}.", "",
              f"**The candidate {'replaces' if r['replaces'] else 'does not replace'} the "
              "incumbent.**", ""]
    return "\n".join(lines)


def main() -> None:
    """Command line."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("incumbent", type=Path)
    ap.add_argument("candidate", type=Path)
    ap.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    ap.add_argument("--cache-dir", type=Path, default=Path("data_cache"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="first N validation samples (tests)")
    ap.add_argument("--resamples", type=int, default=RESAMPLES)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    r = compare(a.incumbent, a.candidate, a.cache_dir, a.resamples, a.limit)
    cmd = " ".join(["python -m training.compare_checkpoints", str(a.incumbent), str(a.candidate)]
                   + ([f"--out {a.out}"] if a.out else [])
                   + ([f"--limit {a.limit}"] if a.limit else [])
                   + ([f"--resamples {a.resamples}"] if a.resamples != RESAMPLES else []))
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.with_suffix(".json").write_text(json.dumps(r, indent=1))
        a.out.with_suffix(".md").write_text(render_markdown(r, cmd))
        log.info("wrote %s and %s", a.out.with_suffix(".json"), a.out.with_suffix(".md"))
    print(json.dumps({"rule": r["rule"], "replaces": r["replaces"]}))


if __name__ == "__main__":
    main()
