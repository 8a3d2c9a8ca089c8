"""The launch file: one TOML table per node, validated with errors that name the key.

```toml
[nodes.camera]
program = "camera"          # camera | microphone | fusion
restart = "on-failure"      # never | on-failure | always
source = "0"                # device index, video file or stream URL
endpoint = "tcp://127.0.0.1:5601"

[security]                  # optional; see docs/security.md
curve = true                # CurveZMQ on every socket of every node (and of the status view)
keys = "keys"               # from `udml keys generate keys`
```

Binding a TCP endpoint beyond loopback without CURVE is refused unless
``security.plaintext_remote = true`` says so on purpose.

Relative file paths in a launch file (a camera's video file, a microphone's WAV file, the fusion
node's checkpoint, the key folders) are relative to **the launch file's folder**, as in a
training config, so a launch file works from any working directory. Endpoints (``ipc://`` paths
included), device indices and URLs are not file paths and are used as written. Defaults
(``checkpoints/default``, ``keys``) and ``--set`` overrides are relative to the working
directory, like any path typed in a shell.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from udml_stream import modalities
from udml_stream.errors import ConfigError
from udml_stream.messages.topics import check_robot_names
from udml_stream.transport.security import Security, configure
from udml_stream.validation import format_validation_error, read_toml


class _Node(BaseModel):
    model_config = ConfigDict(extra="forbid")

    restart: Literal["never", "on-failure", "always"] = "on-failure"
    restart_delay_s: float = Field(0.5, ge=0, description="first restart delay; doubles per "
                                   "failure in a row up to restart_max_delay_s")
    restart_max_delay_s: float = Field(30.0, ge=0)
    stable_after_s: float = Field(10.0, ge=0, description="a run this long resets the backoff")
    max_restarts: int = Field(20, ge=0, description="restarts in a row without a stable run")
    endpoint: str = Field(description="where this node publishes (PUB socket)")
    bind: bool = True
    heartbeat_s: float = Field(1.0, gt=0)


class CameraNode(_Node):
    """A camera capture node."""

    program: Literal["camera"]
    stream: str = "camera"
    source: str = Field(description="device index, video file path or stream URL")
    fps: float | None = Field(None, gt=0, description="pacing for files; default: the file's")
    loop: bool = False
    width: int | None = Field(None, gt=0)
    height: int | None = Field(None, gt=0)
    start_at_unix: float | None = None
    # A camera mounted on its side, upside down or seen through a mirror: the model expects
    # frames the right way up (its pretext gate closes a stream that is not, docs/method.md).
    rotate: Literal[0, 90, 180, 270] = Field(
        0, description="turn each frame this many degrees clockwise (after flip)")
    flip: Literal["none", "horizontal", "vertical"] = Field(
        "none", description="mirror each frame: horizontal = left-right, vertical = top-bottom")


class MicrophoneNode(_Node):
    """A microphone capture node (a PortAudio device or a WAV file played in real time)."""

    program: Literal["microphone"]
    stream: str = "mic"
    source: Literal["device", "file"] = "device"
    device: str | None = Field(None, description="name or index; default: the system default")
    file: Path | None = None
    sample_rate: int = Field(16000, gt=0)
    chunk_ms: float = Field(20.0, gt=0)
    loop: bool = False
    start_at_unix: float | None = None


class FusionNode(_Node):
    """The fusion node."""

    program: Literal["fusion"]
    stream: str = "fused"
    checkpoint: Path = Path("checkpoints/default")
    device: str = "auto"
    # One torch thread: batch-1 inference of the small encoders gains nothing from more, and
    # torch's default (every core) competes with the sensor nodes on the same machine.
    threads: int = Field(1, ge=0, description="torch CPU threads; 0 = torch's default (all cores)")
    subscribe: list[str] = Field(description="endpoints of the sensor nodes")
    streams: dict[str, str] = Field(
        default_factory=lambda: {"image": "camera", "audio": "mic"},
        description="model modality → stream name; a modality not named here reads its "
        "registry default (udml_stream.modalities: image2 → camera2)")
    other_max_age_ms: float = Field(100.0, gt=0, description=(
        "a further camera's newest frame joins a sample when captured within this of the "
        "trigger camera's frame; otherwise that camera is absent for the sample"))
    slop_ms: float = Field(60.0, ge=0)
    audio_lag_ms: float = Field(25.0, ge=0, description=(
        "a frame is fused once the audio reaches this close to its instant (its 1 s window "
        "then ends where the audio ends); 0 = wait up to slop_ms for audio covering it"))
    camera_deadline_ms: float = Field(500.0, gt=0)
    audio_deadline_ms: float = Field(300.0, gt=0)
    fallback_hz: float = Field(10.0, gt=0)
    robots: list[str] = Field(default_factory=list, description=(
        "robots served by this one node; their streams are <robot>/<stream> (empty: one "
        "robot, streams as named in `streams`)"))
    max_batch: int = Field(64, ge=1, description="most samples fused in one forward pass")
    batch_wait_ms: float = Field(0.0, ge=0, description=(
        "how long a due sample may wait for samples of other robots to join its batch"))
    auto_orient: bool = Field(False, description=(
        "turn a camera's frames back before the model when the diagnostics find it turned "
        "(serve.diagnose: logged, and diag.<camera>.applied in the heartbeat); off: only say so"))
    set_aside_late: bool = Field(True, description=(
        "while the diagnostics find a stream running late (it carries an older scene: "
        "diag.<stream>.lag), answer a sample where its answer is the stale one without it "
        "(diag.<stream>.set_aside counts them); off: the conflict rule decides as usual"))
    freeze_ms: float = Field(0.0, ge=0, description=(
        "> 0: a camera whose frames stay identical this long is frozen (its frames are "
        "rejected, the camera goes absent); 0 = off, for sources without sensor noise"))

    @field_validator("streams")
    @classmethod
    def _stream_names(cls, v: dict[str, str]) -> dict[str, str]:
        for m, topic in v.items():
            try:
                modalities.kind_of(m)
            except ConfigError as err:  # pydantic reports ValueErrors with the key
                raise ValueError(str(err)) from None
            if not topic or topic != topic.strip():
                raise ValueError(f"streams.{m} = {topic!r}: expected a non-empty topic name")
        if len(set(v.values())) != len(v):
            raise ValueError(f"streams {v}: two modalities read one topic")
        return v

    @field_validator("robots")
    @classmethod
    def _robot_names(cls, v: list[str]) -> list[str]:
        check_robot_names(v)
        return v


NodeSpec = Annotated[CameraNode | MicrophoneNode | FusionNode, Field(discriminator="program")]
#: The ``program`` values a node table may name (the union's tags).
PROGRAMS = ("camera", "microphone", "fusion")


_LOOPBACK_HOSTS = {"localhost", "lo", "::1", "[::1]"}


def is_loopback(endpoint: str) -> bool:
    """Whether binding ``endpoint`` stays on this host (``ipc://``, ``inproc://``, 127.x, ::1)."""
    if not endpoint.startswith("tcp://"):
        return True
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0]
    return host in _LOOPBACK_HOSTS or host.startswith("127.")


