"""Every GPU measurement of issue #10 in one run (scripts/gpu-check), each next to its reference.

* batch-1 latency, eager against a CUDA graph (``udml_stream.serve.accel.Engine``), for the
  shipped checkpoint and for a paper-size model (ResNet-18 per stream, 512-d embeddings:
  configs/paper_resnet18_gpu.toml's model, randomly initialised: speed does not depend on the
  weights);
* robots sustained: the largest batch bucket whose batched latency p99, from raw camera frames
  (480×640×3 uint8) and 1 s microphone windows on the host to fused results on the host, stays
  under the 33 ms frame period of 30 fps (and the same with the batch already preprocessed on the
  device, the model's share alone);
* paper-size training samples/s at batch 64: the loop's step as written (a host read of every
  loss part each step), without per-step host syncs, and with bf16 autocast (channels-last is the
  model's layout in all three);
* bf16 against fp32 on a labelled evaluation set, when one travelled with the run
  (``make_eval_set``, written by ``scripts/gpu-check prepare`` where the data cache is).

Without CUDA, ``run`` raises ``NoCudaError`` before measuring anything: no figure is ever written for a
device that was not there.
"""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from udml_stream.data.batching import Batch
from udml_stream.errors import UdmlError
from udml_stream.model import checkpoint
from udml_stream.model.ensemble import Ensemble
from udml_stream.model.fusion import FusionNet, ModelConfig
from udml_stream.model.preprocess import ImagePrep, LogMelPrep
from udml_stream.serve.accel import (
    STAGING_THREADS,
    Engine,
    bf16_keeps_accuracy,
    precision_report,
)
from udml_stream.train.trainer import train_step

log = logging.getLogger(__name__)

#: Issue #10's reference figures (upstream UDML model, CREMA-D-shaped input, H200, torch 2.11).
REFERENCE: dict[str, Any] = {
    "source": "issue #10: upstream UDML model, CREMA-D-shaped input, one H200, torch 2.11",
    "train_samples_per_s_batch64": {"as_written": 1480.0, "no_host_sync": 2211.0,
                                    "bf16_channels_last": 2861.0},
    "infer_batch1_eager_fp32_ms": {"p50": 3.9, "p99": 4.8},
    "resnet18_batch1_ms": {"eager": 1.88, "graph": 0.50},
}
#: Issue #10's goals on an H200.
GOALS = {"robots_30fps": 256, "paper_batch1_ms": 1.2, "train_vs_as_written_reference": 2.0}
FRAME_BUDGET_MS = 1000.0 / 30.0
CAMERA_SHAPE = (480, 640, 3)


class NoCudaError(UdmlError):
    """No CUDA device is visible: the GPU checks cannot run here."""


def require_cuda() -> str:
    """The CUDA device's name, or ``NoCudaError`` saying why there is none."""
    if not torch.cuda.is_available():
        build = torch.version.cuda or "none (a CPU-only build)"
        raise NoCudaError(f"no CUDA device: torch {torch.__version__} (CUDA build {build}) reports "
                     "torch.cuda.is_available() = False; run scripts/gpu-check on a machine with "
                     "an NVIDIA GPU (docs/gpu.md). Nothing was measured or written.")
    return torch.cuda.get_device_name(0)


def _pct(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
            "mean": float(a.mean()), "n": len(ms)}


def _timed(fn: Any, n: int, warm: int = 20, budget_s: float = 20.0) -> list[float]:
    """Milliseconds of ``n`` synchronised calls of ``fn`` (fewer if ``budget_s`` runs out)."""
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    out: list[float] = []
    end = time.perf_counter() + budget_s
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(1000 * (time.perf_counter() - t0))
        if time.perf_counter() > end:
            break
    return out


