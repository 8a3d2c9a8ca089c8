"""Config plumbing shared by every program: TOML reading, dotted overrides, error messages."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from udml_stream.errors import ConfigError


def format_validation_error(err: ValidationError, source: str,
                            key: Callable[[tuple[Any, ...]], tuple[Any, ...]] = tuple) -> str:
    """``source: dotted.key = value: what was expected``, one line per problem; ``key`` maps
    pydantic's location to the key as the file spells it."""
    return "\n".join(
        f"{source}: {'.'.join(str(p) for p in key(e['loc']))} = {e.get('input')!r}: {e['msg']}"
        for e in err.errors())


def read_toml(path: Path, what: str = "config file") -> dict[str, Any]:
    """Parse a TOML file; a missing or malformed file is a ``ConfigError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} not found")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """``set_dotted(d, "train.seed", 3)`` sets ``d["train"]["seed"] = 3``, creating tables."""
    node = data
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
