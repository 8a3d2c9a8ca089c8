"""Aggregate benchmark runs into ``avdigits.json``, a Markdown report and PNG plots."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from udml_stream.evaluate.benchmark import BENCH_METHODS


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean, sample std (ddof 1; 0 for one value) and count of ``values``."""
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "n": int(a.size)}


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds, in the documented ``avdigits.json`` shape (one entry per preset)."""
    by: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        by[r["preset"]][r["method"]].append(r)
    out: dict[str, Any] = {}
    for preset, methods in by.items():
        entry: dict[str, Any] = {"methods": {}, "estimator": {}}
        for method in [m for m in BENCH_METHODS if m in methods] + sorted(
                set(methods) - set(BENCH_METHODS)):
            runs = methods[method]
            conds = runs[0]["conditions"].keys()
            sweep = {
                mod: {lv: {k: mean_std([r["sweep"][mod][lv][k] for r in runs])["mean"]
                           for k in runs[0]["sweep"][mod][lv]}
                      for lv in runs[0]["sweep"][mod]}
                for mod in runs[0]["sweep"]
            }
            entry["methods"][method] = {
                "clean": mean_std([r["clean"] for r in runs])["mean"],
                "corrupted_mean": mean_std([r["corrupted_mean"] for r in runs])["mean"],
                "clean_std": mean_std([r["clean"] for r in runs])["std"],
                "corrupted_mean_std": mean_std([r["corrupted_mean"] for r in runs])["std"],
                "seeds": sorted(r["seed"] for r in runs),
                "conditions": {
                    c: {
                        "acc": mean_std([r["conditions"][c]["acc"] for r in runs])["mean"],
                        "acc_std": mean_std([r["conditions"][c]["acc"] for r in runs])["std"],
                        "weight_share": {
                            mod: mean_std([r["conditions"][c]["weight_share"][mod] for r in runs])["mean"]
                            for mod in runs[0]["conditions"][c]["weight_share"]
                        },
                    }
                    for c in conds
                },
                "sweep": sweep,
                "spearman": {mod: mean_std([r["spearman"][mod] for r in runs])["mean"]
                             for mod in runs[0].get("spearman", {})},
                "train_seconds": mean_std([r["train_seconds"] for r in runs])["mean"],
            }
        if "udml" in entry["methods"]:
            entry["estimator"] = {"method": "udml",
                                  "spearman": entry["methods"]["udml"]["spearman"]}
        out[preset] = entry
    return out


def _plots(agg: dict[str, Any], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for preset, entry in agg.items():
        methods = entry["methods"]
        mods = list(next(iter(methods.values()))["sweep"])
        for what, ylabel in (("acc", "fused accuracy"), ("sigma_hat", "mean σ̂"),
                             ("weight_share", "share of fusion weight")):
            fig, axes = plt.subplots(1, len(mods), figsize=(5 * len(mods), 3.6), squeeze=False)
            for ax, mod in zip(axes[0], mods, strict=True):
                for method, res in methods.items():
                    sw = res["sweep"][mod]
                    lvs = sorted(sw, key=int)
                    if what not in sw[lvs[0]]:
                        continue
                    ax.plot([int(lv) for lv in lvs], [sw[lv][what] for lv in lvs],
                            marker="o", label=method, lw=2.2 if method == "udml" else 1.2)
                ax.set_title(f"{preset}: {mod} corrupted (all samples)")
                ax.set_xlabel("noise level (1 = clean, 11 = pure noise)")
                ax.set_ylabel(ylabel)
                ax.grid(alpha=0.3)
            axes[0][-1].legend(fontsize=7, loc="best")
            fig.tight_layout()
            name = f"avdigits_{preset}_{what}.png"
            fig.savefig(out_dir / name, dpi=110)
            plt.close(fig)
            files.append(name)
    return files


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _high_level_mean(res: dict[str, Any]) -> float:
    """Mean accuracy over the corrupted conditions at levels 6, 9 and 11."""
    accs = [c["acc"] for k, c in res["conditions"].items()
            if any(k.endswith(f"@{lv}") for lv in (6, 9, 11))]
    return float(np.mean(accs))


def goal_checks(methods: dict[str, Any]) -> list[str]:
    """The issue's goals, computed from the numbers (each line says whether it holds)."""
    if "udml" not in methods:
        return []
    u = methods["udml"]
    lines = []

    def check(ok: bool, text: str) -> None:
        lines.append(f"- {'✅' if ok else '❌'} {text}")

    for peer, need in (("static_concat", 0.03), ("static_concat_aug", 0.01)):
        if peer in methods:
            d = u["corrupted_mean"] - methods[peer]["corrupted_mean"]
            check(d >= need, f"UDML − {peer} on the corrupted mean: {100 * d:+.1f} points "
                             f"(goal ≥ {100 * need:.0f})")
    statics = [methods[m]["clean"] for m in ("static_concat", "static_concat_aug") if m in methods]
    if statics:
        d = u["clean"] - max(statics)
        check(d >= -0.005, f"UDML clean − best static clean: {100 * d:+.1f} points (goal ≥ −0.5)")
    for peer in ("qmf", "pdf"):
        if peer in methods:
            d = _high_level_mean(u) - _high_level_mean(methods[peer])
            check(d > 0, f"UDML − {peer.upper()} at levels 6–11: {100 * d:+.1f} points (goal > 0)")
    for mod, rho in u["spearman"].items():
        check(rho >= 0.9, f"estimator Spearman ρ(σ̂, level) for {mod}: {rho:.3f} (goal ≥ 0.9)")
    for mod, sw in u["sweep"].items():
        share = sw["11"]["weight_share"]
        check(share < 0.10, f"{mod} as pure noise (level 11) gets {100 * share:.1f}% of the "
                            "fusion weight (goal < 10%)")
    if "udml_no_dependency" in methods:
        nd = methods["udml_no_dependency"]
        deltas = {k: u["conditions"][k]["acc"] - nd["conditions"][k]["acc"]
                  for k in u["conditions"] if k != "clean"}
        mean = float(np.mean(list(deltas.values())))
        lines.append(f"- dependency term (UDML − UDML without it), mean over corrupted "
                     f"conditions: {100 * mean:+.1f} points; per condition: "
                     + ", ".join(f"{k} {100 * v:+.1f}" for k, v in deltas.items()))
    return lines


