"""The modality registry: one entry per *kind* of stream, and the rule that names streams.

A **kind** (``image``, ``audio``, ``mfcc``) says everything the pipeline needs to know about a
sort of sensor: which wire message carries it and in which encodings, how it is synchronised
(a *trigger* stream such as a camera, whose frames each ask for a result; a continuous *window*
such as audio, cut at a trigger's instant; or ``none`` for offline-only features), its
preprocessing kind (``model.preprocess``), its default encoder, the key of its degradation
families in ``corrupt.FAMILIES``, its viewer schema and the default topic of its sensor node.

A **stream** (a modality instance) is a *name* plus its kind: ``image`` and ``image2`` are two
cameras (kind ``image``), ``audio`` the microphone (kind ``audio``). Model checkpoints, data
splits and launch files speak of stream names; everything kind-specific is looked up here.

Naming rule (``kind_of``), first match wins:

1. an explicit table (``{"front": "image"}``: a data preset's ``kinds``, or the kinds a
   checkpoint's preprocessing implies, see ``kinds_from_preprocess``);
2. the name itself, when it is a registered kind (``image``, ``audio``);
3. the name with a trailing number removed (``image2`` → ``image``, ``audio_3`` → ``audio``).

So checkpoints trained before the registry existed (modalities ``["image", "audio"]``) resolve
unchanged, and a second camera needs no table at all. A stream's default topic follows the same
suffix: ``image`` → ``camera``, ``image2`` → ``camera2``.

This module imports nothing beyond the standard library: capture, transport and sync code read
it, and they must start without torch (or numpy).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from udml_stream.errors import ConfigError

Sync = Literal["trigger", "window", "none"]


@dataclass(frozen=True)
class ModalityKind:
    """One kind of stream: what every layer needs to know about it."""

    name: str  # the kind's name, also the stream name of its first instance
    message: str | None  # wire message kind (``codec.KINDS``) it arrives in; None: offline only
    encodings: tuple[str, ...]  # wire encodings accepted (camera pixel formats, ``pcm``)
    sync: Sync  # trigger frame, continuous window, or not synchronised live
    prep: str  # preprocessing kind (``model.preprocess.build_prep``'s ``kind``)
    encoder: str  # default encoder name (``model.encoders``)
    corrupt: str  # key of its degradation families in ``corrupt.FAMILIES``
    viewer: str | None  # viewer (Foxglove) schema of its live channel; None: not shown
    topic: str | None  # default topic of its sensor node (None: no live sensor)

    def families(self) -> tuple[str, ...]:
        """Its degradation families (``corrupt.FAMILIES[self.corrupt]``; imported on demand:
        the corruption library pulls in numpy and OpenCV, which capture code does without)."""
        from udml_stream import corrupt

        return corrupt.families(self.corrupt)


REGISTRY: dict[str, ModalityKind] = {}


def register(kind: ModalityKind) -> ModalityKind:
    """Add a kind; a name already taken is refused (two entries for one kind would disagree)."""
    if kind.name in REGISTRY:
        raise ConfigError(f"modality kind {kind.name!r} is already registered")
    if not re.fullmatch(r"[a-z][a-z_]*[a-z]", kind.name):
        raise ConfigError(f"modality kind {kind.name!r}: expected lower-case letters and '_', "
                          "not ending in a digit (a trailing number names an instance)")
    REGISTRY[kind.name] = kind
    return kind


IMAGE = register(ModalityKind(
    name="image", message="camera_frame", encodings=("bgr8", "rgb8", "mono8"), sync="trigger",
    prep="image", encoder="cnn_image_small", corrupt="image", viewer="foxglove.RawImage",
    topic="camera"))
AUDIO = register(ModalityKind(
    name="audio", message="audio_chunk", encodings=("pcm",), sync="window", prep="logmel",
    encoder="cnn_audio_small", corrupt="audio", viewer="udml.AudioLevel", topic="mic"))
# Recorded speech as MFCC sequences (the ``real`` track): a data-set modality with no sensor.
MFCC = register(ModalityKind(
    name="mfcc", message=None, encodings=(), sync="none", prep="mfcc", encoder="conv1d_mfcc",
    corrupt="mfcc", viewer=None, topic=None))

_SUFFIX = re.compile(r"^(?P<base>.*?)_?(?P<n>\d+)$")


def _split_suffix(name: str) -> tuple[str, str]:
    """``image2`` → (``image``, ``2``); ``audio_3`` → (``audio``, ``_3``); else (name, "")."""
    m = _SUFFIX.match(name)
    if m is None or not m["base"]:
        return name, ""
    return m["base"], name[len(m["base"]):]


def kind_of(name: str, table: Mapping[str, str] | None = None) -> ModalityKind:
    """The kind of stream ``name`` by the naming rule (module docstring); ``ConfigError`` names
    the stream when no rule applies."""
    if table and name in table:
        kind = table[name]
        if kind not in REGISTRY:
            raise ConfigError(f"stream {name!r} is declared of kind {kind!r}; expected one of "
                              f"{sorted(REGISTRY)}")
        return REGISTRY[kind]
    if name in REGISTRY:
        return REGISTRY[name]
    base, _ = _split_suffix(name)
    if base in REGISTRY:
        return REGISTRY[base]
    raise ConfigError(f"stream {name!r} has no modality kind: name it after one of "
                      f"{sorted(REGISTRY)} (optionally numbered, e.g. 'image2') or declare its "
                      "kind explicitly")


def kinds_of(names: Sequence[str], table: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{name: kind name}`` for every stream of ``names``."""
    return {n: kind_of(n, table).name for n in names}


