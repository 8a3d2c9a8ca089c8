"""The ``udml`` command: dataset, training, evaluation, benchmark and demo subcommands."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from udml_stream.errors import UdmlError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="udml_stream: robust real-time multimodal fusion (UDML).")
dataset_app = typer.Typer(no_args_is_help=True, help="Build the AV-Digits benchmark data.")
app.add_typer(dataset_app, name="dataset")

CacheOpt = Annotated[Path, typer.Option(help="Folder of the cached data sets.")]


@app.callback()
def _setup(
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    security: Annotated[Path | None, typer.Option(
        envvar="UDML_SECURITY", help="A launch file whose [security] table (CurveZMQ keys) "
        "every socket of this command uses: record, replay, topics, echo, hz")] = None,
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from udml_stream.launch.config import configure_security

    _run(configure_security, security)


def _parse_set(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UdmlError(f"--set {item!r}: expected KEY=VALUE, e.g. train.seed=3")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _fail(message: str) -> NoReturn:
    """One clear line and exit status 2 (a bad argument)."""
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


def _check_split(split: str, card: Path | None) -> None:
    """The evaluations' ``--split`` (test or val) and ``--card`` (test numbers only)."""
    if split not in ("test", "val"):
        _fail(f"--split {split!r}: expected 'test' or 'val'")
    if card is not None and split != "test":
        _fail("--card needs --split test: the model card reports held-out test numbers")


