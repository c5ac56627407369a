"""Errors that reach the user as one clear line (the CLI prints them without a traceback),
and the reading of JSON files that raises them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class GrowformerError(Exception):
    """Base class of every error caused by user input (files, configs, flags, checkpoints)."""


class ArchitectureError(GrowformerError, ValueError):
    """An architecture description is invalid."""


class DataError(GrowformerError, ValueError):
    """A data file or data set cannot be used."""


class ConfigError(GrowformerError, ValueError):
    """A configuration file or option is invalid."""


class CheckpointError(GrowformerError, ValueError):
    """A checkpoint is missing, truncated, corrupt or disagrees with its architecture."""


class SurgeryError(GrowformerError, ValueError):
    """A structural change cannot be applied to the model."""


class ExportError(GrowformerError, ValueError):
    """A model cannot be exported (structure still changing, exporter missing, bad path)."""


class DivergenceError(GrowformerError, ArithmeticError):
    """Training met a non-finite loss or gradient and stopped before it reached the weights."""


def existing_file(path: str | Path, what: str, error: type[GrowformerError] = DataError) -> Path:
    """``path``, checked to be a file that exists (a one-line error naming it otherwise)."""
    path = Path(path)
    if not path.exists():
        raise error(f"{what} {path} does not exist")
    if path.is_dir():
        raise error(f"{what} {path} is a directory, not a file")
    return path


def read_utf8(
    path: str | Path, what: str = "file", error: type[GrowformerError] = DataError
) -> str:
    """Read a whole file as UTF-8 (a leading byte-order mark is dropped).

    Args:
        path: The file.
        what: How error messages call the file, e.g. "data file".
        error: The error raised, naming ``what`` and the path.

    Returns:
        The contents, possibly empty.

    Raises:
        error: The file is missing, a directory, unreadable or not UTF-8.
    """
    path = existing_file(path, what, error)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise error(f"{what} {path} cannot be read: {e.strerror}") from e
    try:
        # utf-8-sig drops the byte-order mark spreadsheet programs put in front of CSV exports.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise error(
            f"{what} {path} is not UTF-8 text (invalid byte 0x{raw[e.start]:02x} on line {line})"
        ) from e


def read_json(path: str | Path, what: str, error: type[GrowformerError] = ConfigError) -> Any:
    """The JSON value in the file ``path`` (errors as :func:`read_utf8`'s, and for text
    that is not valid JSON)."""
    text = read_utf8(path, what, error)
    try:
        return json.loads(text)
    except ValueError as e:  # JSONDecodeError, or an integer beyond the 4300-digit limit
        raise error(f"{what} {path} is not valid JSON: {e}") from None
    except RecursionError:
        raise error(f"{what} {path} is nested too deeply") from None