class SecuritySection(BaseModel):
    """The ``[security]`` table: CurveZMQ for every socket the launched programs open."""

    model_config = ConfigDict(extra="forbid")

    curve: bool = Field(False, description="encrypt and authenticate every tcp/ipc socket")
    keys: Path = Field(Path("keys"), description="folder written by `udml keys generate`")
    client: str = Field("client", description="which client key pair this host presents")
    allow: Path | None = Field(None, description="allow-list folder; default <keys>/allowed")
    plaintext_remote: bool = Field(
        False, description="permit binding beyond loopback without CURVE (a trusted network)")

    def load(self) -> Security | None:
        """The key material (None when CURVE is off); a missing key is a ``ConfigError``."""
        return Security.from_keys_dir(self.keys, self.client, self.allow) if self.curve else None


class LaunchFile(BaseModel):
    """A whole launch file."""

    model_config = ConfigDict(extra="forbid")

    nodes: dict[str, NodeSpec]
    status_endpoints: list[str] = Field(default_factory=list,
                                        description="extra endpoints the status view listens to")
    security: SecuritySection = Field(default_factory=SecuritySection)


def is_file_source(source: str) -> bool:
    """Whether a camera ``source`` names a file: not a device index (``0``) nor a URL
    (``rtsp://…``, ``http://…``)."""
    return not (source.strip().isdigit() or "://" in source)


def _node_path_keys(table: dict[str, Any]) -> tuple[str, ...]:
    """The keys of one node table that hold a file or folder path."""
    program = table.get("program")
    if program == "camera":
        src = table.get("source")
        return ("source",) if isinstance(src, str) and is_file_source(src) else ()
    if program == "microphone":
        return ("file",)
    if program == "fusion":
        return ("checkpoint",)
    return ()


