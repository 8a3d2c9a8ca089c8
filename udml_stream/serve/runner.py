"""Run a UDML checkpoint on live synced samples, on CPU or CUDA, with per-stage timings."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from udml_stream.errors import CheckpointError
from udml_stream.model import checkpoint
from udml_stream.model.device import resolve_device

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """The model's answer for one sample, as plain Python values."""

    probs: list[float]
    pred: int
    weights: dict[str, float]  # the effective multiplier of each stream's logits (0 = ignored)
    sigma_hat: dict[str, float]
    present: dict[str, bool]
    preprocess_ns: int
    inference_ns: int


class FusionRunner:
    """Loads a checkpoint once, warms it up, then fuses one sample at a time."""

    def __init__(self, ckpt: Path, device: str = "auto", threads: int = 0) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.device = resolve_device(device)
        self.model, self.meta = checkpoint.load(ckpt, self.device)
        cfg = self.model.cfg
        self.modalities = cfg.modalities
        self.class_names: list[str] = list(self.meta["class_names"])
        audio = next((p for p in cfg.preprocess.values() if p["kind"] == "logmel"), None)
        self.sample_rate = int(audio["sample_rate"]) if audio else 16000
        self.window_samples = int(audio["window_samples"]) if audio else 16000
        if cfg.spec.quality == "oracle":
            raise CheckpointError(f"{ckpt} is an oracle model: it needs the true noise levels "
                                  "and cannot serve live streams")
        kinds = {m: p["kind"] for m, p in cfg.preprocess.items()}
        if set(kinds.values()) - {"image", "logmel"}:
            raise CheckpointError(f"{ckpt} takes {kinds}; live serving needs camera frames and "
                                  "waveforms (a raw-track checkpoint: image + logmel)")

    def warm_up(self, frame_shape: tuple[int, ...] = (480, 640, 3), runs: int = 5) -> float:
        """Run a few dummy samples (allocations, kernel selection); returns the last latency in s."""
        frame = np.zeros(frame_shape, np.uint8)
        audio = np.zeros(self.window_samples, np.float32)
        t = 0.0
        for _ in range(runs):
            t0 = time.perf_counter()
            self.predict({"image": frame, "audio": audio})
            t = time.perf_counter() - t0
        log.info("warm-up on %s: %.1f ms per sample", self.device, 1000 * t)
        return t

    @torch.no_grad()
    def predict(self, inputs: dict[str, np.ndarray | None]) -> Prediction:
        """Fuse one sample; a modality that is None (or missing) is absent (weight 0)."""
        t0 = time.perf_counter_ns()
        raw = {
            m: torch.from_numpy(np.ascontiguousarray(
                x, dtype=np.uint8 if x.dtype == np.uint8 else np.float32))[None].to(self.device)
            for m, x in inputs.items() if x is not None and m in self.modalities
        }
        if not raw:
            raise ValueError("no modality present: nothing to fuse")
        # Gaps arrive as NaN samples: a mostly missing window makes its stream absent.
        valid = self.model.input_valid(raw)
        tensors = {m: self.model.prep[m](x) for m, x in raw.items()}
        t1 = time.perf_counter_ns()
        out = self.model(tensors, preprocessed=True, valid=valid)
        probs = torch.softmax(out.logits, dim=1)[0].cpu().numpy()
        t2 = time.perf_counter_ns()
        return Prediction(
            probs=[float(p) for p in probs], pred=int(probs.argmax()),
            weights={m: float(w[0]) for m, w in out.multipliers.items()},
            sigma_hat={m: float(s[0]) for m, s in out.sigma_hat.items() if m in tensors},
            present={m: bool(p[0]) for m, p in out.present.items()},
            preprocess_ns=t1 - t0, inference_ns=t2 - t1,
        )