def paper_model() -> FusionNet:
    """configs/paper_resnet18_gpu.toml's model: ResNet-18 per stream, 512-d embeddings, UDML."""
    cfg = ModelConfig(modalities=("image", "audio"),
                      encoders={"image": "resnet18", "audio": "resnet18"},
                      preprocess={"image": ImagePrep().params(), "audio": LogMelPrep().params()},
                      num_classes=10, method="udml", embed_dim=512)
    torch.manual_seed(0)
    return FusionNet(cfg).eval()


def raw_samples(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """What robots send: a 640×480 BGR camera frame and a 1 s microphone window each."""
    rng = np.random.default_rng(seed)
    return [{"image": rng.integers(0, 256, CAMERA_SHAPE, dtype=np.uint8),
             "audio": (0.05 * rng.standard_normal(16000)).astype(np.float32)}
            for _ in range(n)]


def batch1_latency(model: FusionNet, device: torch.device, n: int = 500) -> dict[str, Any]:
    """Batch-1 latency of a preprocessed sample: the eager forward as the runner calls it
    (+ results to the host) against the engine's graph replay (copy-in, replay, copy-out)."""
    eager = Engine(model, device, graphs=False)
    graph = Engine(model, device, graphs=True, buckets=(1,))
    graph.warm_up()
    x, p, v = eager.prepare(raw_samples(1))

    @torch.no_grad()
    def run_eager() -> None:
        out = model(x, preprocessed=True, valid=v)
        torch.softmax(out.logits, dim=1).cpu()

    res = {"eager_fp32": _pct(_timed(run_eager, n)),
           "graph_fp32": _pct(_timed(lambda: graph.run(x, p, v), n))}
    bf = Engine(model, device, graphs=True, buckets=(1,), dtype="bf16")
    bf.warm_up()
    res["graph_bf16"] = _pct(_timed(lambda: bf.run(x, p, v), n))
    # From raw numpy arrays on the host (upload, validity, preprocessing, graph, results).
    raw = raw_samples(1, seed=1)
    res["raw_to_result_graph_fp32"] = _pct(_timed(lambda: graph.predict(raw), n))
    res["graph_speedup_p50"] = res["eager_fp32"]["p50"] / res["graph_fp32"]["p50"]
    return res


def robots_sustained(model: FusionNet, device: torch.device, iters: int = 60,
                     staging_threads: int = STAGING_THREADS) -> dict[str, Any]:
    """Per bucket, the batched latency p99 from raw host arrays and from a preprocessed device
    batch; robots = the largest bucket under the 30 fps frame period. ``staging_threads``: the
    threads that copy large batches into pinned memory (1: the baseline)."""
    engine = Engine(model, device, graphs=True, staging_threads=staging_threads)
    engine.warm_up()
    curve: dict[str, Any] = {}
    best_raw = best_dev = 0
    for b in engine.buckets:
        raw = raw_samples(b, seed=b)
        x, p, v = engine.prepare(raw)
        r = _pct(_timed(lambda raw=raw: engine.predict(raw), iters, warm=3, budget_s=8.0))
        d = _pct(_timed(lambda x=x, p=p, v=v: engine.run(x, p, v), iters, warm=3, budget_s=4.0))
        curve[str(b)] = {"raw_to_result_ms": r, "preprocessed_ms": d}
        best_raw = b if r["p99"] < FRAME_BUDGET_MS else best_raw
        best_dev = b if d["p99"] < FRAME_BUDGET_MS else best_dev
        log.info("bucket %d: raw p99 %.2f ms, preprocessed p99 %.2f ms", b, r["p99"], d["p99"])
    return {"robots_30fps": best_raw, "robots_30fps_preprocessed": best_dev,
            "largest_bucket": engine.buckets[-1], "budget_ms": FRAME_BUDGET_MS, "curve": curve}


def _train_batches(n: int, bs: int, seed: int = 0) -> list[Batch]:
    """Training batches shaped as ``make_batch`` builds them for the imbalanced preset (28×28
    pixel images, 1 s waveforms, levels 1..11), drawn up front: data generation is not timed."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        out.append(Batch(
            inputs={"image": rng.uniform(0, 255, (bs, 28, 28)).astype(np.float32),
                    "audio": (0.1 * rng.standard_normal((bs, 16000))).astype(np.float32)},
            levels={m: rng.integers(1, 12, bs).astype(np.float32) for m in ("image", "audio")},
            present={m: np.ones(bs, dtype=bool) for m in ("image", "audio")},
            labels=rng.integers(0, 10, bs), rows=np.arange(i * bs, (i + 1) * bs)))
    return out


def training_rate(device: torch.device, steps: int = 40, rounds: int = 3,
                  bs: int = 64) -> dict[str, Any]:
    """Paper-size training samples/s with ``trainer.train_step``: as written, without per-step
    host syncs, and with bf16 autocast; interleaved rounds, medians."""
    batches = _train_batches(8, bs)
    variants = {"as_written": (True, False), "no_host_sync": (False, False),
                "bf16_channels_last": (False, True)}
    models, opts = {}, {}
    for k in variants:
        m = paper_model().to(device).train()
        models[k], opts[k] = m, torch.optim.Adam(m.parameters(), lr=1e-3, weight_decay=1e-4)
    rates: dict[str, list[float]] = {k: [] for k in variants}
    n_rows = len(batches) * bs
    for r in range(rounds + 1):  # round 0 warms up (cuDNN algorithm choice, allocations)
        for k, (sync, bf16) in variants.items():
            model = models[k]
            hist: dict[str, Any] = (
                {m: np.full(n_rows, np.log(10), np.float32) for m in model.cfg.modalities}
                if sync else None)  # type: ignore[assignment]
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            sums: dict[str, Any] = {}
            for i in range(steps if r else 5):
                terms = train_step(model, opts[k], batches[i % len(batches)], device, True, 40.0,
                                   hist, sync=sync, bf16=bf16)
                if sync:  # the loop as written: every part and the bar's loss read each step
                    for name, v in terms.parts.items():
                        sums[name] = sums.get(name, 0.0) + v
                    float(terms.total.detach())
                else:
                    for name, t in terms.part_tensors.items():
                        sums[name] = sums[name] + t if name in sums else t
            _ = {name: float(v) for name, v in sums.items()}  # the epoch's one read
            torch.cuda.synchronize()
            if r:
                rates[k].append(steps * bs / (time.perf_counter() - t0))
    med = {k: float(np.median(v)) for k, v in rates.items()}
    return {"samples_per_s": med, "runs": rates, "batch": bs, "steps_per_round": steps,
            "rounds": rounds, "vs_as_written_reference": {
                k: v / REFERENCE["train_samples_per_s_batch64"]["as_written"]
                for k, v in med.items()},
            "note": "synthetic batches built up front (data generation untimed); host→device "
                    "copies timed; channels-last is the model's layout in every variant"}


def make_eval_set(ckpt: Path, cache_dir: Path, out: Path, n: int = 768, seed: int = 0) -> Path:
    """A labelled, preprocessed evaluation set for the bf16 check (run where the data cache
    is): validation samples of the checkpoint's preset, clean and in its training families."""
    from udml_stream.data.batching import draw_training_levels, make_batch
    from udml_stream.train.trainer import load_data_for_checkpoint

    model, meta = checkpoint.load(ckpt, "cpu")
    data = load_data_for_checkpoint(meta, cache_dir)
    val = data.splits["val"]
    fams = meta.get("config", {}).get("train", {}).get("families") or {}
    kinds = {m: tuple(f) for m, f in fams.items()} or None
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(val))[:n]
    lv = draw_training_levels(len(rows), model.cfg.modalities, rng, 0.2)
    b = make_batch(val, rows, lv, rng, kinds)
    arrays: dict[str, np.ndarray] = {"labels": b.labels}
    with torch.no_grad():
        for m, x in b.inputs.items():
            t = torch.from_numpy(x)
            arrays[f"x_{m}"] = model.prep[m](t).numpy()
            arrays[f"valid_{m}"] = model.input_valid({m: t})[m].numpy()
            arrays[f"present_{m}"] = b.present[m]
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return out


