"""Run a UDML checkpoint on live synced samples, on CPU or CUDA, with per-stage timings."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
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

    def predict(self, inputs: Mapping[str, np.ndarray | None]) -> Prediction:
        """Fuse one sample; a modality that is None (or missing) is absent (weight 0)."""
        return self.predict_batch([inputs])[0]

    @torch.no_grad()
    def predict_batch(self, batch: Sequence[Mapping[str, np.ndarray | None]]
                      ) -> list[Prediction]:
        """Fuse several samples (from one stream or many robots) in one forward pass.

        Each sample is preprocessed on its own (frames may differ in size); a modality that a
        sample lacks is filled with zeros and marked absent for that sample only. The model is
        per-sample in evaluation (batch norm uses its running statistics, the dependency term
        its running mean), so a sample's answer does not depend on its batch mates. The
        preprocessing and inference times reported are the batch's, shared by its samples."""
        if not batch:
            return []
        t0 = time.perf_counter_ns()
        tensors: dict[str, torch.Tensor] = {}
        present: dict[str, torch.Tensor] = {}
        valid: dict[str, torch.Tensor] = {}
        for m in self.modalities:
            rows = [i for i, inputs in enumerate(batch) if inputs.get(m) is not None]
            if not rows:
                continue  # absent from every sample: the model zeroes it
            # Samples whose inputs share a shape go through the front-end together (all audio
            # windows do; frames do when the cameras match); the rest one group each.
            groups: dict[tuple[tuple[int, ...], bool], list[int]] = {}
            for i in rows:
                x = batch[i][m]
                assert x is not None
                groups.setdefault((x.shape, x.dtype == np.uint8), []).append(i)
            out_rows: dict[int, int] = {}
            parts, vparts = [], []
            for (_, is_u8), idx in groups.items():
                raw = torch.from_numpy(np.stack([np.asarray(batch[i][m]) for i in idx]).astype(
                    np.uint8 if is_u8 else np.float32, copy=False)).to(self.device)
                # Gaps arrive as NaN samples: a mostly missing window makes its stream absent.
                vparts.append(self.model.input_valid({m: raw})[m].float())
                parts.append(self.model.prep[m](raw))
                for i in idx:
                    out_rows[i] = len(out_rows)
            x_all, v_all = torch.cat(parts), torch.cat(vparts)
            # Back to batch order; a sample without this modality gets a zero row, marked absent.
            order = torch.tensor([out_rows.get(i, 0) for i in range(len(batch))],
                                 device=self.device)
            has = torch.tensor([i in out_rows for i in range(len(batch))], device=self.device)
            tensors[m] = torch.where(has.view(-1, *[1] * (x_all.dim() - 1)), x_all[order],
                                     torch.zeros((), dtype=x_all.dtype, device=self.device))
            present[m] = has
            valid[m] = torch.where(has, v_all[order], torch.ones((), device=self.device))
        if not tensors or any(not any(x.get(m) is not None for m in self.modalities)
                              for x in batch):
            bad = next(i for i, x in enumerate(batch)
                       if not any(x.get(m) is not None for m in self.modalities))
            raise ValueError(f"sample {bad}: no modality present: nothing to fuse")
        t1 = time.perf_counter_ns()
        out = self.model(tensors, present=present, preprocessed=True, valid=valid)
        probs = torch.softmax(out.logits, dim=1).cpu().numpy()
        mult = {m: w.cpu().numpy() for m, w in out.multipliers.items()}
        sig = {m: s.cpu().numpy() for m, s in out.sigma_hat.items() if m in tensors}
        pres = {m: p.cpu().numpy() for m, p in out.present.items()}
        t2 = time.perf_counter_ns()
        return [Prediction(
            probs=[float(p) for p in probs[i]], pred=int(probs[i].argmax()),
            weights={m: float(w[i]) for m, w in mult.items()},
            # σ̂ of the streams this sample carried (an absent stream's σ̂ means nothing).
            sigma_hat={m: float(s[i]) for m, s in sig.items() if batch[i].get(m) is not None},
            present={m: bool(p[i]) for m, p in pres.items()},
            preprocess_ns=t1 - t0, inference_ns=t2 - t1,
        ) for i in range(len(batch))]
