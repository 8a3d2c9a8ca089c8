"""The one base class every udml_stream error derives from."""

from __future__ import annotations


class UdmlError(Exception):
    """Base class of every error raised by udml_stream; the message says what to do next."""


class ConfigError(UdmlError):
    """A configuration value is missing or invalid; the message names the key and what was expected."""


class DatasetError(UdmlError):
    """A data set cannot be built or loaded."""


class CheckpointError(UdmlError):
    """A checkpoint is missing, incomplete or does not match this version of the code."""