def bf16_accuracy(model: FusionNet, device: torch.device, eval_set: Path) -> dict[str, Any]:
    """fp32 against bf16 autocast on the carried evaluation set."""
    with np.load(eval_set) as z:
        ms = model.cfg.modalities
        t = {m: torch.from_numpy(z[f"x_{m}"]).to(device) for m in ms}
        p = {m: torch.from_numpy(z[f"present_{m}"]).to(device) for m in ms}
        v = {m: torch.from_numpy(z[f"valid_{m}"]).to(device) for m in ms}
        y = torch.from_numpy(z["labels"])
    r = precision_report(model, device, t, p, v, y)
    return {**r.__dict__, "bf16_keeps_accuracy": bf16_keeps_accuracy(r), "set": str(eval_set)}


def run(ckpt: Path, eval_set: Path | None = None) -> dict[str, Any]:
    """All the GPU measurements; raises ``NoCudaError`` first where there is no GPU."""
    name = require_cuda()
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True  # fixed shapes per bucket: pick the fastest kernels
    t0 = time.perf_counter()
    shipped, meta = checkpoint.load(ckpt, device)
    # An ensemble replays every member's kernels: its first member alone, measured beside it,
    # is what one model costs (and what the fleet serves for capacity: docs/fleet.md).
    member0 = (checkpoint.load(checkpoint.member_dirs(ckpt, meta)[0], device)[0]
               if isinstance(shipped, Ensemble) else None)
    paper = paper_model().to(device)
    res: dict[str, Any] = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
                           "machine": platform.machine(), "checkpoint": str(ckpt),
                           "members": len(shipped.members) if member0 is not None else 1}
    res["batch1_default"] = batch1_latency(shipped, device)
    if member0 is not None:
        res["batch1_member0"] = batch1_latency(member0, device)
    res["batch1_paper_resnet18"] = batch1_latency(paper, device)
    # Side by side in one process: one staging thread (the baseline) against the default.
    res["robots_one_staging_thread"] = robots_sustained(shipped, device, staging_threads=1)
    res["robots"] = robots_sustained(shipped, device)
    if member0 is not None:
        res["robots_member0"] = robots_sustained(member0, device)
    res["training_paper_resnet18"] = training_rate(device)
    if eval_set is not None and eval_set.is_file():
        res["bf16_accuracy"] = bf16_accuracy(shipped, device, eval_set)
        if member0 is not None:
            res["bf16_accuracy_member0"] = bf16_accuracy(member0, device, eval_set)
    else:
        res["bf16_accuracy"] = {"not_measured": f"no evaluation set at {eval_set} (written by "
                                "`scripts/gpu-check prepare` where the data cache is)"}
    tr = res["training_paper_resnet18"]["samples_per_s"]
    paper_p50 = res["batch1_paper_resnet18"]["graph_fp32"]["p50"]
    res["goals"] = {
        "robots_30fps": {"goal": GOALS["robots_30fps"], "measured": res["robots"]["robots_30fps"],
                         "met": res["robots"]["robots_30fps"] >= GOALS["robots_30fps"]},
        "paper_batch1_graph_p50_ms": {"goal": GOALS["paper_batch1_ms"], "measured": paper_p50,
                                      "met": paper_p50 <= GOALS["paper_batch1_ms"]},
        "train_vs_as_written_reference": {
            "goal": GOALS["train_vs_as_written_reference"],
            "measured": max(tr.values()) / REFERENCE["train_samples_per_s_batch64"]["as_written"],
            "met": max(tr.values()) >= GOALS["train_vs_as_written_reference"]
            * REFERENCE["train_samples_per_s_batch64"]["as_written"]},
    }
    res["reference"] = REFERENCE
    res["seconds"] = time.perf_counter() - t0
    return res


