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


def read_json(path: str | Path, what: str, error: type[GrowformerError] = ConfigError) -> Any:
    """The JSON value in the file ``path``.

    Args:
        path: The file.
        what: What the file is, named in the error ("config file").
        error: The error raised, naming ``what`` and the path, when the file is missing,
            unreadable, not UTF-8 or not valid JSON.
    """
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} {p} does not exist") from None
    except UnicodeDecodeError as e:
        raise error(f"{what} {p} is not UTF-8 text: {e}") from None
    except OSError as e:
        raise error(f"{what} {p} cannot be read: {e.strerror or e}") from None
    except ValueError as e:  # JSONDecodeError, or an integer beyond the 4300-digit limit
        raise error(f"{what} {p} is not valid JSON: {e}") from None
    except RecursionError:
        raise error(f"{what} {p} is nested too deeply") from None
