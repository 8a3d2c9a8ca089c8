"""Program: the recording and replay benchmark."""

from __future__ import annotations

from pathlib import Path

from udml_stream.benchmarks import logs
from udml_stream.benchmarks.report import write_report
from udml_stream.model import checkpoint as ckpt
from udml_stream.train.trainer import load_data_for_checkpoint


def main(checkpoint: Path, cache_dir: Path, seconds: float, out: Path, command: str) -> str:
    """Run the benchmark, write JSON and Markdown next to ``out``; return the Markdown."""
    data = load_data_for_checkpoint(ckpt.read_meta(checkpoint), cache_dir)
    res = logs.run(data, Path("runs/bench_logs"), seconds)
    return write_report(res, out, logs.to_markdown(res, command))
