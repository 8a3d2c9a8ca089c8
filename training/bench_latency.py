"""Program: the end-to-end latency benchmark of the live pipeline."""

from __future__ import annotations

from pathlib import Path

from udml_stream.benchmarks import latency
from udml_stream.benchmarks.report import write_report
from udml_stream.model import checkpoint as ckpt
from udml_stream.train.trainer import load_data_for_checkpoint


def main(checkpoint: Path, cache_dir: Path, seconds: float, out: Path, command: str) -> str:
    """Run the benchmark, write JSON and Markdown next to ``out``; return the Markdown."""
    data = load_data_for_checkpoint(ckpt.read_meta(checkpoint), cache_dir)
    res = latency.run(checkpoint, data, Path("runs/bench_latency"), seconds)
    return write_report(res, out, latency.to_markdown(res, command))
