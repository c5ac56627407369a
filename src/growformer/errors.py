"""Errors that reach the user as one clear line (the CLI prints them without a traceback)."""


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