def resolve_launch_paths(data: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """Make the relative file paths of a raw launch mapping relative to ``base_dir`` (the launch
    file's folder; in place, returned). Joined and normalised lexically, like a training
    config's paths: ``configs/robot.toml`` naming ``../checkpoints/default`` gives
    ``checkpoints/default`` when run from the checkout. Malformed values are left for
    validation to name."""
    def fix(table: dict[str, Any], key: str) -> None:
        value = table.get(key)
        if isinstance(value, str) and value:
            p = Path(value).expanduser()
            table[key] = str(p) if p.is_absolute() else os.path.normpath(base_dir / p)

    nodes = data.get("nodes")
    for table in nodes.values() if isinstance(nodes, dict) else ():
        if isinstance(table, dict):
            for key in _node_path_keys(table):
                fix(table, key)
    security = data.get("security")
    if isinstance(security, dict):
        fix(security, "keys")
        fix(security, "allow")
    return data


def _file_key(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """A node table's error location without the union tag pydantic puts in it
    (``nodes.cam.camera.rotate`` → ``nodes.cam.rotate``, the key the file has)."""
    if len(loc) > 3 and loc[0] == "nodes" and loc[2] in PROGRAMS:
        return loc[:2] + loc[3:]
    return loc


def parse_launch(data: dict[str, Any], source: str = "<launch>") -> LaunchFile:
    """Validate a launch mapping; errors name the key, the value and the expectation."""
    try:
        launch = LaunchFile.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, _file_key)) from None
    # Anyone who can reach a plaintext socket can read and inject every stream.
    if not (launch.security.curve or launch.security.plaintext_remote):
        for name, spec in launch.nodes.items():
            if spec.bind and not is_loopback(spec.endpoint):
                raise ConfigError(
                    f"{source}: nodes.{name}.endpoint = {spec.endpoint!r} binds beyond this host "
                    "without encryption; bind 127.0.0.1, or set [security] curve = true (see "
                    "docs/security.md), or plaintext_remote = true on a trusted network")
    return launch


def load_launch(path: Path) -> LaunchFile:
    """Load and validate a launch TOML file; its relative file paths are relative to its folder
    (``resolve_launch_paths``)."""
    return parse_launch(resolve_launch_paths(read_toml(path, "launch file"), Path(path).parent),
                        str(path))


def node_adapter() -> TypeAdapter[Any]:
    """A validator for one node table."""
    return TypeAdapter(NodeSpec)


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_string(key)


def _toml_string(text: str) -> str:
    # A TOML basic string: JSON's escapes are TOML's, and DEL must be escaped too.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(v: Any, where: str) -> str:
    """One TOML value for the launch tables' types (strings, paths, numbers, booleans, lists and
    tables of those); anything else is a ``ConfigError`` naming ``where``."""
    if hasattr(v, "item") and not isinstance(v, (list, tuple, dict)):
        v = v.item()  # numpy scalars
    if isinstance(v, Path):
        v = str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float) and math.isfinite(v):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x, f"{where}[{i}]") for i, x in enumerate(v)) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(str(k))} = {_toml_value(x, f'{where}.{k}')}"
                               for k, x in v.items()) + "}"
    raise ConfigError(f"{where} = {v!r}: cannot be written to a launch file (expected a string, "
                      "path, finite number, boolean, or a list or table of those)")


def write_launch(path: Path, nodes: dict[str, dict[str, Any]], comment: str = "") -> LaunchFile:
    """Write a launch file for ``nodes`` (name → node table) after validating it.

    Programs that start nodes (demo, benchmarks, log evaluation) build their launch files here
    rather than by string formatting, so a wrong key fails at once and names itself. Keys whose
    value is None are left out (the node's default applies). Relative file paths in ``nodes``
    are taken as the caller means them, relative to the working directory, and are written
    relative to the file's folder (where ``load_launch`` resolves them); absolute ones stay.
    Returns the launch as ``load_launch`` reads it back.
    """
    folder = Path(path).parent
    lines = [f"# {line}" for line in comment.splitlines()]
    for name, table in nodes.items():
        table = _relative_to(table, folder)
        lines += ["", f"[nodes.{_toml_key(name)}]"]
        lines += [f"{_toml_key(k)} = {_toml_value(v, f'nodes.{name}.{k}')}"
                  for k, v in table.items() if v is not None]
    text = "\n".join(lines).lstrip("\n") + "\n"
    launch = parse_launch(resolve_launch_paths(tomllib.loads(text), folder), str(path))
    Path(path).write_text(text)
    return launch


def _relative_to(table: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``table`` with its relative file paths (relative to the working directory) rewritten
    relative to ``folder``."""
    out = dict(table)
    for key in _node_path_keys({k: str(v) if isinstance(v, Path) else v
                                for k, v in table.items()}):
        value = out.get(key)
        if isinstance(value, (str, Path)) and str(value):
            p = Path(value).expanduser()
            if not p.is_absolute():
                out[key] = os.path.relpath(os.path.abspath(p), os.path.abspath(folder))
    return out


def configure_security(path: Path | None) -> None:
    """Apply the ``[security]`` table of launch file ``path`` to this process's sockets (no
    file: no CURVE, inbound size limits only). Programs call this once in their main."""
    configure(load_launch(path).security.load() if path is not None else None)