def kinds_from_preprocess(preprocess: Mapping[str, Mapping[str, object]]) -> dict[str, str]:
    """The kind table a checkpoint implies: each modality's preprocessing kind (``logmel``,
    ``image``, ``mfcc``) names exactly one registered kind."""
    by_prep = {k.prep: k.name for k in REGISTRY.values()}
    out: dict[str, str] = {}
    for m, p in preprocess.items():
        prep = p.get("kind")
        if prep not in by_prep:
            raise ConfigError(f"modality {m!r} has preprocessing kind {prep!r}; no registered "
                              f"modality kind preprocesses that (expected one of "
                              f"{sorted(by_prep)})")
        out[m] = by_prep[str(prep)]
    return out


def default_topic(name: str, table: Mapping[str, str] | None = None) -> str:
    """The topic a stream's sensor publishes on by default: its kind's topic with the stream's
    own numbering (``image`` → ``camera``, ``image2`` → ``camera2``); a stream named otherwise
    (through ``table``) publishes under its own name."""
    kind = kind_of(name, table)
    if kind.topic is None:
        raise ConfigError(f"stream {name!r} of kind {kind.name!r} has no live sensor topic")
    if name == kind.name:
        return kind.topic
    base, suffix = _split_suffix(name)
    return kind.topic + suffix if base == kind.name else name


@dataclass(frozen=True)
class Stream:
    """One modality instance of a model: its name (the model's key), kind and topic."""

    name: str
    kind: ModalityKind
    topic: str


def live_streams(names: Sequence[str], topics: Mapping[str, str] | None = None,
                 table: Mapping[str, str] | None = None) -> tuple[Stream, ...]:
    """The streams a live node serves for a model with modalities ``names``: each with the
    topic ``topics`` gives it, else its default topic. ``ConfigError`` for a modality no live
    sensor can feed (``mfcc``) or a topic named for a modality the model lacks."""
    topics = dict(topics or {})
    unknown = sorted(set(topics) - set(names))
    if unknown:
        raise ConfigError(f"streams {unknown} name no modality of the model (it takes "
                          f"{list(names)})")
    out = []
    for n in names:
        kind = kind_of(n, table)
        if kind.sync == "none":
            raise ConfigError(f"modality {n!r} (kind {kind.name!r}) has no live sensor: a "
                              "checkpoint trained on it cannot serve live streams")
        out.append(Stream(n, kind, topics.get(n) or default_topic(n, table)))
    seen: dict[str, str] = {}
    for s in out:
        if s.topic in seen:
            raise ConfigError(f"modalities {seen[s.topic]!r} and {s.name!r} both read topic "
                              f"{s.topic!r}")
        seen[s.topic] = s.name
    return tuple(out)
