"""Loggers: where a run's records go while it trains, besides its own JSON-lines files.

A :class:`Logger` receives the training loss, the evaluations, the structure after each
change, the structural events and the policy's statistics records, on the writing process
only. Registered by name (``TrainConfig.loggers``): ``tensorboard``
(:class:`~growformer.report.tensorboard.TensorBoardLog`) and ``csv`` (:class:`CSVLogger`);
an instance of your own subclass can be passed to :func:`growformer.train` too.

A resumed run opens its loggers at the step it resumes from: they drop what an earlier
session logged after that step's checkpoint, since it is logged again.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

from growformer.arch import Architecture
from growformer.errors import ConfigError
from growformer.events import Event


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


class CSVLogger(Logger):
    """Scalars in ``RUN/metrics.csv``, one row each: ``step,name,value`` (``train/loss``,
    ``train/lr``, ``val/<metric>``, ``structure/heads_total``, ``structure/params``), a long
    table that spreadsheet and dataframe tools pivot as they like.

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

    def _row(self, step: int, name: str, value: float) -> None:
        self.writer.writerow({"step": step, "name": name, "value": value})

    def train(self, step: int, loss: float, lr: float) -> None:
        self._row(step, "train/loss", loss)
        self._row(step, "train/lr", lr)
        self.file.flush()

    def evaluation(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self._row(step, f"val/{name.removeprefix('val_')}", value)
        self.file.flush()

    def structure(self, step: int, arch: Architecture, params: int) -> None:
        self._row(step, "structure/heads_total", sum(layer.heads for layer in arch.layers))
        self._row(step, "structure/params", params)

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
