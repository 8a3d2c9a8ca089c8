"""Batched inference for serving a fleet: fixed batch buckets, pinned staging, CUDA graphs, bf16.

``Engine`` wraps a loaded ``FusionNet`` (eval mode) and runs the part of the forward pass that
follows preprocessing on a batch of any size up to the largest bucket. On CUDA it

* pads the batch to the next bucket (padding rows are absent in every stream; the model is
  per-sample in eval mode: batch norms use running statistics, the dependency statistic is the
  stored EMA, so padding never changes a real row),
* copies the inputs into static device buffers and replays one ``torch.cuda.CUDAGraph`` per
  bucket (captured after a warm-up on a side stream, all buckets sharing one memory pool),
* packs every output into one tensor inside the graph, so one device→host copy into a pinned
  buffer and one synchronisation return the whole batch,
* stages raw sensor arrays (``predict``) in pinned host buffers and uploads them with
  ``non_blocking`` copies.

Why hand-captured graphs and not ``torch.compile(mode="reduce-overhead")``: capture takes well
under a second per bucket where compiling nine buckets takes minutes (a serving node's cold start
and a GPU lease of 15 minutes both pay for it); the engine owns its static buffers and memory pool,
so what a replay reads and writes is explicit; and serving needs no Triton or inductor.
Compilation would also fuse kernels; the graph removes the launch overhead, which dominates at
the small batch sizes of a fleet at 30 fps.

On CPU the engine runs the model eagerly with the same API and no padding by default (a padded
row costs as much as a real one there and there is no graph to reuse); ``pad=True`` pads anyway,
which is how the padding logic is tested on machines without a GPU.

bf16 (``dtype="bf16"``) runs the forward under autocast; ``precision_report`` measures fp32 vs
bf16 agreement and accuracy on a labelled set, and ``bf16_keeps_accuracy`` decides from it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from udml_stream.errors import CheckpointError
from udml_stream.model.fusion import FusionNet, FusionOutput

log = logging.getLogger(__name__)

#: Staging a batch into pinned memory above this many bytes copies with several threads (numpy
#: releases the GIL while copying): 256 robots' 640×480 frames are 236 MB, which one thread
#: copies in most of a frame period (H200 machine, docs/gpu.md).
PARALLEL_STAGING_BYTES = 8 << 20
STAGING_THREADS = min(8, os.cpu_count() or 1)
STAGING_CHUNKS = 4


def fill_rows(out: np.ndarray, arrays: Sequence[np.ndarray],
              pool: ThreadPoolExecutor | None = None, chunks: int = 1) -> None:
    """``out[i] = arrays[i]`` for every row; with a ``pool``, in ``chunks`` contiguous runs of
    rows on its threads (the caller decides when a batch is large enough to be worth it)."""
    if pool is None or chunks < 2 or len(arrays) < 2:
        for i, a in enumerate(arrays):
            out[i] = a
        return

    def copy(rows: np.ndarray) -> None:
        for i in rows:
            out[i] = arrays[i]

    runs = np.array_split(np.arange(len(arrays)), min(chunks, len(arrays)))
    for f in [pool.submit(copy, r) for r in runs]:
        f.result()  # re-raises a failed copy here

#: Batch sizes a graph is captured for; a batch runs in the smallest bucket that holds it.
DEFAULT_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
Precision = Literal["fp32", "bf16"]


@dataclass
class EngineOutput:
    """One batch's results on the host (numpy, leading axis = the caller's batch, not padded)."""

    logits: np.ndarray  # [B, K] float32
    probs: np.ndarray  # [B, K] softmax of the served logits (the conflict rule's on a conflict)
    multipliers: dict[str, np.ndarray]  # [B] the factor scaling each stream (0 = ignored)
    sigma_hat: dict[str, np.ndarray]  # [B] predicted noise scale (methods that estimate one)
    present: dict[str, np.ndarray]  # [B] bool
    conflict: np.ndarray  # [B] bool: the streams disagreed, the conflict rule answered
    bucket: int  # the batch size the model actually ran (≥ B when padded)
    preprocess_ns: int  # upload + validity + preprocessing (0 for ``run``)
    inference_ns: int  # copy-in, forward (or replay) and copy-out, synchronised
    # [B] each stream's openness under all the switch rule's gates, in [0, 1] (rules with gates)
    health: dict[str, np.ndarray] = field(default_factory=dict)
    # [B] int: the transform the pretext head names for the stream's input (0 as it came, k a
    # camera's k quarter turns counter-clockwise), −1 where it names none (``rules.udml``)
    looks: dict[str, np.ndarray] = field(default_factory=dict)
    # [B] int: the class each stream's own head names (its unimodal argmax), −1 where a rule
    # has none; ``serve.diagnose`` follows them across time
    answers: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class _Graph:
    """A captured bucket: static inputs, the packed output and the graph that links them."""

    x: dict[str, Tensor]
    present: dict[str, Tensor]
    valid: dict[str, Tensor]
    out: Tensor
    graph: torch.cuda.CUDAGraph


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket holding ``n`` samples."""
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"batch of {n} exceeds the largest bucket {max(buckets)}: split it")