def _run(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except UdmlError as err:
        _fail(str(err))


@dataset_app.command("build")
def dataset_build(
    track: Annotated[str, typer.Option(help="raw, real or all")] = "raw",
    seed: int = 0,
    cache_dir: CacheOpt = Path("data_cache"),
    force: bool = False,
    sessions: Annotated[Path | None, typer.Option(
        help="Also write the splits as recorded MCAP sessions (camera, mic, label topics) here")
    ] = None,
    preset: Annotated[str, typer.Option(help="With --sessions: the raw-track preset to write")
                      ] = "balanced",
    splits: Annotated[str, typer.Option(help="With --sessions: comma-separated splits")
                      ] = "train,val,test",
) -> None:
    """Build AV-Digits deterministically from SEED and cache it."""
    from udml_stream_apps.training import build_dataset

    tracks = ["raw", "real"] if track == "all" else [track]
    for p in _run(build_dataset.main, tracks, seed, cache_dir, force):
        typer.echo(str(p))
    if sessions is not None:
        for p in _run(build_dataset.sessions, preset, seed, cache_dir, sessions,
                      tuple(s for s in splits.split(",") if s)):
            typer.echo(str(p))


@app.command()
def train(
    config: Path,
    set_: Annotated[list[str], typer.Option("--set", help="Override, e.g. train.seed=3")] = [],  # noqa: B006
    resume: Annotated[bool, typer.Option(help="Resume from out_dir if it holds a run")] = True,
    export: Annotated[Path | None, typer.Option(help="Copy the selected checkpoint here")] = None,
    nproc: Annotated[int, typer.Option(
        help="Processes on this machine: DDP, gloo on CPU, nccl on CUDA (docs/distributed.md)")
                     ] = 1,
    nnodes: Annotated[int, typer.Option(help="Machines taking part (run this command on each)")
                      ] = 1,
    node_rank: Annotated[int, typer.Option(help="This machine's index, 0 .. nnodes-1")] = 0,
    master_addr: Annotated[str, typer.Option(
        help="Address of machine 0, reachable from every machine")] = "127.0.0.1",
    master_port: Annotated[int | None, typer.Option(
        help="Free TCP port on machine 0 (default: 29500 with --nnodes > 1, any free port on one "
             "machine)")] = None,
) -> None:
    """Train a model from a TOML CONFIG (seeded, resumable, validation-selected); with
    --nproc/--nnodes, across processes and machines (DDP)."""
    from udml_stream_apps.training import train as prog

    from udml_stream.train.distributed import LaunchSpec

    spec = LaunchSpec(nproc, nnodes, node_rank, master_addr, master_port)
    res = _run(prog.main, config, _parse_set(set_), resume, export, spec)
    if res is None:
        typer.echo(f"node {node_rank}: done; node 0 holds the checkpoint")
        return
    for i, r in enumerate(res.members):
        typer.echo(f"member {i}: best epoch {r.best_epoch}: val acc {r.best_score:.4f} → "
                   f"{r.best_path}")
    if res.members:
        typer.echo(f"the ensemble of {len(res.members)} fine-tuned members → {res.best_path}")
        return
    typer.echo(f"best epoch {res.best_epoch}: val acc {res.best_score:.4f} → {res.best_path}")


def print_summary(result: dict[str, Any]) -> None:
    """Print an evaluation result as a table."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{result.get('method')} on {result.get('preset')} "
                    f"({result['n_test']} test samples)")
    t.add_column("condition")
    t.add_column("accuracy", justify="right")
    mods = list(result["sweep"])
    for m in mods:
        t.add_column(f"{m} weight", justify="right")
    for name, c in result["conditions"].items():
        t.add_row(name, f"{100 * c['acc']:.1f}%",
                  *[f"{c['weight_share'][m]:.2f}" for m in mods])
    Console().print(t)
    typer.echo(f"clean {100 * result['clean']:.1f}%   corrupted mean "
               f"{100 * result['corrupted_mean']:.1f}%   estimator Spearman "
               + ", ".join(f"{m} {v:.3f}" for m, v in result["spearman"].items()))


@app.command("eval")
def eval_(
    checkpoint: Path,
    cache_dir: CacheOpt = Path("data_cache"),
    seed: int = 0,
    preset: Annotated[str | None, typer.Option(help="Default: the checkpoint's")] = None,
    device: str = "auto",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the result here")] = None,
    limit: Annotated[int, typer.Option(
        help="Quick look: score only the first N test samples (0 = all, as reports do)")] = 0,
) -> None:
    """Score CHECKPOINT on every test sample under every condition."""
    from udml_stream_apps.training import evaluate

    result = _run(evaluate.main, checkpoint, cache_dir, seed, preset, device, limit)
    print_summary(result)
    if json_out:
        json_out.write_text(json.dumps(result, indent=1))


@app.command("eval-field")
def eval_field(
    checkpoint: Path,
    cache_dir: CacheOpt = Path("data_cache"),
    seed: int = 0,
    device: str = "auto",
    out: Annotated[Path | None, typer.Option(
        help="Write OUT.json, OUT.md and OUT_families.png (e.g. docs/results/field)")] = None,
    limit: Annotated[int, typer.Option(help="Score only the first N test samples (0 = all)")] = 0,
    card: Annotated[Path | None, typer.Option(
        help="Store the model card in the checkpoint and write it here (docs/model-card.md)")
    ] = None,
    split: Annotated[str, typer.Option(
        help="test (reports, the card) or val (choosing between training runs: never on test)")
    ] = "test",
) -> None:
    """Field evaluation of CHECKPOINT: natural input, audio gaps, and every degradation family
    at every level against dropping that stream, with the field goals checked."""
    from udml_stream_apps.training import field_eval

    from udml_stream.evaluate.field_report import goals

    _check_split(split, card)
    command = "udml eval-field " + " ".join(sys.argv[2:])
    result = _run(field_eval.main, checkpoint, cache_dir, seed, device, limit, out, command, card,
                  split)
    for goal, measured, ok in goals(result):
        typer.echo(f"{'✓' if ok else '✗'} {goal}: {measured}")


@app.command()
def view(
    endpoints: Annotated[list[str], typer.Argument(
        help="Endpoints of the camera, microphone and fusion nodes")],
    host: Annotated[str, typer.Option(
        help="Address to serve on (loopback by default: the stream is not encrypted)")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="WebSocket port (0 = any free port)")] = 8765,
    image: Annotated[str, typer.Option(
        help="jpeg (foxglove.CompressedImage) or raw (foxglove.RawImage)")] = "jpeg",
    jpeg_quality: Annotated[int, typer.Option(help="JPEG quality 0..100")] = 75,
    max_fps: Annotated[float, typer.Option(
        help="At most this many frames/s per camera (0 = all)")] = 0.0,
    topic: Annotated[list[str], typer.Option(help="Topic name or pattern (repeatable)")] = ["*"],  # noqa: B006
    exclude: Annotated[list[str], typer.Option(help="Pattern to leave out")] = ["hb.*"],  # noqa: B006
    duration: Annotated[float, typer.Option(
        help="Stop after this many seconds (0 = on Ctrl-C)")] = 0.0,
) -> None:
    """Serve the live streams to Foxglove over WebSocket: camera, audio level, σ̂, weights,
    prediction (docs/view.md; layout in configs/foxglove_layout.json)."""
    import math

    from udml_stream.view.server import ViewConfig, serve

    if not math.isfinite(duration) or duration < 0:
        _fail(f"--duration {duration}; expected a number ≥ 0 (0 = until Ctrl-C)")
    cfg = ViewConfig(endpoints, host=host, port=port, topics=topic, exclude=exclude, image=image,
                     jpeg_quality=jpeg_quality, max_fps=max_fps)
    st = _run(serve, cfg, duration)
    typer.echo(f"sent {st.sent}; {st.decode_errors} malformed dropped, {st.dropped_stale} stale "
               "frames dropped")


@app.command()
def ensemble(
    output: Annotated[Path, typer.Argument(help="The new ensemble checkpoint's directory")],
    members: Annotated[list[Path], typer.Argument(help="Two or more checkpoints of one "
                                                  "configuration (seeds of one recipe)")],
) -> None:
    """Serve several trained models as one: the mean of their posteriors (docs/method.md).
    The members are copied into OUTPUT; the fusion node and every evaluation take it."""
    from udml_stream.model import checkpoint as ck

    path = _run(ck.save_ensemble, output, members)
    typer.echo(f"wrote the ensemble of {len(members)} models to {path}")


@app.command()
def recalibrate(
    checkpoint: Annotated[Path, typer.Argument(help="A trained switch-rule checkpoint (one "
                                               "model: an ensemble's member)")],
    cache_dir: CacheOpt = Path("data_cache"),
) -> None:
    """Calibrate the switch rule's gates of CHECKPOINT again, in place, exactly as training
    ends (the same data, seed and families; the pretext head refitted): after a change to how
    the gates are fitted. The classifier is untouched. For an ensemble, recalibrate each
    member's copy, then build the ensemble again with `udml ensemble`."""
    from udml_stream.train.trainer import recalibrate as recal

    new = _run(recal, checkpoint, cache_dir)
    typer.echo(json.dumps(new, indent=1))


@app.command()
def adapt(
    checkpoint: Path,
    logs: Annotated[list[str], typer.Argument(help="Your robot's logs (files or globs); no "
                                               "labels needed")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where the adapted checkpoint "
                                         "goes")],
    steps: Annotated[int, typer.Option(help="Estimator training steps")] = 300,
    batch_size: Annotated[int, typer.Option(help="Samples per step")] = 64,
    lr: Annotated[float, typer.Option(help="Adam learning rate")] = 1e-3,
    seed: int = 0,
) -> None:
    """Fit the health estimator (recalibrate the gates, refit the pretext head) to a robot's
    UNLABELLED logs: its targets are synthetic degradation levels, so no ground truth is
    needed. The classifier is left as validated (docs/own-robot.md)."""
    from udml_stream.train.adapt import adapt_estimator

    rep = _run(lambda: adapt_estimator(checkpoint, logs, output, steps, batch_size, lr, seed))
    typer.echo(f"{rep.samples} samples, {rep.steps} steps: estimator loss {rep.loss_first:.2f} "
               f"→ {rep.loss_last:.2f}; written {rep.output}")