def _models(n: int) -> str:
    return "one model" if n == 1 else f"an ensemble of {n} models"


def to_markdown(res: dict[str, Any], command: str) -> str:
    """The table docs/gpu.md quotes, each figure next to its reference."""
    d, p = res["batch1_default"], res["batch1_paper_resnet18"]
    tr, ref = res["training_paper_resnet18"]["samples_per_s"], res["reference"]
    rt = ref["train_samples_per_s_batch64"]
    lines = [
        f"Command: `{command}` on {res['device']} (torch {res['torch']}, CUDA {res['cuda']}).", "",
        "| measurement | here | reference (issue #10) |", "| --- | --- | --- |",
        f"| default model ({_models(res.get('members', 1))}), batch 1, eager fp32 p50 / p99 ms | "
        f"{d['eager_fp32']['p50']:.2f} / {d['eager_fp32']['p99']:.2f} | "
        f"{ref['infer_batch1_eager_fp32_ms']['p50']} / {ref['infer_batch1_eager_fp32_ms']['p99']} |",
        f"| default model, batch 1, CUDA graph p50 / p99 ms | {d['graph_fp32']['p50']:.2f} / "
        f"{d['graph_fp32']['p99']:.2f} | |",
    ]
    one = res.get("batch1_member0")
    if one is not None:
        rm = res["robots_member0"]
        lines += [
            f"| its member 0 alone, batch 1, eager fp32 / CUDA graph p50 ms | "
            f"{one['eager_fp32']['p50']:.2f} / {one['graph_fp32']['p50']:.2f} | |",
            f"| its member 0 alone: robots at 30 fps, raw p99 at bucket 256 ms | "
            f"{rm['robots_30fps']}, {rm['curve']['256']['raw_to_result_ms']['p99']:.1f} | |",
        ]
    lines += [
        f"| paper-size (ResNet-18 ×2), batch 1, eager p50 ms | {p['eager_fp32']['p50']:.2f} | "
        f"{ref['resnet18_batch1_ms']['eager']} (one ResNet-18) |",
        f"| paper-size, batch 1, CUDA graph p50 ms | {p['graph_fp32']['p50']:.2f} | "
        f"{ref['resnet18_batch1_ms']['graph']} (one ResNet-18) |",
        f"| robots at 30 fps (raw frames → results, p99 < 33 ms) | "
        f"{res['robots']['robots_30fps']} | goal ≥ {GOALS['robots_30fps']} |",
        f"| same, one thread staging frames into pinned memory (baseline) | "
        f"{res['robots_one_staging_thread']['robots_30fps']} | |",
        f"| raw p99 at bucket 256, default / one staging thread, ms | "
        f"{res['robots']['curve']['256']['raw_to_result_ms']['p99']:.1f} / "
        f"{res['robots_one_staging_thread']['curve']['256']['raw_to_result_ms']['p99']:.1f} | |",
        f"| robots at 30 fps (preprocessed batch on the device) | "
        f"{res['robots']['robots_30fps_preprocessed']} | |",
    ]
    lines += [f"| paper-size training, batch 64, {k} samples/s | {tr[k]:.0f} | {rt[k]:.0f} |"
              for k in ("as_written", "no_host_sync", "bf16_channels_last")]
    for key, who in (("bf16_accuracy", ""), ("bf16_accuracy_member0", " (member 0 alone)")):
        bf = res.get(key, {})
        if "acc_fp32" in bf:
            lines.append(f"| bf16 vs fp32 on {bf['n']} samples{who}: accuracy, agreement | "
                         f"{bf['acc_bf16']:.4f} vs {bf['acc_fp32']:.4f}, "
                         f"{bf['argmax_agreement']:.4f} | |")
    lines += ["", "Goals: " + "; ".join(f"{k} {v['measured']:.3g} (goal {v['goal']}, "
                                         f"{'met' if v['met'] else 'not met'})"
                                         for k, v in res["goals"].items())]
    return "\n".join(lines)
