"""A run directory's logs: ``events.jsonl`` (one structural change a line),
``metrics.jsonl`` (training loss and evaluations) and ``stats.jsonl`` (the policy's
statistics and refused requests), mirrored to the run's loggers (TensorBoard, CSV, your
own) while it trains, then ``summary.json`` and the report.

A resumed run continues its logs from the line counts its checkpoint saved: lines
written after the checkpoint are dropped, so that no record appears twice.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from growformer.arch import Architecture
from growformer.events import Event
from growformer.fsutil import atomic_write_text
from growformer.report import Logger, open_logger, write_report

LOGS = ("events", "metrics", "stats")


class JsonLines:
    """A JSON-lines file that, on resume, drops lines written after the checkpoint; only
    the ``writer`` (rank 0) touches the file."""

    def __init__(self, path: Path, keep: int, writer: bool = True) -> None:
        self.path = path
        self.writer = writer
        lines = path.read_text().splitlines(keepends=True) if path.exists() else []
        if writer and len(lines) != keep:
            atomic_write_text(path, "".join(lines[:keep]))

    def write(self, record: dict[str, Any]) -> None:
        if not self.writer:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


class RunLogs:
    """The logs of one run: each record goes to its JSON-lines file, to TensorBoard while
    :meth:`tensorboard` is open, and is counted in ``counts`` (the trainer's state, saved
    with every checkpoint).

    Args:
        out: Run directory.
        counts: Lines written so far per log (``events``, ``metrics``, ``stats``); kept
            up to date.
        writer: Whether this process writes (rank 0).
    """

    def __init__(self, out: Path, counts: dict[str, Any], writer: bool) -> None:
        self.out, self.counts, self.writer = out, counts, writer
        self.files = {name: JsonLines(out / f"{name}.jsonl", counts[name], writer) for name in LOGS}
        self.loggers: list[Logger] = []

    def _write(self, log: str, record: dict[str, Any]) -> None:
        self.files[log].write(record)
        self.counts[log] += 1

    def events(self, step: int, records: list[Event], arch: Architecture, params: int) -> None:
        """The structural changes of ``step``, and the structure they left."""
        for record in records:
            self._write("events", record.to_dict())
        for logger in self.loggers:
            logger.events(step, records)
            logger.structure(step, arch, params)

    def refusal(self, record: dict[str, Any]) -> None:
        """A request the budget refused (stats.jsonl only)."""
        self._write("stats", record)

    def stats(self, record: dict[str, Any]) -> None:
        """One of the policy's statistics records."""
        self._write("stats", record)
        for logger in self.loggers:
            logger.stats(record)

    def train(self, step: int, loss: float, lr: float, arch: Architecture, params: int) -> None:
        self._write("metrics", {"step": step, "train_loss": loss, "lr": lr})
        for logger in self.loggers:
            logger.train(step, loss, lr)
            logger.structure(step, arch, params)

    def evaluation(self, step: int, metrics: dict[str, float]) -> None:
        self._write("metrics", {"step": step, **metrics})
        for logger in self.loggers:
            logger.evaluation(step, metrics)

    def skipped(self, step: int, what: str) -> None:
        """A batch skipped for a non-finite loss or gradient."""
        self._write("metrics", {"step": step, "skipped": what})

    def read_events(self) -> list[dict[str, Any]]:
        return self.files["events"].read()

    @contextlib.contextmanager
    def open_loggers(
        self,
        names: list[str],
        instances: list[Logger],
        step: int,
        arch: Architecture,
        params: int,
    ) -> Iterator[None]:
        """Around the training loop: the loggers registered as ``names`` and the
        ``instances`` given, on the writing process, each told the structure trained from;
        closed at the end whatever happens."""
        if not self.writer:
            yield
            return
        try:
            for name in names:
                self.loggers.append(open_logger(name, self.out, step))
            self.loggers += instances
            for logger in self.loggers:
                logger.structure(step, arch, params)
            yield
        finally:
            for logger in self.loggers:
                logger.close()
            self.loggers = []

    def finish(self, summary: dict[str, Any]) -> None:
        """Write ``summary.json`` and the report (the writing process only). The run is
        saved whatever happens to the report, so a report that fails is a warning."""
        if not self.writer:
            return
        atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2))
        try:
            write_report(self.out)
        except Exception as e:
            warnings.warn(
                f"could not write the report of {self.out} ({type(e).__name__}: {e}); "
                f"retry with: growformer report {self.out}",
                RuntimeWarning,
                stacklevel=2,
            )