@app.command("eval-adapt")
def eval_adapt(
    checkpoint: Path,
    cache_dir: CacheOpt = Path("data_cache"),
    out: Annotated[Path, typer.Option(help="Write OUT.json and OUT.md")] = Path(
        "docs/results/adapt"),
    steps: Annotated[int, typer.Option(help="udml adapt steps")] = 300,
) -> None:
    """What `udml adapt` gains on a robot whose data CHECKPOINT never saw (the `balanced`
    preset written as recorded sessions): adapt on its unlabelled train logs, score held-out
    labelled logs before and after."""
    from udml_stream_apps.training import adapt_eval

    command = "udml eval-adapt " + " ".join(sys.argv[2:])
    typer.echo(_run(adapt_eval.main, checkpoint, cache_dir, out, command, 1500, 750, steps))


@app.command("eval-unseen")
def eval_unseen(
    checkpoint: Path,
    cache_dir: CacheOpt = Path("data_cache"),
    seed: int = 0,
    out: Annotated[Path | None, typer.Option(
        help="Write OUT.json and OUT.md (e.g. docs/results/unseen)")] = None,
    limit: Annotated[int, typer.Option(help="Score only the first N test samples (0 = all)")] = 0,
    split: Annotated[str, typer.Option(
        help="test (reports) or val (choosing between models or settings: never on test)")
    ] = "test",
    card: Annotated[Path | None, typer.Option(
        help="Add where it breaks to the model card that `eval-field --card` stored in the "
             "checkpoint, and rewrite the card here (docs/model-card.md)")] = None,
) -> None:
    """CHECKPOINT on degradations it was never trained on (JPEG, a tilted camera, a torn frame,
    reverberation, a wrong sample rate, another talker, ...): every test sample degraded in one
    stream, fused against dropping that stream, and whether σ̂ rises."""
    from udml_stream_apps.training import probe_unseen

    _check_split(split, card)
    command = "udml eval-unseen " + " ".join(sys.argv[2:])
    typer.echo(_run(probe_unseen.main, checkpoint, cache_dir, out, command, seed, limit, "cpu",
                    1, split, card))


@app.command("eval-joint")
def eval_joint(
    checkpoint: Path,
    cache_dir: CacheOpt = Path("data_cache"),
    seed: int = 0,
    out: Annotated[Path | None, typer.Option(
        help="Write OUT.json, OUT.md and OUT.png (e.g. docs/results/joint)")] = None,
    limit: Annotated[int, typer.Option(help="Score only the first N test samples (0 = all)")] = 0,
    split: Annotated[str, typer.Option(
        help="test (reports) or val (choosing between models or settings: never on test)")
    ] = "test",
    threads: Annotated[int, typer.Option(help="CPU threads for the model")] = 1,
    card: Annotated[Path | None, typer.Option(
        help="Add the results to the model card that `eval-field --card` stored in the "
             "checkpoint, and rewrite the card here (docs/model-card.md)")] = None,
) -> None:
    """CHECKPOINT with the camera and the microphone broken at once (trained families at levels
    5 and 8, held-out degradations at severities 3 and 5): fused against the better stream
    alone."""
    from udml_stream_apps.training import probe_joint

    _check_split(split, card)
    if threads < 1:
        _fail(f"--threads {threads}: expected a whole number ≥ 1")
    if limit < 0:
        _fail(f"--limit {limit}: expected 0 (all) or a positive number of samples")
    command = "udml eval-joint " + " ".join(sys.argv[2:])
    typer.echo(_run(probe_joint.main, checkpoint, cache_dir, out, command, seed, limit, "cpu",
                    threads, split, card))


