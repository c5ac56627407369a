"""Loggers: where a run's records go while it trains, besides its own JSON-lines files.

A :class:`Logger` receives the training loss, the evaluations, the structure after each
change, the structural events and the policy's statistics records, on the writing process
only. :class:`ScalarLogger` turns them into named scalars (one naming for every backend)
and the events into text. Registered by name (``TrainConfig.loggers``): ``csv``
(:class:`CSVLogger`), ``tensorboard``
(:class:`~growformer.report.tensorboard.TensorBoardLog`), ``wandb``
(:class:`~growformer.report.wandb_logger.WandbLogger`) and ``mlflow``
(:class:`~growformer.report.mlflow_logger.MLflowLogger`); an instance of your own subclass
can be passed to :func:`growformer.train` too.

A resumed run opens its loggers at the step it resumes from: they drop what an earlier
session logged after that step's checkpoint, since it is logged again.
"""

from __future__ import annotations

import csv
import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from growformer.arch import Architecture
from growformer.errors import ConfigError
from growformer.events import Event
from growformer.policies import record_scalars


def optional_package(module: str, what: str, package: str) -> ModuleType:
    """``module`` of an optional package a logger needs, imported.

    Raises:
        ConfigError: The package is not installed (the message names the extra to install,
            which is called as the package is).
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f'{what} logging needs the {package} package: pip install -e ".[{package}]"'
        ) from None


class Logger:
    """What a run tells its loggers; every method does nothing unless overridden.

    Args of the methods: ``step`` is the number of optimizer steps done.
    """

    def train(self, step: int, loss: float, lr: float) -> None:
        """The mean training loss since the last one, and the learning rate."""

    def evaluation(self, step: int, metrics: dict[str, float]) -> None:
        """Validation metrics (``val_loss``, ``val_accuracy``, ...)."""

    def structure(self, step: int, arch: Architecture, params: int) -> None:
        """The structure trained from this step on, and its parameter count."""

    def events(self, step: int, records: list[Event]) -> None:
        """The structural changes of this step."""

    def stats(self, record: dict[str, Any]) -> None:
        """One record of the policy's statistics (``stats.jsonl``, with its ``step``)."""

    def close(self) -> None:
        """The run is over (or stopped): flush and release files."""


class ScalarLogger(Logger):
    """A logger of named scalars and text: subclasses write :meth:`scalars` (and
    :meth:`text`, which does nothing by default).

    Names: ``train/loss``, ``train/lr``; ``val/<metric>``; ``structure/heads/layer_<i>``,
    ``structure/loops/layer_<i>``, ``structure/heads_total``, ``structure/params``; the
    scalars each kind of statistics record registered, e.g.
    ``incrt/{residual,grow_at,weakest,keep_at}/layer_<i>`` (the certificate's quantities),
    ``sgt/score/layer_<i>``; a step's structural events as the text ``events``, a line each.
    """

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Write ``values`` at ``step``."""
        raise NotImplementedError

    def text(self, step: int, name: str, text: str) -> None:
        """Write the text ``name`` at ``step``."""

    def train(self, step: int, loss: float, lr: float) -> None:
        self.scalars(step, {"train/loss": loss, "train/lr": lr})

    def evaluation(self, step: int, metrics: dict[str, float]) -> None:
        self.scalars(step, {f"val/{k.removeprefix('val_')}": v for k, v in metrics.items()})

    def structure(self, step: int, arch: Architecture, params: int) -> None:
        values: dict[str, float] = {}
        for i, layer in enumerate(arch.layers):
            values[f"structure/heads/layer_{i}"] = layer.heads
            values[f"structure/loops/layer_{i}"] = layer.loops
        values["structure/heads_total"] = sum(layer.heads for layer in arch.layers)
        values["structure/params"] = params
        self.scalars(step, values)

    def events(self, step: int, records: list[Event]) -> None:
        lines = [
            f"- {r.op} layer {r.layer}"
            + ("" if r.head is None else f" head {r.head}")
            + ("" if r.reason is None else f": {r.reason}")
            for r in records
        ]
        self.text(step, "events", "\n".join(lines))

    def stats(self, record: dict[str, Any]) -> None:
        """The scalars the record's kind registered
        (:func:`growformer.policies.register_record_kind`)."""
        values = record_scalars(record)
        if values:
            self.scalars(record["step"], values)


class CSVLogger(ScalarLogger):
    """Scalars in ``RUN/metrics.csv``, one row each: ``step,name,value`` (names as
    :class:`ScalarLogger`), a long table that spreadsheet and dataframe tools pivot as they
    like.

    Args:
        run_dir: The run directory.
        step: Steps done before this session (rows logged after it are dropped).
    """

    FIELDS = ("step", "name", "value")

    def __init__(self, run_dir: str | Path, step: int = 0) -> None:
        self.path = Path(run_dir) / "metrics.csv"
        kept: list[dict[str, str]] = []
        if self.path.exists() and step:
            with self.path.open(newline="") as f:
                # Up to the checkpoint, less its structure, which the run logs again.
                kept = [
                    row
                    for row in csv.DictReader(f)
                    if int(row["step"]) < step
                    or (int(row["step"]) == step and not row["name"].startswith("structure/"))
                ]
        self.file = self.path.open("w", newline="")
        self.writer = csv.DictWriter(self.file, self.FIELDS)
        self.writer.writeheader()
        self.writer.writerows(kept)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.writer.writerows({"step": step, "name": k, "value": v} for k, v in values.items())
        self.file.flush()

    def close(self) -> None:
        self.file.close()


LOGGERS: dict[str, Callable[[Path, int], Logger]] = {
    "csv": lambda run_dir, step: CSVLogger(run_dir, step),
}


def register_logger(name: str, make: Callable[[Path, int], Logger]) -> None:
    """Add a logger: ``make(run_dir, step)`` opens it for a run at ``step``."""
    LOGGERS[name] = make


def check_loggers(names: list[str]) -> None:
    """Refuse a name no logger is registered under, naming the known ones."""
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(f"unknown logger {name!r} (known: {', '.join(sorted(LOGGERS))})")


def open_logger(name: str, run_dir: Path, step: int) -> Logger:
    """The logger ``name`` for the run in ``run_dir``, resuming at ``step``."""
    check_loggers([name])
    return LOGGERS[name](run_dir, step)
