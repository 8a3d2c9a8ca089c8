"""Configs: a bad value names its key, the value and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from udml_stream.errors import ConfigError
from udml_stream.train.config import load_config, parse_config

ALL = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))
CONFIGS = [p for p in ALL if "[nodes." not in p.read_text()]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_validate(path: Path) -> None:
    load_config(path)


def test_bad_value_names_key_value_and_expectation() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"train": {"epochs": -3}}, "x.toml")
    msg = str(err.value)
    assert "x.toml: train.epochs = -3" in msg and "greater than 0" in msg


def test_unknown_method_and_unknown_key() -> None:
    with pytest.raises(ConfigError, match=r"model.method = 'magic'.*expected one of"):
        parse_config({"model": {"method": "magic"}})
    with pytest.raises(ConfigError, match=r"train.epoch = 3.*[Ee]xtra"):
        parse_config({"train": {"epoch": 3}})


def test_overrides_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[train]\nseed = 1\n")
    assert load_config(p, {"train.seed": 5, "model.method": "qmf"}).train.seed == 5
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    p.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)


LAUNCH_FILES = [p for p in ALL if "[nodes." in p.read_text()]


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=[p.name for p in LAUNCH_FILES])
def test_shipped_launch_files_validate(path: Path) -> None:
    from udml_stream.launch.config import load_launch

    assert load_launch(path).nodes


def test_launch_file_errors_name_the_key() -> None:
    from udml_stream.launch.config import parse_launch

    # The key as the file has it (pydantic's location also holds the union tag, "camera").
    with pytest.raises(ConfigError, match=r"nodes\.cam\.fps = -1"):
        parse_launch({"nodes": {"cam": {"program": "camera", "source": "0", "endpoint": "x",
                                        "fps": -1}}}, "l.toml")
    with pytest.raises(ConfigError, match="program"):
        parse_launch({"nodes": {"x": {"program": "teleporter", "endpoint": "x"}}})


def test_portable_paths_make_paths_under_the_root_relative_and_leave_the_rest(tmp_path) -> None:
    from udml_stream.train.config import portable_paths, resolve_paths

    root = tmp_path / "checkout"
    data = {"data": {"cache_dir": str(root / "data_cache"),
                     "logs": {"train": [str(root / "logs" / "*.mcap"), "/elsewhere/a.mcap"]}},
            "train": {"out_dir": str(root / "runs" / "x"), "seed": 3}}
    got = portable_paths(data, root)
    assert got["data"]["cache_dir"] == "data_cache"
    assert got["data"]["logs"]["train"] == ["logs/*.mcap", "/elsewhere/a.mcap"]
    assert got["train"] == {"out_dir": "runs/x", "seed": 3}
    # Resolving from the root gives the same files back.
    assert resolve_paths(got, root)["train"]["out_dir"] == str(root / "runs" / "x")


def test_a_run_stored_before_a_key_was_added_still_resumes() -> None:
    # Each member of the shipped model stores the config it was trained with, from before some
    # keys existed (data.more_digits, train.place_words). Read by today's code the same run
    # must not count as a different one: every key added since sits in ADDED_KEYS with the
    # value that behaves as before.
    import json

    from udml_stream.train.config import absolute_config, training_differences

    root = Path(__file__).parent.parent / "checkpoints" / "default"
    stored = json.loads((root / "members" / "0" / "config.json").read_text())["config"]
    today = absolute_config(parse_config(json.loads(json.dumps(stored))))
    assert training_differences(stored, today) == []