@app.command("benchmark-field")
def benchmark_field(
    methods: Annotated[str, typer.Option(help="Comma-separated; default all")] = "",
    seeds: Annotated[str, typer.Option(help="Comma-separated")] = "0,1,2,3,4",
    main_suite: Annotated[bool, typer.Option(
        "--main/--no-main", help="The methods × seeds suite (every family seen)")] = True,
    lofo: Annotated[bool, typer.Option(help="Leave each family out of training, then score it")
                    ] = True,
    config: Annotated[Path, typer.Option(help="The base training config")] = Path(
        "configs/field.toml"),
    set_: Annotated[list[str], typer.Option("--set", help="Override, e.g. train.epochs=10")] = [],  # noqa: B006
    workers: int = 2,
    runs_dir: Path = Path("runs/field_benchmark"),
    cache_dir: CacheOpt = Path("data_cache"),
    out_dir: Path = Path("docs/results"),
) -> None:
    """UDML (both rules) against its peers on natural input, every test sample corrupted, with
    paired per-seed deltas, and leave-one-family-out → docs/results/field_benchmark.{md,json}."""
    from udml_stream_apps.training import field_benchmark

    from udml_stream.evaluate.field_benchmark import FIELD_METHODS

    ms = [m for m in methods.split(",") if m] or list(FIELD_METHODS)
    command = "udml benchmark-field " + " ".join(sys.argv[2:])
    path = _run(field_benchmark.main, ms, [int(s) for s in seeds.split(",") if s], lofo, runs_dir,
                cache_dir, config, out_dir, workers, _parse_set(set_), command, main_suite)
    typer.echo(str(path))


@app.command()
def benchmark(
    presets: Annotated[str, typer.Option(help="Comma-separated")] = "balanced,imbalanced,real",
    methods: Annotated[str, typer.Option(help="Comma-separated; default all")] = "",
    seeds: Annotated[str, typer.Option(help="Comma-separated")] = "0,1,2",
    workers: int = 2,
    runs_dir: Path = Path("runs/benchmark"),
    cache_dir: CacheOpt = Path("data_cache"),
    out_dir: Path = Path("docs/results"),
) -> None:
    """Train and evaluate every preset × method × seed (resumable), then write the report."""
    from udml_stream_apps.training import benchmark as prog

    from udml_stream.evaluate.benchmark import BENCH_METHODS

    ms = [m for m in methods.split(",") if m] or list(BENCH_METHODS)
    cmd = "udml " + " ".join(sys.argv[1:]) if sys.argv[1:] else "udml benchmark"
    path = _run(prog.main, presets.split(","), ms, [int(s) for s in seeds.split(",")],
                runs_dir, cache_dir, out_dir, workers, cmd)
    typer.echo(f"report: {path}")


@app.command("benchmark-logs")
def benchmark_logs(
    preset: str = "balanced",
    method: str = "udml",
    seeds: Annotated[str, typer.Option(help="Comma-separated")] = "0,1,2",
    workers: int = 2,
    cache_dir: CacheOpt = Path("data_cache"),
    sessions_dir: Path = Path("runs/sessions"),
    array_runs: Annotated[Path, typer.Option(
        help="Array-trained runs (resumable; point at runs/benchmark to reuse its runs)")
    ] = Path("runs/from_arrays"),
    log_runs: Path = Path("runs/from_logs"),
    out: Path = Path("docs/results/train_from_logs.json"),
) -> None:
    """Train from AV-Digits MCAP sessions and from the arrays (same seeds) and compare."""
    from udml_stream_apps.training import logs_vs_arrays as prog

    cmd = "udml " + " ".join(sys.argv[1:])
    typer.echo(_run(prog.main, preset, method, [int(s) for s in seeds.split(",")], cache_dir,
                    sessions_dir, array_runs, log_runs, out, workers, cmd))


def _ensure_checkpoint(checkpoint: Path, config: Path, cache_dir: Path) -> None:
    from udml_stream_apps.training import train as prog

    if not (checkpoint / "config.json").exists():
        # One model of the recipe (seed as in the config): the shipped checkpoint is an
        # ensemble of three seeds, which configs/field.toml says how to rebuild.
        typer.echo(f"no checkpoint at {checkpoint}: training one model from {config} (the "
                   "shipped checkpoint is an ensemble of three; configs/field.toml rebuilds it)")
        _run(prog.main, config, {"data.cache_dir": str(cache_dir)}, True, checkpoint)