def write_report(agg: dict[str, Any], out_dir: Path, command: str, meta: dict[str, Any]) -> Path:
    """Write ``avdigits.json``, ``avdigits.md`` and the PNG plots into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "avdigits.json").write_text(json.dumps(agg, indent=1))
    plots = _plots(agg, out_dir)
    lines = [
        "# AV-Digits benchmark results",
        "",
        "Generated by `udml benchmark` (do not edit by hand). Reproduce with:",
        "",
        f"```\n{command}\n```",
        "",
        "Images and sounds are paired **by class only** with a seeded generator; there is no other",
        "correspondence between an image and a sound. Raw-track speech is synthetic (espeak-ng),",
        "test voices unseen in training; nothing here says anything about real voices.",
        "The `real` track's FSDD recordings come from the same 6 speakers in every split (the",
        "data ships no speaker ids), so its test speakers were heard in training.",
        "Accuracies in %, mean ± std over seeds; every test sample is scored in every condition.",
        "`corrupted` is the unweighted mean over all conditions except `clean`.",
        "",
        f"Run facts: {json.dumps(meta)}",
        "",
    ]
    for preset, entry in agg.items():
        methods = entry["methods"]
        lines += [f"## Preset `{preset}`", "", "| method | clean | corrupted | seeds | train s |",
                  "| --- | --- | --- | --- | --- |"]
        for name, r in methods.items():
            lines.append(
                f"| {name} | {_pct(r['clean'])} ± {_pct(r['clean_std'])} | "
                f"{_pct(r['corrupted_mean'])} ± {_pct(r['corrupted_mean_std'])} | "
                f"{len(r['seeds'])} | {r['train_seconds']:.0f} |")
        checks = goal_checks(methods)
        if checks:
            lines += ["", "Goals of the issue, checked against these numbers (not tuned to them):",
                      "", *checks]
        conds = list(next(iter(methods.values()))["conditions"])
        lines += ["", "Accuracy per condition (%):", "",
                  "| condition | " + " | ".join(methods) + " |",
                  "| --- |" + " --- |" * len(methods)]
        for c in conds:
            lines.append(f"| {c} | " + " | ".join(
                f"{_pct(r['conditions'][c]['acc'])}" for r in methods.values()) + " |")
        if "udml" in methods:
            u = methods["udml"]
            lines += ["", "UDML estimator: Spearman ρ(σ̂, true level) on the test split: "
                      + ", ".join(f"{m} {v:.3f}" for m, v in u["spearman"].items()), "",
                      "UDML mean σ̂ and share of fusion weight by level of the corrupted modality:",
                      "", "| modality | level | acc % | σ̂ | weight share |",
                      "| --- | --- | --- | --- | --- |"]
            for mod, sw in u["sweep"].items():
                for lv in sorted(sw, key=int):
                    lines.append(f"| {mod} | {lv} | {_pct(sw[lv]['acc'])} | "
                                 f"{sw[lv].get('sigma_hat', float('nan')):.2f} | "
                                 f"{sw[lv]['weight_share']:.3f} |")
        lines += [""] + [f"![{p}]({p})" for p in plots if f"_{preset}_" in p] + [""]
    path = out_dir / "avdigits.md"
    path.write_text("\n".join(lines))
    return path
