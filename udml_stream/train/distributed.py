"""Training across processes and machines: DDP through ``torch.distributed``.

``udml train CONFIG --nproc N`` runs ``launch``: it starts ``torch.distributed.run`` (torchrun)
as a child process, which starts N copies of this module's worker (``python -m
udml_stream.train.distributed``) on this machine; with ``--nnodes M`` one such command runs on
each machine and they meet at ``--master-addr:--master-port``. torchrun rather than our own
``torch.multiprocessing`` spawn because it already does what a multi-machine run needs and a
spawn would have to re-implement: the rendezvous of several nodes, the RANK / LOCAL_RANK /
WORLD_SIZE environment, and tearing every local worker down when one of them fails. The same
worker also runs under a user's own torchrun or cluster scheduler.

Each worker calls ``init_from_env`` and passes the ``DistContext`` to ``trainer.train``, which
then (see ``docs/distributed.md``):

- draws the epoch's sample order and each sample's noise levels from one generator that every
  rank seeds alike, and trains rank r on its contiguous ``B / N`` share of each global batch of
  ``B`` (the ranks' shares are disjoint; the step count and learning-rate schedule are those of
  one process);
- corrupts its share with its own generator (seeded from the seed, the epoch and the rank);
- lets DDP average the gradients, and averages the module buffers (batch-norm running
  statistics, the dependency EMA) across ranks before each validation: every one of them is a
  linear running average of per-batch values, so one average per epoch equals averaging every
  step;
- scores validation sharded and sums the counts, writes checkpoints and logs on rank 0 only.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import inspect
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as tdist
from torch.distributed.elastic.multiprocessing.errors import record

from udml_stream.errors import ConfigError, UdmlError

if TYPE_CHECKING:
    from udml_stream.train.trainer import TrainResult

log = logging.getLogger(__name__)

#: Seconds a collective waits for the other ranks before failing (a rank that died without
#: closing its sockets, a node that never joined), so no rank hangs forever.
DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class DistContext:
    """This process's place in a multi-process run, and the collectives the trainer needs.

    ``device`` is where collective tensors must live: the rank's GPU under nccl, the CPU under
    gloo."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints and logs."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of a global batch of ``n`` samples."""
        if n % self.world:
            raise ConfigError(f"train.batch_size = {n} does not split evenly over {self.world} "
                              f"processes; choose a multiple of {self.world}")
        k = n // self.world
        return slice(self.rank * k, (self.rank + 1) * k)

    def epoch_rng(self, seed: int, epoch: int) -> np.random.Generator:
        """This rank's generator for an epoch's corruption noise (resumable: no saved state)."""
        return np.random.default_rng([seed, epoch, self.rank])

    def epoch_torch_seed(self, seed: int, epoch: int) -> int:
        """This rank's torch seed for an epoch (dropout, the embeddings' sampling noise)."""
        return int(np.random.SeedSequence([seed, epoch, self.rank, 1]).generate_state(1)[0])

    def sum_(self, x: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of ``x`` over ranks (on every rank)."""
        t = x.to(self.device).clone()
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return t.to(x.device)

    def mean_values(self, values: dict[str, float]) -> dict[str, float]:
        """Per key, the mean over ranks (every rank holds the same keys)."""
        keys = sorted(values)
        t = self.sum_(torch.tensor([values[k] for k in keys], dtype=torch.float64))
        return {k: float(v) / self.world for k, v in zip(keys, t.tolist(), strict=True)}

    def agree(self, flag: bool, what: str) -> bool:
        """``flag`` when every rank holds the same; otherwise a ``ConfigError`` on every rank."""
        n = int(self.sum_(torch.tensor([int(flag)], dtype=torch.int64))[0])
        if n not in (0, self.world):
            raise ConfigError(f"{what}: true on {n} of {self.world} processes")
        return bool(n)

    @torch.no_grad()
    def average_buffers(self, model: torch.nn.Module) -> None:
        """Replace every floating-point buffer by its mean over ranks (one all-reduce).

        Batch-norm running statistics and the dependency EMA are updated from each rank's own
        share of the batch; the mean is their value over the whole batch's shares. Integer
        buffers (batch-norm step counts) are already equal on every rank."""
        bufs = [b for b in model.buffers() if b.is_floating_point()]
        if not bufs:
            return
        flat = self.sum_(torch.cat([b.detach().reshape(-1).double() for b in bufs]))
        flat /= self.world
        i = 0
        for b in bufs:
            b.copy_(flat[i : i + b.numel()].view_as(b).to(b.dtype))
            i += b.numel()

    def merge_rows(self, history: dict[str, Any], touched: np.ndarray) -> None:
        """Give every rank the per-sample values each rank updated this epoch (in place).

        ``history`` maps a name to numpy arrays or tensors over the train split; ``touched``
        marks the rows this rank updated. An epoch visits each sample once, so exactly one rank
        updated a touched row and the sum over ranks is its value."""
        mask = torch.from_numpy(touched)
        count = self.sum_(mask.to(torch.int32))
        for h in history.values():
            t = torch.as_tensor(h)
            own = torch.where(mask.to(t.device), t, torch.zeros_like(t))
            merged = torch.where(count.to(t.device) > 0, self.sum_(own), t)
            if isinstance(h, np.ndarray):
                h[:] = merged.numpy()
            else:
                h.copy_(merged)