@app.command()
def demo(
    checkpoint: Path = Path("checkpoints/default"),
    config: Path = Path("configs/field.toml"),
    cache_dir: CacheOpt = Path("data_cache"),
    out_dir: Path = Path("runs/demo"),
    offline: Annotated[bool, typer.Option(help="Only print the offline evaluation summary")] = False,
    pulse: Annotated[bool | None, typer.Option(
        help="Feed the microphone through PulseAudio (default: when a server answers)")] = None,
    record: Annotated[Path | None, typer.Option(
        help="Also record every stream and the labels to this MCAP file")] = None,
) -> None:
    """The main job on its embedded default: an AV-Digits scene played through the live
    camera → microphone → fusion pipeline with scripted degradations, scored per segment."""
    from udml_stream_apps.training import evaluate

    _ensure_checkpoint(checkpoint, config, cache_dir)
    if offline:
        print_summary(_run(evaluate.main, checkpoint, cache_dir, 0, None, "auto"))
        return
    from udml_stream_apps.training import demo as prog

    _run(prog.main, checkpoint, cache_dir, out_dir, pulse, record)


@app.command()
def launch(
    file: Path,
    duration: Annotated[float, typer.Option(help="Stop after this many seconds (0 = until Ctrl-C)")] = 0.0,
    run_dir: Annotated[Path | None, typer.Option(
        help="Node logs go to RUN_DIR/logs/<node>.log (rotated); default runs/launch/<FILE stem>")
    ] = None,
) -> None:
    """Start every node of a launch FILE, restart per policy, show a live status table."""
    from udml_stream_apps.nodes import launch as prog

    raise typer.Exit(_run(prog.main, file, duration, run_dir))


keys_app = typer.Typer(no_args_is_help=True, help="CurveZMQ keys for the [security] table.")
app.add_typer(keys_app, name="keys")


@keys_app.command("generate")
def keys_generate(
    folder: Annotated[Path, typer.Argument(help="Where the keys go (security.keys)")] = Path("keys"),
    client: Annotated[list[str], typer.Option(help="Client key pair name (repeatable)")] = ["client"],  # noqa: B006
    allow: Annotated[bool, typer.Option(help="Add the new clients to FOLDER/allowed")] = True,
) -> None:
    """Write the server key pair (unless present) and client key pairs with zmq.auth; never
    overwrites a key. Copy *.key_secret only to the hosts that use it (see docs/security.md)."""
    from udml_stream.transport.security import generate_keys

    for f in _run(generate_keys, folder, client, allow):
        typer.echo(str(f))


@app.command()
def topics(
    endpoints: Annotated[list[str], typer.Argument(help="Endpoints to listen to")],
    seconds: float = 2.0,
) -> None:
    """List the streams heard on ENDPOINTS with their rates."""
    from udml_stream_apps.nodes import introspect

    _run(introspect.topics, endpoints, seconds)


@app.command()
def echo(
    topic: str,
    endpoints: Annotated[list[str], typer.Argument(help="Endpoints to listen to")],
    count: int = 0,
) -> None:
    """Print messages of TOPIC (headers; payload shapes, not bytes)."""
    from udml_stream_apps.nodes import introspect

    _run(introspect.echo, topic, endpoints, count)


@app.command()
def hz(
    topic: str,
    endpoints: Annotated[list[str], typer.Argument(help="Endpoints to listen to")],
    seconds: float = 5.0,
) -> None:
    """Measure the rate and inter-arrival jitter of TOPIC."""
    from udml_stream_apps.nodes import introspect

    _run(introspect.hz, topic, endpoints, seconds)