def _prepped_shape(model: FusionNet, m: str) -> tuple[int, ...]:
    """Per-sample shape of modality ``m`` after its preprocessing (fixed by the checkpoint)."""
    p = model.cfg.preprocess[m]
    shape = {"image": (p.get("size", 28), p.get("size", 28)),
             "logmel": (p.get("window_samples", 16000),),
             "mfcc": (p.get("frames", 64), p.get("coeffs", 13))}[p["kind"]]
    with torch.no_grad():
        dummy = torch.zeros((1, *shape), device=model.dependency_ema.device)
        return tuple(model.prep[m](dummy).shape[1:])


class Engine:
    """Batched fusion on a fixed set of batch buckets (CUDA graphs on GPU, eager on CPU).

    Not thread-safe: one caller at a time (the fusion loop). Typical use::

        engine = Engine(model, device)
        engine.warm_up()                       # captures every bucket's graph on CUDA
        out = engine.predict(samples)          # samples: list of {modality: array | None}
    """

    def __init__(self, model: FusionNet, device: torch.device | str,
                 buckets: Sequence[int] = DEFAULT_BUCKETS, graphs: bool | None = None,
                 dtype: Precision = "fp32", pad: bool | None = None,
                 staging_threads: int = STAGING_THREADS) -> None:
        self.device = torch.device(device)
        if model.training:
            raise ValueError("Engine needs a model in eval mode (checkpoint.load returns one)")
        if model.rule.needs_levels:
            raise CheckpointError("an oracle model needs the true noise levels: it cannot serve")
        if dtype not in ("fp32", "bf16"):
            raise ValueError(f"dtype = {dtype!r}; expected 'fp32' or 'bf16'")
        self.buckets = tuple(sorted(set(int(b) for b in buckets)))
        if not self.buckets or self.buckets[0] < 1:
            raise ValueError(f"buckets = {buckets}; expected positive batch sizes")
        cuda = self.device.type == "cuda"
        self.graphs = cuda if graphs is None else graphs
        if self.graphs and not cuda:
            raise ValueError("CUDA graphs need a CUDA device")
        self.pad = self.graphs if pad is None else (pad or self.graphs)
        self.dtype: Precision = dtype
        self.model = model
        self.modalities = model.cfg.modalities
        self.num_classes = model.cfg.num_classes
        self._shapes = {m: _prepped_shape(model, m) for m in self.modalities}
        model.to(self.device)
        self._graphs: dict[int, _Graph] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.graphs else None
        self._host_out: Tensor | None = None  # pinned [max bucket, width] for the copy-out
        self._staging: dict[tuple[str, tuple[int, ...], str], Tensor] = {}  # pinned raw inputs
        self._staged = torch.cuda.Event() if cuda else None  # last upload left the pinned bufs
        # Threads that copy a large batch into the pinned buffers (1: one copy, one upload).
        self.staging_threads = staging_threads
        self._stager: ThreadPoolExecutor | None = None
        # The packed output row: logits K | probs K | multipliers M | σ̂ M | present M |
        # conflict 1 (the answer came from the switch rule's conflict rule) | health M |
        # looks M (NaN where the rule has no gates or no pretext head) | answers M (each
        # stream's own head's class).
        self.width = 2 * self.num_classes + 6 * len(self.modalities) + 1

    # ---- the forward pass ------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.dtype == "bf16":
            # cache_enabled=False: cached casts of weights must not outlive a graph capture.
            return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)
        return contextlib.nullcontext()

    def _pack(self, out: FusionOutput, b: int) -> Tensor:
        logits = out.logits.float()
        nan = torch.full((b,), float("nan"), device=logits.device)
        cols = [out.multipliers[m].float() for m in self.modalities]
        cols += [out.sigma_hat[m].float() if m in out.sigma_hat else nan for m in self.modalities]
        cols += [out.present[m].float() for m in self.modalities]
        conflict = out.aux.get("conflict")
        cols.append(torch.zeros(b, device=logits.device) if conflict is None
                    else conflict.float())
        cols += [out.aux[f"{key}/{m}"].float() if f"{key}/{m}" in out.aux else nan
                 for key in ("gate", "looks") for m in self.modalities]
        cols += [out.unimodal_logits[m].argmax(dim=1).float() if m in out.unimodal_logits
                 else nan for m in self.modalities]
        return torch.cat([logits, torch.softmax(logits, dim=1), torch.stack(cols, dim=1)], dim=1)

    @torch.no_grad()
    def _forward(self, x: Mapping[str, Tensor], present: Mapping[str, Tensor] | None,
                 valid: Mapping[str, Tensor] | None) -> Tensor:
        b = next(iter(x.values())).shape[0]
        with self._autocast():
            out = self.model(x, present=present, preprocessed=True, valid=valid)
        return self._pack(out, b)

    # ---- CUDA graphs -----------------------------------------------------------------------

    def _capture(self, bucket: int) -> _Graph:
        dev = self.device
        x = {m: torch.zeros((bucket, *s), device=dev) for m, s in self._shapes.items()}
        present = {m: torch.zeros(bucket, dtype=torch.bool, device=dev) for m in self.modalities}
        valid = {m: torch.ones(bucket, device=dev) for m in self.modalities}
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):  # warm-up: kernel selection and allocations, off the graph
            for _ in range(3):
                self._forward(x, present, valid)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self._forward(x, present, valid)
        return _Graph(x, present, valid, out, graph)

    def warm_up(self, runs: int = 3) -> float:
        """Capture every bucket's graph (CUDA; largest first, so the shared pool is sized once)
        or run batch 1 a few times (CPU). Returns the seconds it took."""
        t0 = time.perf_counter()
        if self.graphs:
            for b in sorted(self.buckets, reverse=True):
                if b not in self._graphs:
                    self._graphs[b] = self._capture(b)
            torch.cuda.synchronize(self.device)
        else:
            x = {m: torch.zeros((1, *s), device=self.device) for m, s in self._shapes.items()}
            for _ in range(runs):
                self._forward(x, None, None)
        dt = time.perf_counter() - t0
        log.info("engine warm-up on %s (%s, graphs %s): %.2f s", self.device, self.dtype,
                 self.graphs, dt)
        return dt

    # ---- public API --------------------------------------------------------------------------

    def run(self, tensors: Mapping[str, Tensor], present: Mapping[str, Tensor] | None = None,
            valid: Mapping[str, Tensor] | None = None) -> EngineOutput:
        """Fuse a preprocessed batch (``model.prep[m]`` outputs, ``[B, ...]``).

        ``present``/``valid`` are ``[B]`` per modality as ``FusionNet.forward`` takes them
        (``valid`` from ``model.input_valid`` on the raw inputs). A modality left out of
        ``tensors`` is absent for the whole batch."""
        t0 = time.perf_counter_ns()
        if not tensors:
            raise ValueError("no modality present: nothing to fuse")
        n = next(iter(tensors.values())).shape[0]
        for m, t in tensors.items():
            if m not in self._shapes:
                raise ValueError(f"unknown modality {m!r}; the model takes {list(self.modalities)}")
            if t.shape[0] != n or tuple(t.shape[1:]) != self._shapes[m]:
                raise ValueError(f"{m}: got {tuple(t.shape)}, expected [{n}, "
                                 f"{', '.join(map(str, self._shapes[m]))}]")
        bucket = bucket_for(n, self.buckets) if self.pad else n
        if self.graphs:
            packed = self._replay(tensors, present, valid, n, bucket)
        else:
            x, p, v = self._padded(tensors, present, valid, n, bucket)
            packed = self._forward(x, p, v)[:n].cpu().numpy()
        return self._unpack(packed, bucket, 0, time.perf_counter_ns() - t0)

    def predict(self, samples: Sequence[Mapping[str, np.ndarray | None]]) -> EngineOutput:
        """Fuse raw sensor samples (what ``FusionRunner.predict`` takes, one dict per sample:
        camera frames ``[H, W, 3]`` uint8, waveforms with NaN gaps; None or missing = absent).

        Samples of one modality may differ in shape (robots with other cameras): each shape
        group is uploaded and preprocessed on its own, then scattered into the batch."""
        t0 = time.perf_counter_ns()
        tensors, present, valid = self.prepare(samples)
        t1 = time.perf_counter_ns()
        res = self.run(tensors, present, valid)
        res.preprocess_ns = t1 - t0
        return res

    @torch.no_grad()
    def prepare(self, samples: Sequence[Mapping[str, np.ndarray | None]]
                ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """Upload, measure validity and preprocess raw samples → ``run``'s arguments."""
        n = len(samples)
        if n == 0:
            raise ValueError("no samples")
        if self._staged is not None:
            self._staged.synchronize()  # the previous upload has left the pinned buffers
        tensors: dict[str, Tensor] = {}
        present: dict[str, Tensor] = {}
        valid: dict[str, Tensor] = {}
        for m in self.modalities:
            groups: dict[tuple[tuple[int, ...], str], list[int]] = {}
            for i, s in enumerate(samples):
                a = s.get(m)
                if a is not None:
                    dt = "uint8" if a.dtype == np.uint8 else "float32"
                    groups.setdefault((a.shape, dt), []).append(i)
            if not groups:
                continue
            x = torch.zeros((n, *self._shapes[m]), device=self.device)
            v = torch.zeros(n, device=self.device)
            for (shape, dt), rows in groups.items():
                raw = self._upload(m, [samples[i][m] for i in rows], shape, dt)  # type: ignore[misc]
                idx = torch.as_tensor(rows, device=self.device)
                v[idx] = self.model.input_valid({m: raw})[m].float()
                x[idx] = self.model.prep[m](raw).float()
            p = torch.zeros(n, dtype=torch.bool)
            p[[i for rows in groups.values() for i in rows]] = True
            tensors[m], present[m], valid[m] = x, p.to(self.device), v
        if not tensors:
            raise ValueError("no modality present: nothing to fuse")
        if self._staged is not None:
            self._staged.record()
        return tensors, present, valid

    # ---- internals ---------------------------------------------------------------------------

    def _upload(self, m: str, arrays: list[np.ndarray], shape: tuple[int, ...], dt: str) -> Tensor:
        np_dt = np.uint8 if dt == "uint8" else np.float32
        if self.device.type != "cuda":
            return torch.from_numpy(np.stack([np.asarray(a, dtype=np_dt) for a in arrays]))
        key = (m, shape, dt)
        buf = self._staging.get(key)
        if buf is None or buf.shape[0] < len(arrays):
            rows = bucket_for(len(arrays), self.buckets) if len(arrays) <= self.buckets[-1] \
                else len(arrays)
            buf = torch.empty((rows, *shape), dtype=getattr(torch, dt), pin_memory=True)
            self._staging[key] = buf
            log.info("pinned staging for %s %s %s: %.1f MB", m, shape, dt,
                     buf.numel() * buf.element_size() / 1e6)
        host = buf[: len(arrays)]
        view = host.numpy()
        if host.numel() * host.element_size() < PARALLEL_STAGING_BYTES or self.staging_threads < 2:
            fill_rows(view, arrays)  # one copy: sensor arrays → pinned buffer
            return host.to(self.device, non_blocking=True)
        # A large batch: several threads copy, in STAGING_CHUNKS runs of rows, each uploaded
        # (asynchronously) while the next is copied.
        if self._stager is None:
            self._stager = ThreadPoolExecutor(self.staging_threads, thread_name_prefix="staging")
        out = torch.empty(host.shape, dtype=host.dtype, device=self.device)
        for run in np.array_split(np.arange(len(arrays)), min(STAGING_CHUNKS, len(arrays))):
            a, b = int(run[0]), int(run[-1]) + 1
            fill_rows(view[a:b], arrays[a:b], self._stager, self.staging_threads)
            out[a:b].copy_(host[a:b], non_blocking=True)
        return out

    def _padded(self, tensors: Mapping[str, Tensor], present: Mapping[str, Tensor] | None,
                valid: Mapping[str, Tensor] | None, n: int, bucket: int
                ) -> tuple[dict[str, Tensor], dict[str, Tensor] | None, dict[str, Tensor] | None]:
        dev = self.device
        x = {m: t.to(dev) for m, t in tensors.items()}
        p = {m: (present[m] if present is not None and m in present
                 else torch.ones(n, dtype=torch.bool)).to(dev).bool() for m in x}
        v = {m: valid[m].to(dev).float() for m in x if valid is not None and m in valid}
        if bucket == n:
            return x, p, v
        extra = bucket - n
        x = {m: torch.cat([t, t.new_zeros((extra, *t.shape[1:]))]) for m, t in x.items()}
        p = {m: torch.cat([t, t.new_zeros(extra)]) for m, t in p.items()}  # padding is absent
        v = {m: torch.cat([t, t.new_ones(extra)]) for m, t in v.items()}
        return x, p, v

    def _replay(self, tensors: Mapping[str, Tensor], present: Mapping[str, Tensor] | None,
                valid: Mapping[str, Tensor] | None, n: int, bucket: int) -> np.ndarray:
        g = self._graphs.get(bucket)
        if g is None:
            log.warning("capturing bucket %d during serving (call warm_up first)", bucket)
            g = self._graphs[bucket] = self._capture(bucket)
        for m in self.modalities:
            if m not in tensors:
                g.present[m].fill_(False)
                continue
            g.x[m][:n].copy_(tensors[m], non_blocking=True)
            if present is not None and m in present:
                g.present[m][:n].copy_(present[m], non_blocking=True)
            else:
                g.present[m][:n].fill_(True)
            if n < bucket:
                g.present[m][n:].fill_(False)
            if valid is not None and m in valid:
                g.valid[m][:n].copy_(valid[m], non_blocking=True)
            else:
                g.valid[m].fill_(1.0)
        g.graph.replay()
        if self._host_out is None:
            self._host_out = torch.empty((self.buckets[-1], self.width), pin_memory=True)
        host = self._host_out[:bucket]
        host.copy_(g.out, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return host[:n].numpy().copy()  # the pinned buffer is reused by the next batch

    def _unpack(self, packed: np.ndarray, bucket: int, prep_ns: int, inf_ns: int) -> EngineOutput:
        k, ms = self.num_classes, self.modalities
        cols = packed[:, 2 * k :]
        mm = len(ms)
        sig = {m: cols[:, mm + i] for i, m in enumerate(ms)}
        health = {m: cols[:, 3 * mm + 1 + i] for i, m in enumerate(ms)}
        looks = {m: cols[:, 4 * mm + 1 + i] for i, m in enumerate(ms)}
        answers = {m: cols[:, 5 * mm + 1 + i] for i, m in enumerate(ms)}
        return EngineOutput(
            logits=packed[:, :k], probs=packed[:, k : 2 * k],
            multipliers={m: cols[:, i] for i, m in enumerate(ms)},
            sigma_hat={m: s for m, s in sig.items() if not np.isnan(s).all()},
            present={m: cols[:, 2 * mm + i] > 0.5 for i, m in enumerate(ms)},
            conflict=cols[:, 3 * mm] > 0.5, bucket=bucket, preprocess_ns=prep_ns, inference_ns=inf_ns,
            health={m: h for m, h in health.items() if not np.isnan(h).all()},
            looks={m: np.nan_to_num(v, nan=-1.0).astype(np.int64) for m, v in looks.items()
                   if not np.isnan(v).all()},
            answers={m: np.nan_to_num(v, nan=-1.0).astype(np.int64) for m, v in answers.items()
                     if not np.isnan(v).all()},
        )


# ---- bf16: does it keep accuracy? ---------------------------------------------------------------


@dataclass
class PrecisionReport:
    """fp32 against bf16 autocast on one labelled, preprocessed set."""

    n: int
    acc_fp32: float
    acc_bf16: float
    argmax_agreement: float  # share of samples whose predicted class is the same
    max_abs_prob_diff: float
    mean_abs_prob_diff: float
    max_abs_multiplier_diff: float


def _chunks(n: int, size: int) -> Iterator[slice]:
    for s in range(0, n, size):
        yield slice(s, min(s + size, n))


def precision_report(model: FusionNet, device: torch.device | str, tensors: Mapping[str, Tensor],
                     present: Mapping[str, Tensor], valid: Mapping[str, Tensor], labels: Tensor,
                     batch: int = 256) -> PrecisionReport:
    """Run the set eagerly in fp32 and in bf16 autocast and compare (batches of ``batch``)."""
    engines = {d: Engine(model, device, buckets=(batch,), graphs=False, dtype=d, pad=False)
               for d in ("fp32", "bf16")}
    outs: dict[str, list[EngineOutput]] = {"fp32": [], "bf16": []}
    n = int(labels.shape[0])
    for sl in _chunks(n, batch):
        args = ({m: t[sl] for m, t in tensors.items()}, {m: t[sl] for m, t in present.items()},
                {m: t[sl] for m, t in valid.items()})
        for d, e in engines.items():
            outs[d].append(e.run(*args))
    probs = {d: np.concatenate([o.probs for o in v]) for d, v in outs.items()}
    mult = {d: np.stack([np.concatenate([o.multipliers[m] for o in v]) for m in model.cfg.modalities])
            for d, v in outs.items()}
    y = labels.cpu().numpy()
    pred = {d: p.argmax(1) for d, p in probs.items()}
    diff = np.abs(probs["fp32"] - probs["bf16"])
    return PrecisionReport(
        n=n, acc_fp32=float((pred["fp32"] == y).mean()), acc_bf16=float((pred["bf16"] == y).mean()),
        argmax_agreement=float((pred["fp32"] == pred["bf16"]).mean()),
        max_abs_prob_diff=float(diff.max()), mean_abs_prob_diff=float(diff.mean()),
        max_abs_multiplier_diff=float(np.abs(mult["fp32"] - mult["bf16"]).max()),
    )


def bf16_keeps_accuracy(r: PrecisionReport, max_drop: float = 0.005,
                        min_agreement: float = 0.99) -> bool:
    """bf16 is kept when it loses at most ``max_drop`` accuracy and agrees on ≥ ``min_agreement``
    of the predictions (fusion weights are reported to users too: agreement, not just accuracy)."""
    return r.acc_fp32 - r.acc_bf16 <= max_drop and r.argmax_agreement >= min_agreement
