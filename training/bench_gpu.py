"""Program: the GPU checks of issue #10 (scripts/gpu-check runs it; exits 2 without CUDA)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from udml_stream.benchmarks import gpu
from udml_stream.benchmarks.report import write_report

CHECKPOINT = Path("checkpoints/default")
EVAL_SET = Path("runs/gpu_check/evalset.npz")


def main(out: Path, command: str, checkpoint: Path = CHECKPOINT,
         eval_set: Path = EVAL_SET) -> str:
    """Run the GPU measurements, write JSON and Markdown next to ``out``; return the Markdown.
    Raises ``gpu.NoCudaError`` (writing nothing) where there is no CUDA device."""
    res = gpu.run(checkpoint, eval_set)
    res["command"] = command
    return write_report(res, out, gpu.to_markdown(res, command))


if __name__ == "__main__":  # python -m training.bench_gpu OUT (from the checkout, no install)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/results/gpu.json")
    try:
        print(main(target, "scripts/gpu-check"))
    except gpu.NoCudaError as err:
        print(err, file=sys.stderr)
        sys.exit(2)