@app.command()
def bench(
    what: Annotated[str, typer.Argument(
        help="latency, logs, train-step, frontends, flood, fuzz, attacks, fleet, gpu, view or "
             "transport")
    ] = "latency",
    checkpoint: Path = Path("checkpoints/default"),
    cache_dir: CacheOpt = Path("data_cache"),
    seconds: float = 20.0,
    out: Annotated[Path | None, typer.Option(help="Default: docs/results/<what>.json")] = None,
    config: Annotated[Path, typer.Option(help="frontends: the config trained per front-end")
                      ] = Path("configs/field.toml"),
    epochs: Annotated[int, typer.Option(help="frontends: training epochs per run")] = 6,
    samples_per_epoch: Annotated[int, typer.Option(help="frontends: samples per epoch")] = 3000,
    lr_drop_epoch: Annotated[int, typer.Option(help="frontends: lr × 0.1 from this epoch")] = 5,
    threads: Annotated[int, typer.Option(help="frontends: torch CPU threads")] = 1,
    seed: Annotated[int, typer.Option(help="frontends: training and evaluation seed (all runs)")
                    ] = 0,
    runs_dir: Annotated[Path, typer.Option(help="frontends: one resumable run per front-end")
                        ] = Path("runs/bench_frontends"),
    phase_s: Annotated[float, typer.Option(help="flood: seconds per phase (baseline, flood)")
                       ] = 10.0,
    flood_rate: Annotated[float, typer.Option(help="flood: malformed messages per second")
                          ] = 20_000.0,
    curve: Annotated[bool, typer.Option(help="flood: also run both phases with CURVE on, the "
                                        "flood from an unlisted peer; attacks: also attack "
                                        "CURVE nodes from an unlisted client")] = True,
    subscriptions: Annotated[int, typer.Option(help="attacks: subscription attempts per layout")
                             ] = 200_000,
    hold_s: Annotated[float, typer.Option(help="attacks: seconds a partial frame is held")
                      ] = 3.0,
    minutes: Annotated[float, typer.Option(help="fuzz: about how long to run")] = 10.0,
) -> None:
    """Benchmarks, printed as a table and written to OUT (+ .md): ``latency`` of the live
    pipeline; ``logs``: recording throughput, compression, replay speed and timing;
    ``train-step``: CPU training/evaluation speed of the model against the earlier path;
    ``frontends``: the field model trained with each audio/image front-end (reference, floor,
    robust) at a reduced budget, scored on natural input, gaps and digital zeros; ``flood``: a
    running fusion node's results/s, log lines, memory and rejections under a 20,000 msg/s
    malformed flood against a baseline (and with CURVE); ``fuzz``: tests/test_fuzz.py with a
    large hypothesis budget for about ``--minutes``; ``attacks``: a camera and a fusion node's
    memory under 200,000 subscription attempts and a held partial 1 GiB frame, CURVE off and on;
    ``fleet``: the most robots at 30 fps one batched fusion process sustains against one process
    per robot (``--seconds`` measured per trial); ``gpu``: batch-1 latency eager vs CUDA graph,
    robots per GPU, paper-size training speed and bf16 accuracy (needs a CUDA device; see
    ``scripts/gpu-check``); ``view``: the Foxglove view's CPU next to the recorder's;
    ``transport``: publish → receive p50/p99 of Publisher/Subscriber against raw pyzmq, ipc
    and tcp, 921,600 B and 3,200 B."""
    from udml_stream_apps.training import (
        bench_attacks,
        bench_flood,
        bench_frontends,
        bench_fuzz,
        bench_latency,
        bench_logs,
        bench_train_step,
    )

    cmd = "udml " + " ".join(sys.argv[1:])
    out = out or Path(f"docs/results/{what.replace('-', '_')}.json")
    if what == "latency":
        typer.echo(_run(bench_latency.main, checkpoint, cache_dir, seconds, out, cmd))
    elif what == "logs":
        typer.echo(_run(bench_logs.main, checkpoint, cache_dir, seconds, out, cmd))
    elif what == "train-step":
        typer.echo(_run(bench_train_step.main, out, cmd))
    elif what == "fleet":
        from udml_stream_apps.training import bench_fleet

        typer.echo(_run(bench_fleet.main, checkpoint, seconds, out, cmd))
    elif what == "transport":
        from udml_stream_apps.training import bench_transport

        typer.echo(_run(bench_transport.main, out, cmd))
    elif what == "view":
        from udml_stream_apps.training import bench_view

        typer.echo(_run(bench_view.main, out, cmd, seconds))
    elif what == "gpu":
        from udml_stream_apps.training import bench_gpu

        typer.echo(_run(bench_gpu.main, out, cmd, checkpoint))
    elif what == "frontends":
        from rich.console import Console

        from udml_stream.benchmarks import frontends

        budget = frontends.Budget(epochs, samples_per_epoch, lr_drop_epoch, threads, seed, runs_dir)
        res = _run(bench_frontends.main, config, cache_dir, budget, out, cmd)
        Console().print(frontends.to_table(res))
        typer.echo(frontends.verdict(res))
        typer.echo(f"written: {out} and {out.with_suffix('.md')}")
    elif what == "flood":
        if phase_s <= 0 or flood_rate <= 0:
            _fail("--phase-s and --flood-rate must be positive")
        typer.echo(_run(bench_flood.main, checkpoint, phase_s, flood_rate, curve, out, cmd))
    elif what == "fuzz":
        if minutes <= 0:
            _fail("--minutes must be positive")
        typer.echo(_run(bench_fuzz.main, minutes, out, cmd))
    elif what == "attacks":
        if subscriptions < 2000 or hold_s <= 0:
            _fail("--subscriptions must be at least 2000 and --hold-s positive")
        typer.echo(_run(bench_attacks.main, checkpoint, subscriptions, hold_s, curve, out, cmd))
    else:
        raise typer.BadParameter(f"unknown benchmark {what!r}; expected 'latency', 'logs', "
                                 "'train-step', 'frontends', 'flood', 'fuzz', 'attacks', "
                                 "'fleet', 'gpu', 'view' or 'transport'")


log_app = typer.Typer(no_args_is_help=True, help="Inspect and repair MCAP sensor logs.")
app.add_typer(log_app, name="log")