def init_from_env(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT): nccl when training on CUDA, gloo on CPU."""
    missing = [k for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if k not in os.environ]
    if missing:
        raise ConfigError(f"{', '.join(missing)} not set: start workers through torchrun "
                          "(udml train CONFIG --nproc N does)")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    tdist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                             rank=rank, world_size=world)
    return DistContext(rank, world, local, device)


def wrap(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """``model`` under DDP: its gradients are averaged over ranks in the backward pass.

    Buffers are not broadcast from rank 0 before every forward pass (DDP's default): that
    would keep rank 0's statistics only; ``DistContext.average_buffers`` keeps all ranks'."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # torch >= 2.13 names the option forward_sync_buffers (broadcast_buffers is deprecated).
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    no_sync = {"forward_sync_buffers" if newer else "broadcast_buffers": False}
    return DistributedDataParallel(model, device_ids=ids, **no_sync)


def digest(tensors: list[torch.Tensor]) -> str:
    """A short hash of tensors' exact values (equal on two ranks iff bit-identical)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class Trace:
    """What one rank did, written as JSON for checking a run (``--trace DIR``): the rows of
    each step, a hash of the parameters after each step and of all state after each epoch,
    and the checkpoints it wrote."""

    rank: int
    world: int
    rows: list[list[int]] = field(default_factory=list)  # per step, this rank's sample rows
    params: list[str] = field(default_factory=list)  # per step, after the update
    state: list[str] = field(default_factory=list)  # per epoch, parameters and buffers
    scores: list[float] = field(default_factory=list)
    saved: list[str] = field(default_factory=list)

    def step(self, epoch: int, rows: np.ndarray, model: torch.nn.Module) -> None:
        """Called by the trainer after each optimisation step."""
        self.rows.append([int(r) for r in rows])
        self.params.append(digest(list(model.parameters())))

    def epoch(self, epoch: int, model: torch.nn.Module, score: float) -> None:
        """Called by the trainer after each validation."""
        self.state.append(digest(list(model.state_dict().values())))
        self.scores.append(score)

    def saved_checkpoint(self, path: Path) -> None:
        """Called by the trainer after it wrote a checkpoint or the resume state."""
        self.saved.append(str(path))

    def write(self, folder: Path) -> Path:
        """``folder/rank<R>.json``."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"rank{self.rank}.json"
        path.write_text(json.dumps(vars(self)))
        return path


# ---- launching ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchSpec:
    """How many processes, on how many machines (torchrun's options of the same names)."""

    nproc: int = 1  # processes on this machine
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int | None = None  # None with one node: torchrun picks a free port
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def world(self) -> int:
        """Processes in all (the same on every node)."""
        return self.nproc * self.nnodes


def torchrun_command(config: Path, overrides: dict[str, Any], resume: bool, spec: LaunchSpec,
                     trace: Path | None = None) -> list[str]:
    """The torchrun command line that starts this machine's workers."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={spec.nproc}",
           "--max-restarts=0"]
    if spec.nnodes == 1 and spec.master_port is None:
        cmd.append("--standalone")  # a local rendezvous on a free port: runs never collide
    else:
        cmd += [f"--nnodes={spec.nnodes}", f"--node-rank={spec.node_rank}",
                f"--master-addr={spec.master_addr}", f"--master-port={spec.master_port or 29500}"]
    cmd += ["-m", __name__, str(config), "--overrides", json.dumps(overrides),
            "--timeout", str(spec.timeout_s)]
    if not resume:
        cmd.append("--no-resume")
    if trace is not None:
        cmd += ["--trace", str(trace)]
    return cmd


def launch(config: Path, overrides: dict[str, Any], resume: bool, spec: LaunchSpec,
           trace: Path | None = None) -> TrainResult | None:
    """Train ``config`` in ``spec.world`` processes; wait for this machine's to finish.

    Returns the run's ``TrainResult`` on node 0 (read back from the checkpoints rank 0 wrote)
    and None on the other nodes. A failed rank stops every rank (torchrun ends this machine's;
    the others fail their next collective) and raises ``UdmlError``."""
    from udml_stream.model import checkpoint
    from udml_stream.train.config import load_config
    from udml_stream.train.trainer import TrainResult

    if spec.nproc < 1 or spec.nnodes < 1 or not 0 <= spec.node_rank < spec.nnodes:
        raise ConfigError(f"--nproc {spec.nproc} --nnodes {spec.nnodes} --node-rank "
                          f"{spec.node_rank}: expected nproc, nnodes >= 1 and 0 <= node-rank < nnodes")
    cfg = load_config(config, overrides)  # a bad config fails here, before any process starts
    tc = cfg.train
    if tc.batch_size % spec.world:
        raise ConfigError(f"train.batch_size = {tc.batch_size} does not split evenly over "
                          f"{spec.world} processes; choose a multiple of {spec.world}")
    cores = os.cpu_count() or 1
    if tc.threads * spec.nproc > cores:
        log.warning("train.threads = %d in each of %d processes on %d cores: the ranks will "
                    "compete (set train.threads = %d)", tc.threads, spec.nproc, cores,
                    max(1, cores // spec.nproc))
    cmd = torchrun_command(config, overrides, resume, spec, trace)
    # torchrun would set 1 (with a banner); train.threads, when set, decides in each rank anyway.
    env = {"OMP_NUM_THREADS": str(tc.threads or max(1, cores // spec.nproc)), **os.environ}
    log.info("starting %d of %d processes: %s", spec.nproc, spec.world, " ".join(cmd))
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, env=env, check=False).returncode
    if rc != 0:
        raise UdmlError(f"distributed training failed (torchrun exit status {rc}); the failing "
                        "rank's error is printed above")
    if spec.node_rank != 0:
        return None
    out = Path(tc.out_dir)
    meta = checkpoint.read_meta(out / "best")
    state = torch.load(out / "train_state.pt", map_location="cpu", weights_only=True)
    return TrainResult(out / "best", int(meta["epoch"]),
                       float(meta.get("val_acc_ungated", meta["val_acc"])),
                       json.loads(state["history"]), time.perf_counter() - t0)


# ---- the worker -----------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m udml_stream.train.distributed",
        description="One rank of a distributed `udml train` (start it through torchrun).")
    p.add_argument("config", type=Path)
    p.add_argument("--overrides", default="{}", help="JSON object of dotted config overrides")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help="seconds a collective waits for the other ranks")
    p.add_argument("--trace", type=Path, default=None,
                   help="write what each rank trained on and its weight hashes here")
    return p.parse_args(argv)


@record  # torchrun's failure summary then shows the failing rank's traceback
def main(argv: list[str] | None = None) -> int:
    """Worker entry point: train as one rank of the group torchrun set up."""
    from udml_stream.model.device import resolve_device
    from udml_stream.train.config import load_config
    from udml_stream.train.trainer import train

    args = _parse(argv)
    rank = int(os.environ.get("RANK", "0"))
    # Logs once: the other ranks report warnings and errors only.
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s %(levelname)s rank {rank} %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        cfg = load_config(args.config, json.loads(args.overrides))
        ctx = init_from_env(resolve_device(cfg.train.device), args.timeout)
    except UdmlError as err:
        log.error("%s", err)
        return 2
    trace = Trace(ctx.rank, ctx.world) if args.trace is not None else None
    try:
        train(cfg, resume=not args.no_resume, progress=ctx.is_main, dist=ctx, observer=trace)
        if trace is not None:
            trace.write(args.trace)
        # Leave together: rank 0 still calibrates and writes the checkpoint when the others
        # return, and a rank tearing its gloo group down while a peer still holds the
        # connection was seen to abort ("terminate called without an active exception").
        tdist.barrier()
    except UdmlError as err:
        log.error("%s", err)
        return 2
    finally:
        tdist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
