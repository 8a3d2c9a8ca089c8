"""Program: publish → receive latency of udml_stream's transport against raw pyzmq (issue 10)."""

from __future__ import annotations

from pathlib import Path

from udml_stream.benchmarks import serving, transport
from udml_stream.benchmarks.report import write_report


def main(out: Path, command: str, n: int = 100, rounds: int = 20, period_ms: float = 2.0) -> str:
    """Run the benchmark, write JSON and Markdown next to ``out`` and its worst ratio into
    ``serving.json`` beside it; return the Markdown."""
    res = transport.run(n=n, rounds=rounds, period_ms=period_ms)
    md = write_report(res, out, transport.to_markdown(res, command))
    serving.merge(out.parent / "serving.json", {"transport_vs_raw_p50": res["worst_ratio_p50"]})
    return md