@app.command()
def record(
    endpoints: Annotated[list[str], typer.Argument(help="Endpoints to record from")],
    output: Annotated[Path, typer.Option("-o", "--output")] = Path("session.mcap"),
    topic: Annotated[list[str], typer.Option(help="Topic name or pattern (repeatable)")] = ["*"],  # noqa: B006
    exclude: Annotated[list[str], typer.Option(help="Pattern to leave out")] = ["hb.*"],  # noqa: B006
    compression: Annotated[str, typer.Option(help="zstd, lz4 or none")] = "zstd",
    split_seconds: float = 0.0,
    split_mb: float = 0.0,
    duration: float = 0.0,
    foxglove: Annotated[bool, typer.Option(help="Also write Foxglove viewer channels")] = False,
    chunk_seconds: Annotated[float, typer.Option(
        help="Close a chunk this long after its first message: a SIGKILL loses at most this "
             "much (0 = on size only)")] = 1.0,
) -> None:
    """Record topics from ENDPOINTS into MCAP with their exact wire frames."""
    import math

    from udml_stream_apps.nodes import record as prog

    from udml_stream.logs import RecorderConfig
    from udml_stream.logs.recorder import validate

    def build() -> RecorderConfig:
        for name, v in (("--duration", duration), ("--split-seconds", split_seconds),
                        ("--split-mb", split_mb), ("--chunk-seconds", chunk_seconds)):
            if not math.isfinite(v) or v < 0:
                raise UdmlError(f"record: {name} {v}; expected a number ≥ 0 (0 = off)")
        cfg = RecorderConfig(endpoints, output, topic, exclude, compression,
                             chunk_seconds=chunk_seconds, split_seconds=split_seconds,
                             split_bytes=int(split_mb * 1e6), foxglove=foxglove)
        validate(cfg)
        return cfg

    for f in _run(prog.main, _run(build), duration):
        typer.echo(str(f))


@app.command()
def replay(
    path: Path,
    endpoint: Annotated[str, typer.Option(help="Where to publish")] = "tcp://127.0.0.1:5610",
    rate: float = 1.0,
    loop: bool = False,
    start: Annotated[float | None, typer.Option(help="Seconds from the log start")] = None,
    end: Annotated[float | None, typer.Option(help="Seconds from the log start")] = None,
    topic: Annotated[list[str] | None, typer.Option(
        help="Only these topics: names or patterns, as `udml record` takes (repeatable)")] = None,
    remap: Annotated[list[str] | None, typer.Option(help="OLD=NEW topic")] = None,
    order: Annotated[str, typer.Option(help="log or capture")] = "log",
    lossless: Annotated[bool, typer.Option(help="Consumer-paced; needs --results")] = False,
    results: Annotated[str | None, typer.Option(help="The fusion node's endpoint")] = None,
    drain: Annotated[float, typer.Option(
        help="Seconds subscribers get to read the tail after the log ends")] = 2.0,
    other_camera: Annotated[list[str] | None, typer.Option(
        help="Lossless: another camera topic, sent before each trigger frame (repeatable)")
    ] = None,
) -> None:
    """Publish a recorded log on its topics (timed, or lossless and consumer-paced)."""
    from udml_stream_apps.nodes import replay as prog

    from udml_stream.logs.replay import ReplayConfig, parse_remap, validate

    def build() -> ReplayConfig:
        cfg = ReplayConfig(path, endpoint, rate=rate, loop=loop, start_s=start, end_s=end,
                           topics=topic, remap=parse_remap(remap or []), order=order,
                           lossless=lossless, results_endpoint=results, drain_s=drain,
                           other_topics=tuple(other_camera or ()))
        validate(cfg)
        return cfg

    typer.echo(prog.summary(_run(prog.main, _run(build))))


def _missing_log(path: Path) -> None:
    raise UdmlError(f"log {path} not found" if not path.exists() else f"{path} is not a file")


@log_app.command("info")
def log_info(path: Path) -> None:
    """Topics, message counts, duration, rates, gaps and drops of a log."""
    from udml_stream.logs import info

    i = _run(info, path)
    state = ("DAMAGED (run `udml log recover`)" if i.damaged
             else "complete" if i.complete else "NO SUMMARY (run `udml log recover`)")
    typer.echo(f"{i.path}: {state}, {i.messages} intact messages, {i.duration_s:.2f} s")
    if i.damaged:
        typer.echo(f"  damaged: {i.damage_summary}")
        for d in i.damage[:20]:
            typer.echo(f"  lost {d.describe()}")
        if len(i.damage) > 20:
            typer.echo(f"  … and {len(i.damage) - 20} more damaged stretches")
    for t, ti in sorted(i.topics.items()):
        dur = max((ti.last_ns - ti.first_ns) / 1e9, 1e-9)
        rate = (ti.messages - 1) / dur if ti.messages > 1 else 0.0
        typer.echo(f"  {t:20s} {ti.kind:14s} {ti.messages:7d} msgs {rate:8.2f} Hz "
                   f"{ti.bytes / 1e6:9.2f} MB  gaps {ti.gaps}  recorder drops {ti.recorded_drops}")


