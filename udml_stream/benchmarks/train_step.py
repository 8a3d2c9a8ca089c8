"""Training-step and evaluation-batch speed of the default model on CPU, against a baseline.

The baseline is the same model and the same numbers computed the earlier way: contiguous (NCHW)
convolution weights and ``torch.stft`` for the log-mel features. The shipped path uses
channels-last convolutions and a framed ``rfft`` log-mel (identical features, tested). Both run
in the same process, interleaved round by round, and the medians are compared (machines here
are shared and noisy).
"""

from __future__ import annotations

import platform
import time
import types
from typing import Any

import numpy as np
import torch

from udml_stream.model.fusion import FusionNet, ModelConfig
from udml_stream.model.loss import compute_loss
from udml_stream.model.preprocess import ImagePrep, LogMelPrep
from udml_stream.train.config import DEFAULT_ENCODERS


def reference_log_mel(self: LogMelPrep, x: torch.Tensor) -> torch.Tensor:
    """The log-mel of ``LogMelPrep`` computed with ``torch.stft`` (the baseline)."""
    spec = torch.stft(x, self.n_fft, self.hop, window=self.window, return_complex=True)
    return torch.log(torch.matmul(self.fb, spec.real**2 + spec.imag**2) + 1e-6)


def _models(seed: int) -> dict[str, FusionNet]:
    cfg = ModelConfig(modalities=("image", "audio"),
                      encoders={m: DEFAULT_ENCODERS[m] for m in ("image", "audio")},
                      preprocess={"image": ImagePrep().params(), "audio": LogMelPrep().params()},
                      num_classes=10, method="udml")
    torch.manual_seed(seed)
    shipped = FusionNet(cfg)
    baseline = FusionNet(cfg)
    baseline.load_state_dict(shipped.state_dict())
    baseline.enc.to(memory_format=torch.contiguous_format)
    baseline.embed.to(memory_format=torch.contiguous_format)
    prep = baseline.prep["audio"]
    prep.log_mel = types.MethodType(reference_log_mel, prep)  # type: ignore[method-assign]
    return {"baseline": baseline, "shipped": shipped}


def run(rounds: int = 7, steps: int = 10, train_batch: int = 64, eval_batch: int = 250,
        threads: int = 1, seed: int = 0) -> dict[str, Any]:
    """Median milliseconds per training step and per evaluation batch, for both variants."""
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)

    def inputs(b: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        x = {"image": torch.from_numpy(rng.uniform(0, 255, (b, 28, 28)).astype(np.float32)),
             "audio": torch.from_numpy(0.1 * rng.standard_normal((b, 16000), dtype=np.float32))}
        levels = {m: torch.from_numpy(rng.integers(1, 12, b)) for m in x}
        return x, levels, torch.from_numpy(rng.integers(0, 10, b))

    models = _models(seed)
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in models.items()}
    tr, ev = inputs(train_batch), inputs(eval_batch)
    times: dict[str, dict[str, list[float]]] = {k: {"train": [], "eval": []} for k in models}
    for r in range(rounds + 1):  # round 0 warms up (allocations, kernel selection)
        for name, model in models.items():
            model.train()
            t0 = time.perf_counter()
            for _ in range(steps):
                x, lv, y = tr
                out = model(x, None, lv)
                loss = compute_loss(model, out, y, lv).total
                opts[name].zero_grad(set_to_none=True)
                loss.backward()
                opts[name].step()
            t_train = (time.perf_counter() - t0) / steps
            model.eval()
            t0 = time.perf_counter()
            with torch.no_grad():
                for _ in range(steps):
                    model(ev[0], None, ev[1])
            t_eval = (time.perf_counter() - t0) / steps
            if r:
                times[name]["train"].append(1000 * t_train)
                times[name]["eval"].append(1000 * t_eval)
    med = {k: {p: float(np.median(v)) for p, v in d.items()} for k, d in times.items()}
    return {
        "median_ms": med,
        "speedup": {p: med["baseline"][p] / med["shipped"][p] for p in ("train", "eval")},
        "runs_ms": times,
        "setup": {"train_batch": train_batch, "eval_batch": eval_batch, "threads": threads,
                  "rounds": rounds, "steps_per_round": steps, "machine": platform.machine(),
                  "torch": torch.__version__},
    }


def to_markdown(res: dict[str, Any], command: str) -> str:
    """The table docs/benchmarks.md quotes."""
    m, s, st = res["median_ms"], res["speedup"], res["setup"]
    return "\n".join([
        f"Command: `{command}`", "",
        f"| variant | train step ms (batch {st['train_batch']}) | eval batch ms "
        f"(batch {st['eval_batch']}) |",
        "| --- | --- | --- |",
        f"| baseline: NCHW convolutions, `torch.stft` log-mel | {m['baseline']['train']:.1f} | "
        f"{m['baseline']['eval']:.1f} |",
        f"| shipped: channels-last, framed-rfft log-mel | {m['shipped']['train']:.1f} | "
        f"{m['shipped']['eval']:.1f} |",
        f"| speed-up (baseline / shipped) | {s['train']:.2f}× | {s['eval']:.2f}× |", "",
        f"Setup: {st} (medians of {st['rounds']} interleaved rounds).",
    ])
