"""Run a UDML checkpoint on live synced samples, on CPU or CUDA, with per-stage timings."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from udml_stream import modalities
from udml_stream.errors import CheckpointError
from udml_stream.model import checkpoint
from udml_stream.model.device import resolve_device
from udml_stream.serve.accel import Engine

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
    # The streams' own heads disagreed and the switch rule's conflict rule answered.
    conflict: bool = False
    # Each present stream's openness under all the switch rule's gates (empty for other rules).
    health: dict[str, float] = field(default_factory=dict)
    # The transform the pretext head names for each present stream's input (0: as it came; a
    # camera's k: k quarter turns counter-clockwise), −1 none (``serve.diagnose`` reads both).
    looks: dict[str, int] = field(default_factory=dict)
    # The class each present stream's own head names (``serve.diagnose`` follows them).
    answers: dict[str, int] = field(default_factory=dict)


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
        if self.model.rule.needs_levels:
            raise CheckpointError(f"{ckpt} is an oracle model: it needs the true noise levels "
                                  "and cannot serve live streams")
        # Each modality's kind follows from its preprocessing (the checkpoint's own table),
        # so checkpoints from before the registry resolve unchanged.
        self.kinds: dict[str, str] = modalities.kinds_from_preprocess(cfg.preprocess)
        offline = {m: k for m, k in self.kinds.items() if modalities.REGISTRY[k].sync == "none"}
        if offline:
            raise CheckpointError(f"{ckpt} takes {offline}, which no live sensor sends; live "
                                  "serving needs camera frames and waveforms (a raw-track "
                                  "checkpoint)")
        # Batched inference: eager on CPU; on CUDA, pinned uploads and one captured graph per
        # batch-size bucket (``warm_up`` captures them).
        self.engine = Engine(self.model, self.device)

    def warm_up(self, frame_shape: tuple[int, ...] = (480, 640, 3), runs: int = 5) -> float:
        """Run a few dummy samples (allocations, kernel selection); returns the last latency in s."""
        if self.device.type == "cuda":
            self.engine.warm_up()  # captures each batch bucket's graph
        dummy = {"image": np.zeros(frame_shape, np.uint8),
                 "audio": np.zeros(self.window_samples, np.float32)}
        sample = {m: dummy[k] for m, k in self.kinds.items()}
        t = 0.0
        for _ in range(runs):
            t0 = time.perf_counter()
            self.predict(sample)
            t = time.perf_counter() - t0
        log.info("warm-up on %s: %.1f ms per sample", self.device, 1000 * t)
        return t

    def predict(self, inputs: Mapping[str, np.ndarray | None]) -> Prediction:
        """Fuse one sample; a modality that is None (or missing) is absent (weight 0)."""
        return self.predict_batch([inputs])[0]

    def predict_batch(self, batch: Sequence[Mapping[str, np.ndarray | None]]
                      ) -> list[Prediction]:
        """Fuse several samples (from one stream or many robots) in one forward pass.

        Each sample is preprocessed with the samples whose inputs share its shape (frames may
        differ in size); a modality that a sample lacks is absent for that sample only. The
        model is per-sample in evaluation (batch norm uses its running statistics, the
        dependency term its running mean), so a sample's answer does not depend on its batch
        mates. On CUDA the batch runs as a captured graph of its size bucket (``Engine``).
        The preprocessing and inference times reported are the batch's, shared by its samples."""
        out: list[Prediction] = []
        for start in range(0, len(batch), self.engine.buckets[-1]):
            part = batch[start:start + self.engine.buckets[-1]]
            o = self.engine.predict(part)
            for i, sample in enumerate(part):
                out.append(Prediction(
                    probs=[float(p) for p in o.probs[i]], pred=int(o.probs[i].argmax()),
                    weights={m: float(w[i]) for m, w in o.multipliers.items()},
                    # σ̂ of the streams this sample carried (an absent stream's means nothing).
                    sigma_hat={m: float(sh[i]) for m, sh in o.sigma_hat.items()
                               if sample.get(m) is not None},
                    present={m: bool(p[i]) for m, p in o.present.items()},
                    preprocess_ns=o.preprocess_ns, inference_ns=o.inference_ns,
                    conflict=bool(o.conflict[i]),
                    health={m: float(h[i]) for m, h in o.health.items() if o.present[m][i]},
                    looks={m: int(k[i]) for m, k in o.looks.items() if o.present[m][i]},
                    answers={m: int(a[i]) for m, a in o.answers.items() if o.present[m][i]}))
        return out
