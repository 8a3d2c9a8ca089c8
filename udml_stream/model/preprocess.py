"""Preprocessing shared by training, evaluation and the fusion node.

Inputs are sensor-domain float arrays (pixels 0..255, waveform samples, z-scored MFCC frames);
outputs are encoder-ready tensors. The parameters travel in the checkpoint so that a node
preprocesses exactly as training did.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from udml_stream.errors import ConfigError


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular mel filters (HTK mel scale), shape ``[n_mels, n_fft // 2 + 1]``."""

    def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None, :] - lower) / (centre - lower)
    down = (upper - freqs[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


class ImagePrep(nn.Module):
    """Pixels 0..255 (``[B, H, W]`` grey or ``[B, H, W, 3]`` BGR) → ``[B, 1, S, S]`` normalised.

    Non-square frames are centre-cropped to a square first, then area-resized to S×S.
    """

    def __init__(self, size: int = 28, mean: float = 0.13, std: float = 0.3) -> None:
        super().__init__()
        self.size, self.mean, self.std = size, mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.pixels(x) / 255.0 - self.mean) / self.std

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The geometric part alone: crop, grey, resize → ``[B, 1, S, S]`` float pixels 0..255
        (where sensor-domain corruption applies; training from logs stores these)."""
        h, w = (x.shape[1], x.shape[2])
        if h != w:  # a camera frame: centre square crop, so the digit keeps its aspect ratio
            side = min(h, w)
            top, left = (h - side) // 2, (w - side) // 2
            x = x[:, top : top + side, left : left + side]
        x = x.contiguous().float()  # after the crop: camera frames arrive as uint8
        if x.dim() == 4:  # BGR frames from a camera: ITU-R BT.601 luma, one matmul
            x = x @ x.new_tensor([0.114, 0.587, 0.299])
        x = x.unsqueeze(1)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="area")
        return x

    def params(self) -> dict[str, Any]:
        """JSON-serialisable parameters (stored in checkpoints)."""
        return {"kind": "image", "size": self.size, "mean": self.mean, "std": self.std}


class LogMelPrep(nn.Module):
    """Waveform ``[B, N]`` at ``sample_rate`` → standardised log-mel ``[B, 1, n_mels, frames]``."""

    def __init__(
        self,
        sample_rate: int = 16000,
        window_samples: int = 16000,
        n_fft: int = 512,
        hop: int = 256,
        n_mels: int = 32,
        mean: float = 0.0,
        std: float = 1.0,
    ) -> None:
        super().__init__()
        self.sample_rate, self.window_samples = sample_rate, window_samples
        self.n_fft, self.hop, self.n_mels = n_fft, hop, n_mels
        self.mean, self.std = mean, std
        fb = mel_filterbank(sample_rate, n_fft, n_mels, 20.0, sample_rate / 2.0)
        self.register_buffer("fb", torch.from_numpy(fb), persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def log_mel(self, x: torch.Tensor) -> torch.Tensor:
        """Unstandardised log-mel energies ``[B, n_mels, frames]``."""
        # The centred STFT (reflect padding, Hann window) as framing + rfft: the same numbers as
        # torch.stft(center=True) but about 3x faster on CPU, where serving and training run.
        half = self.n_fft // 2
        padded = torch.nn.functional.pad(x.unsqueeze(1), (half, half), mode="reflect").squeeze(1)
        spec = torch.fft.rfft(padded.unfold(-1, self.n_fft, self.hop) * self.window)
        power = spec.real.square() + spec.imag.square()  # [B, frames, bins]
        return torch.log(torch.matmul(power, self.fb.t()) + 1e-6).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((self.log_mel(x) - self.mean) / self.std).unsqueeze(1)

    def params(self) -> dict[str, Any]:
        """JSON-serialisable parameters (stored in checkpoints)."""
        return {
            "kind": "logmel",
            "sample_rate": self.sample_rate,
            "window_samples": self.window_samples,
            "n_fft": self.n_fft,
            "hop": self.hop,
            "n_mels": self.n_mels,
            "mean": self.mean,
            "std": self.std,
        }


class MfccPrep(nn.Module):
    """Z-scored MFCC frames ``[B, T, C]`` → ``[B, C, T, 1]`` (a 1-D sequence as a 2-D map)."""

    def __init__(self, frames: int = 64, coeffs: int = 13) -> None:
        super().__init__()
        self.frames, self.coeffs = frames, coeffs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).unsqueeze(-1)

    def params(self) -> dict[str, Any]:
        """JSON-serialisable parameters (stored in checkpoints)."""
        return {"kind": "mfcc", "frames": self.frames, "coeffs": self.coeffs}


_PREPS: dict[str, type[nn.Module]] = {"image": ImagePrep, "logmel": LogMelPrep, "mfcc": MfccPrep}


def build_prep(params: dict[str, Any]) -> nn.Module:
    """Rebuild a preprocessing module from its ``params()`` dictionary."""
    kw = dict(params)
    kind = kw.pop("kind", None)
    if kind not in _PREPS:
        raise ConfigError(f"preprocess.kind = {kind!r}; expected one of {sorted(_PREPS)}")
    return _PREPS[kind](**kw)


def fit_logmel_stats(prep: LogMelPrep, waves: np.ndarray) -> None:
    """Set ``prep``'s standardisation from clean training waveforms (one mean and std)."""
    with torch.no_grad():
        lm = prep.log_mel(torch.from_numpy(np.ascontiguousarray(waves, dtype=np.float32)))
    prep.mean = float(lm.mean())
    prep.std = float(lm.std()) if math.isfinite(float(lm.std())) else 1.0
