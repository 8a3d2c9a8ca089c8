"""Programs: ``udml topics``, ``udml echo`` and ``udml hz``."""

from __future__ import annotations

import time

import numpy as np
import typer

from udml_stream.messages import AudioChunk, CameraFrame, Heartbeat, Message
from udml_stream.transport import Subscriber


def _describe(m: Message) -> str:
    fields = {k: v for k, v in vars(m).items() if not isinstance(v, np.ndarray)}
    if isinstance(m, CameraFrame):
        fields["image"] = f"{m.image.dtype}{list(m.image.shape)}"
    elif isinstance(m, AudioChunk):
        fields["samples"] = f"{m.samples.dtype}{list(m.samples.shape)}"
    return f"{type(m).__name__} " + " ".join(f"{k}={v}" for k, v in fields.items())


def rejection_summary(counters: dict[str, int]) -> str:
    """``reason=count`` for every ``rejected.<reason>`` heartbeat counter, largest first."""
    pairs = sorted(((k.removeprefix("rejected."), v) for k, v in counters.items()
                    if k.startswith("rejected.") and v), key=lambda kv: (-kv[1], kv[0]))
    return " ".join(f"{k}={v}" for k, v in pairs)


def diagnosis_summary(counters: dict[str, int]) -> str:
    """The fusion node's active diagnostics (``serve.diagnose``) from its ``diag.*`` heartbeat
    counters, robot by robot in a fleet; empty when none is active."""
    out = []
    for key, v in sorted(counters.items()):
        robot, _, name = key.rpartition("diag.")
        who = robot.removesuffix("/") + ": " if robot else ""
        if name.endswith(".rotate") and v:
            out.append(f"{who}{name.removesuffix('.rotate')} looks turned (turn it {v}° further "
                       "clockwise)")
        elif name.endswith(".lag") and v:
            out.append(f"{who}{name.removesuffix('.lag')} runs {v} result{'s' * (v > 1)} late")
        elif name == "disagree" and v:
            share = counters.get(f"{robot}diag.disagree_permille", 0) / 10
            out.append(f"{who}streams disagree in {share:.0f}% of recent healthy results")
    return "; ".join(out)


def topics(endpoints: list[str], seconds: float) -> None:
    """Listen for ``seconds`` and list every topic with its rate, then what each node that
    sends heartbeats rejected, by reason (its counters since it started)."""
    counts: dict[str, int] = {}
    kinds: dict[str, str] = {}
    beats: dict[str, Heartbeat] = {}
    with Subscriber(endpoints) as sub:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for m in sub.receive(100):
                counts[m.topic] = counts.get(m.topic, 0) + 1
                kinds[m.topic] = type(m).__name__
                if isinstance(m, Heartbeat):
                    beats[m.node] = m
        errors = sub.total_decode_errors
    for t in sorted(counts):
        typer.echo(f"{t:24s} {kinds[t]:14s} {counts[t] / seconds:8.1f} Hz")
    if errors:
        typer.echo(f"({errors} malformed messages dropped here)")
    for node in sorted(beats):
        summary = rejection_summary(beats[node].counters)
        if summary:
            typer.echo(f"{node} rejected: {summary}")
        if beats[node].state == "check":
            typer.echo(f"{node} check: {diagnosis_summary(beats[node].counters)}")
    if not counts:
        typer.echo("no messages heard")


def echo(topic: str, endpoints: list[str], count: int) -> None:
    """Print ``count`` messages of ``topic`` (0 = until Ctrl-C)."""
    seen = 0
    with Subscriber(endpoints, topics=[topic]) as sub:
        while count == 0 or seen < count:
            m = sub.recv_one(1000)
            if m is not None and m.topic == topic:
                typer.echo(_describe(m))
                seen += 1


def hz(topic: str, endpoints: list[str], seconds: float) -> None:
    """Rate and inter-arrival statistics of ``topic`` over ``seconds``."""
    arrivals = []
    with Subscriber(endpoints, topics=[topic]) as sub:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            m = sub.recv_one(100)
            if m is not None and m.topic == topic:
                arrivals.append(time.monotonic())
    if len(arrivals) < 2:
        typer.echo(f"{topic}: {len(arrivals)} messages in {seconds:.1f} s")
        return
    d = np.diff(arrivals) * 1000
    typer.echo(f"{topic}: {(len(arrivals) - 1) / (arrivals[-1] - arrivals[0]):.2f} Hz  "
               f"period mean {d.mean():.1f} ms  std {d.std():.1f} ms  min {d.min():.1f}  "
               f"max {d.max():.1f}  ({len(arrivals)} msgs)")
