"""Encoders registered by name. Each maps a preprocessed tensor to a feature map ``[B, C, H, W]``.

Small encoders train in minutes on two CPU cores (28×28 images, 40-band log-mel spectrograms,
MFCC sequences); ``resnet18`` is the paper-size encoder for 224×224 frames or STFT spectrograms,
selectable by config for GPU users. timm-style: an encoder only computes features; the
probabilistic heads and the fusion head live in the fusion model.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from torch import nn

from udml_stream.errors import ConfigError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register an encoder factory under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = fn
        return fn

    return deco


def available() -> list[str]:
    """Names of all registered encoders."""
    return sorted(_REGISTRY)


def create(name: str, in_channels: int = 1) -> nn.Module:
    """Instantiate the encoder ``name``; it exposes ``out_channels``."""
    if name not in _REGISTRY:
        raise ConfigError(f"encoder = {name!r}; expected one of {available()}")
    return _REGISTRY[name](in_channels=in_channels)


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _Plain(nn.Sequential):
    def __init__(self, *layers: nn.Module, out_channels: int) -> None:
        super().__init__(*layers)
        self.out_channels = out_channels


def _stacked(in_channels: int, widths: tuple[int, ...]) -> _Plain:
    """3×3 conv blocks of ``widths`` channels with a 2× max-pool between each two (the small
    and deep encoders of both kinds: the same stack, three or four blocks deep)."""
    layers: list[nn.Module] = [_conv(in_channels, widths[0])]
    for cin, cout in itertools.pairwise(widths):
        layers += [nn.MaxPool2d(2), _conv(cin, cout)]
    return _Plain(*layers, out_channels=widths[-1])


SMALL, DEEP = (8, 16, 32), (8, 16, 32, 64)


@register("cnn_image_small")
def cnn_image_small(in_channels: int = 1) -> nn.Module:
    """28×28 → 32×7×7: three 3×3 conv blocks, two 2× poolings (~6k parameters)."""
    return _stacked(in_channels, SMALL)


@register("cnn_image_deep")
def cnn_image_deep(in_channels: int = 1) -> nn.Module:
    """28×28 → 64×3×3: four 3×3 conv blocks, three 2× poolings (~25k parameters).

    The field model's image encoder. The embedding averages the last map over space, so the
    small encoder's 7×7 map of 18-pixel receptive fields never sees a whole digit; one more
    block sees all of it. Image-only probe on natural camera views, small vs deep, with and
    without pose jitter: docs/results/image_encoders.md."""
    return _stacked(in_channels, DEEP)


@register("cnn_audio_small")
def cnn_audio_small(in_channels: int = 1) -> nn.Module:
    """32×63 log-mel → 32×8×15: three 3×3 conv blocks, two 2× poolings (~6k parameters)."""
    return _stacked(in_channels, SMALL)


@register("cnn_audio_deep")
def cnn_audio_deep(in_channels: int = 1) -> nn.Module:
    """32×63 log-mel → 64×4×7: ``cnn_image_deep``'s stack on a spectrogram (~25k parameters).

    The small encoder's last map has receptive fields of 18 frames by 18 mel bands (about
    0.3 s), and the embedding averages that map, so no unit hears a whole word; one more block
    hears about 0.6 s and the whole band, as ``cnn_image_deep`` sees a whole digit."""
    return _stacked(in_channels, DEEP)


@register("conv1d_mfcc")
def conv1d_mfcc(in_channels: int = 13) -> nn.Module:
    """MFCC ``[B, 13, T, 1]`` → 64×T/2×1: temporal convolutions (kernel 5 along time)."""

    def block(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, (5, 1), stride=(stride, 1), padding=(2, 0), bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    return _Plain(block(in_channels, 64, 1), block(64, 64, 2), block(64, 64, 1), out_channels=64)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.skip(x))


@register("resnet18")
def resnet18(in_channels: int = 3) -> nn.Module:
    """ResNet-18 (2-2-2-2 basic blocks) trained from scratch, as in the reference (512 channels)."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(True),
        nn.MaxPool2d(3, 2, 1),
    ]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
        cin = cout
    return _Plain(*layers, out_channels=512)