@log_app.command("eval")
def log_eval(
    path: Path,
    checkpoint: Path = Path("checkpoints/default"),
    out_dir: Path = Path("runs/log_eval"),
) -> None:
    """Replay a recorded session losslessly through a fusion node and score it against the
    labels recorded in the log (accuracy per segment, weights over time as a PNG)."""
    from udml_stream_apps.training.demo import print_scores

    from udml_stream.demo.logeval import evaluate_log

    if not path.is_file():
        _run(_missing_log, path)
    res = _run(evaluate_log, path, checkpoint, out_dir)
    print_scores(res["scores"], f"{path}: {res['frames']} frames replayed, {res['results']} "
                                f"results, {res['frames_without_result']} frames without one",
                 live=False)
    typer.echo(f"weights over time: {res['plot']}")


@log_app.command("recover")
def log_recover(path: Path, output: Annotated[Path | None, typer.Option("-o")] = None) -> None:
    """Write a complete, indexed copy of every readable message of a damaged log."""
    from udml_stream.logs import recover

    out = output or path.with_name(path.stem + ".recovered.mcap")
    rep = _run(recover, path, out)
    typer.echo(f"recovered {rep.messages} messages from {rep.chunks_ok} intact chunks into {out}")
    if rep.damage:
        typer.echo(f"skipped {len(rep.damage)} damaged stretch(es) ({rep.chunks_bad} chunks "
                   "failed their CRC; nothing from them was written):")
        for d in rep.damage:
            typer.echo(f"  {d.describe()}")
    if rep.orphan_messages:
        typer.echo(f"skipped {rep.orphan_messages} messages whose channel record was lost")
    if rep.other_encoding:
        typer.echo(f"left out {rep.other_encoding} viewer-channel messages (not udml-wire)")


def _echo_written(written: dict[str, int], skipped: dict[str, int], width: int = 20,
                  suffix: dict[str, str] | None = None) -> None:
    """Messages written per topic (with an optional suffix each), then what was left out."""
    for topic, n in sorted(written.items()):
        typer.echo(f"  {topic:{width}s} {n:7d} msgs{(suffix or {}).get(topic, '')}")
    for what, n in sorted(skipped.items()):
        typer.echo(f"  left out {n}: {what}")


@log_app.command("convert")
def log_convert(
    bag: Path,
    output: Annotated[Path, typer.Option("-o", "--output")],
    map_: Annotated[list[str], typer.Option("--map", help="ROLE=/topic with ROLE image, audio, "
                    "audio_info, label or condition (repeatable)")] = [],  # noqa: B006
    clock: Annotated[str | None, typer.Option(help="Clock of the stamps: realtime (ROS time) "
                     "or monotonic; default: what the bag says, else realtime")] = None,
) -> None:
    """Convert a ROS 2 bag (MCAP or sqlite3 storage) into a udml log (camera, mic, label)."""
    from udml_stream.logs import ros2

    rep = _run(lambda: ros2.convert(bag, output, ros2.parse_map(map_), clock=clock))
    _echo_written(rep.written, rep.skipped, 10,
                  {t: f"  from {src}" for t, src in rep.topics.items()})
    typer.echo(f"wrote {rep.output} (clock {rep.clock})")


@log_app.command("export")
def log_export(
    path: Path,
    output: Annotated[Path, typer.Option("-o", "--output")],
    format_: Annotated[str, typer.Option("--format", help="ros2 or foxglove")] = "ros2",
    storage: Annotated[str, typer.Option(help="ros2: mcap or sqlite3")] = "mcap",
    image: Annotated[str, typer.Option(help="foxglove: jpeg or raw camera frames")] = "jpeg",
) -> None:
    """Write a log as a ROS 2 bag (camera, audio, fusion results, labels), or with
    ``--format foxglove`` as an MCAP copy with Foxglove viewer channels added."""
    from udml_stream.logs import ros2

    if format_ not in ("ros2", "foxglove"):
        _fail(f"--format {format_!r}; expected ros2 or foxglove")
    if not path.is_file():
        _run(_missing_log, path)
    if format_ == "foxglove":
        from udml_stream.logs.foxglove import ViewOptions
        from udml_stream.view import export_foxglove

        frep = _run(lambda: export_foxglove(path, output, ViewOptions(image=image)))
        _echo_written(frep.written, frep.skipped)
        typer.echo(f"wrote {frep.output} ({frep.copied} original records kept)")
        return
    rep = _run(lambda: ros2.export(path, output, storage=storage))
    _echo_written(rep.written, rep.skipped)
    typer.echo(f"wrote {rep.output}")


@app.command("label")
def label_cmd(
    path: Path,
    spans: Annotated[Path, typer.Option(help="CSV start,end,label[,condition]: seconds from "
                     "the log start (log time)")],
    output: Annotated[Path | None, typer.Option("-o", "--output")] = None,
    replace: Annotated[bool, typer.Option(help="Drop the log's own label/condition messages")
                       ] = False,
) -> None:
    """Write a labelled copy of a log (every other record kept byte for byte)."""
    from udml_stream.logs.label import label

    out = output or path.with_name(path.stem + ".labelled.mcap")
    rep = _run(lambda: label(path, spans, out, replace=replace))
    typer.echo(f"{rep.spans} spans → {rep.labels_written} label messages; "
               f"{rep.records_copied} records copied into {rep.output}")


if __name__ == "__main__":
    app()
