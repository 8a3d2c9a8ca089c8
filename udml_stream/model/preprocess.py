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

    ``norm = "fixed"`` (the benchmark's) divides by 255 and standardises with one mean and std,
    so a dim or washed-out frame looks nothing like training data. ``norm = "frame"`` (the field
    model's) first stretches each frame's own 1st..99th percentile range to 0..255, dividing by
    at least ``min_contrast`` pixel levels: a dim or bright frame of a digit looks like a normal
    one, while a flat frame (black, covered, uniform grey) stays flat instead of turning its
    sensor noise into a full-contrast pattern.

    ``polarity = "auto"`` turns a frame whose border is bright into its negative: the model
    learnt light digits on a dark ground (MNIST), while a digit written on paper is dark ink on
    a light ground. The border (the outer ``BORDER`` pixels at model resolution) is the ground
    in both; its median, not its mean, decides, so a bright blob on part of it does not; and it
    must be light as sent, not only after the stretch (``light_ground``).
    ``"as_is"`` (checkpoints before it) leaves every frame as it came.
    """

    #: Width of the border ring read by ``polarity = "auto"`` (model-resolution pixels), and
    #: the grey level (of 255) a light ground exceeds as sent: paper under the dimmest exposure
    #: the field model trained with is about 89, a dark ground at most about 55.
    BORDER, LIGHT_GROUND = 2, 64.0

    def __init__(self, size: int = 28, mean: float = 0.13, std: float = 0.3,
                 norm: str = "fixed", min_contrast: float = 32.0,
                 polarity: str = "as_is") -> None:
        super().__init__()
        if norm not in ("fixed", "frame"):
            raise ConfigError(f"preprocess.image.norm = {norm!r}; expected 'fixed' or 'frame'")
        if polarity not in ("as_is", "auto"):
            raise ConfigError(f"preprocess.image.polarity = {polarity!r}; expected 'as_is' or "
                              "'auto'")
        self.size, self.mean, self.std = size, mean, std
        self.norm, self.min_contrast, self.polarity = norm, min_contrast, polarity
        # The border ring's flat indices at model resolution, once: a boolean mask built and
        # applied per batch cost an allocation and, on CUDA, a host sync (mask indexing asks
        # the device how many pixels it selects). Not in the state dict: derived from ``size``.
        self.register_buffer("border_index", self._ring(size, size), persistent=False)

    @classmethod
    def _ring(cls, h: int, w: int) -> torch.Tensor:
        """Flat indices (row-major) of the outer ``BORDER`` pixels of an ``h`` × ``w`` frame."""
        inner = torch.zeros(h, w, dtype=torch.bool)
        inner[cls.BORDER:-cls.BORDER, cls.BORDER:-cls.BORDER] = True
        return torch.arange(h * w)[~inner.flatten()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalise(self.pixels(x))

    def normalise(self, px: torch.Tensor) -> torch.Tensor:
        """Model-resolution pixels ``[B, 1, S, S]`` (0..255) → standardised encoder input."""
        q = None
        if self.norm == "frame" or self.polarity == "auto":  # one quantile pass serves both
            flat = px.flatten(1)
            q = torch.quantile(flat, flat.new_tensor([0.01, 0.99]), dim=1)  # [2, B]
        light = self.light_ground(px, q) if self.polarity == "auto" else None
        if self.norm == "frame":
            lo = q[0].view(-1, 1, 1, 1)
            span = (q[1] - q[0]).clamp(min=self.min_contrast).view(-1, 1, 1, 1)
            px = ((px - lo) / span).clamp(0.0, 1.0) * 255.0
        if light is not None:
            px = torch.where(light[:, None, None, None], 255.0 - px, px)
        return (px / 255.0 - self.mean) / self.std

    def light_ground(self, px: torch.Tensor, q: torch.Tensor | None = None) -> torch.Tensor:
        """``[B]`` bool: whether each frame's border (its ground), as the camera sent it, is
        light: its median above ``LIGHT_GROUND`` and above the frame's own middle grey (the
        midpoint of its 1st and 99th percentiles), and most of the frame lighter than that
        middle grey too (ink is thin; paper is most of the picture). All three, because a dark
        ground that a dark object covers in part is the brightest thing left in its frame
        (occlusion), and a camera's auto-exposure can lift a dark ground well above black.
        ``q``: the frames' 1st and 99th percentiles ``[2, B]``, if already computed."""
        flat = px.flatten(1)
        if q is None:
            q = torch.quantile(flat, flat.new_tensor([0.01, 0.99]), dim=1)
        h, w = px.shape[-2:]
        ring = (self.border_index if (h, w) == (self.size, self.size)
                else self._ring(h, w).to(px.device))
        ground = flat.index_select(1, ring).median(dim=1).values
        middle = 0.5 * (q[0] + q[1])
        return ((ground > self.LIGHT_GROUND) & (ground > middle)
                & (flat.median(dim=1).values > middle))

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
        return {"kind": "image", "size": self.size, "mean": self.mean, "std": self.std,
                "norm": self.norm, "min_contrast": self.min_contrast, "polarity": self.polarity}


#: Above this share of missing (NaN) samples in its window, a waveform stream counts as absent.
MISSING_ABSENT_FRACTION = 0.5


def valid_fraction(x: torch.Tensor) -> torch.Tensor:
    """Per sample, the share of a sensor-domain stream that holds measurements (not NaN), ``[B]``."""
    if not x.is_floating_point():  # camera frames arrive as uint8: nothing can be missing
        return torch.ones(x.shape[0], device=x.device)
    return 1.0 - torch.isnan(x.flatten(1)).float().mean(dim=1)


class LogMelPrep(nn.Module):
    """Waveform ``[B, N]`` at ``sample_rate`` → standardised log-mel ``[B, 1, n_mels, frames]``.

    NaN samples are missing (a gap in the stream, see ``udml_stream.sync``): the STFT frames
    that touch one are set to the feature value of silence, never computed from filled-in zeros.

    Two front-ends:
      * reference (``floor_dbfs=None``): ``log(power + 1e-6)``, standardised with one mean and
        std. Digital silence lands far below anything in noisy training data (the failure this
        project measured: a 50 ms run of zeros took the audio stream's accuracy from 97% to 26%).
      * robust (``floor_dbfs`` set): energies in dB above the energy a white noise at
        ``floor_dbfs`` RMS would put in each band, so silence is exactly 0 dB and nothing falls
        below it. With ``range_db`` set, each window is gain-normalised: a window whose loudest
        band lies more than ``range_db`` above the floor is lowered so that it lies exactly
        ``range_db`` above, and everything more than ``range_db`` below it is cut to 0; a window
        quieter than that keeps its level (the floor is never lifted). The same word at −46 or
        −6 dBFS gives the same features (speech at −46 dBFS peak lies 52–58 dB above the floor),
        while a silent window stays silent.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        window_samples: int = 16000,
        n_fft: int = 512,
        hop: int = 256,
        n_mels: int = 32,
        mean: float = 0.0,
        std: float = 1.0,
        floor_dbfs: float | None = None,
        range_db: float | None = None,
    ) -> None:
        super().__init__()
        self.sample_rate, self.window_samples = sample_rate, window_samples
        self.n_fft, self.hop, self.n_mels = n_fft, hop, n_mels
        self.mean, self.std = mean, std
        self.floor_dbfs, self.range_db = floor_dbfs, range_db
        fb = mel_filterbank(sample_rate, n_fft, n_mels, 20.0, sample_rate / 2.0)
        window = torch.hann_window(n_fft)
        self.register_buffer("fb", torch.from_numpy(fb), persistent=False)
        self.register_buffer("window", window, persistent=False)
        # Band energy of white noise at floor_dbfs RMS: σ²·Σw² per rfft bin, summed by the filter.
        floor = 10.0 ** ((floor_dbfs if floor_dbfs is not None else -100.0) / 10.0)
        band_floor = floor * float(window.square().sum()) * torch.from_numpy(fb).sum(dim=1)
        self.register_buffer("band_floor", band_floor, persistent=False)

    def _missing_frames(self, missing: torch.Tensor) -> torch.Tensor:
        """``[B, frames]`` True where a frame's analysis window touches a missing sample."""
        half = self.n_fft // 2
        m = torch.nn.functional.pad(missing.float().unsqueeze(1), (half, half), mode="reflect")
        return m.squeeze(1).unfold(-1, self.n_fft, self.hop).amax(dim=-1) > 0

    def log_mel(self, x: torch.Tensor) -> torch.Tensor:
        """Unstandardised log-mel energies ``[B, n_mels, frames]``."""
        missing = torch.isnan(x)
        has_missing = bool(missing.any())
        if has_missing:
            x = x.masked_fill(missing, 0.0)
        # The centred STFT (reflect padding, Hann window) as framing + rfft: the same numbers as
        # torch.stft(center=True) but about 3x faster on CPU, where serving and training run.
        half = self.n_fft // 2
        padded = torch.nn.functional.pad(x.unsqueeze(1), (half, half), mode="reflect").squeeze(1)
        spec = torch.fft.rfft(padded.unfold(-1, self.n_fft, self.hop) * self.window)
        power = spec.real.square() + spec.imag.square()  # [B, frames, bins]
        mel = torch.matmul(power, self.fb.t())  # [B, frames, n_mels]
        if self.floor_dbfs is None:
            out = torch.log(mel + 1e-6)
            # Not log(1e-6): that is the digital-silence value this front-end cannot cope with;
            # the training mean standardises to 0, a neutral "no evidence".
            silence = self.mean
        else:
            out = 10.0 * torch.log10(mel / self.band_floor + 1.0)  # dB above the floor, ≥ 0
            if self.range_db is not None:
                r = self.range_db
                peak = out.amax(dim=(1, 2), keepdim=True).clamp(min=r)
                out = (out - peak + r).clamp(min=0.0) / r
            else:
                out = out / 100.0
            silence = 0.0
        if has_missing:
            out = out.masked_fill(self._missing_frames(missing).unsqueeze(-1), silence)
        return out.transpose(1, 2)

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
            "floor_dbfs": self.floor_dbfs,
            "range_db": self.range_db,
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
    lm = lm[torch.isfinite(lm)]
    prep.mean = float(lm.mean())
    prep.std = float(lm.std()) if math.isfinite(float(lm.std())) else 1.0
