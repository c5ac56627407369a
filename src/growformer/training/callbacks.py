"""Callbacks: your code, called by the trainer at every step, evaluation and structural
change, with the power to stop the run.

Subclass :class:`Callback`, override what you need and pass instances to
:func:`growformer.train` (``callbacks=[...]``). A hook that returns ``True`` stops the run
after the current step: the trainer saves a checkpoint, writes the summary (with
``stopped_by``) and returns; a later ``resume=True`` with the same configuration goes on
from there. Callbacks run on every process of a data-parallel run, and the run stops when
any process's callback asks.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Run(Protocol):
    """What a callback sees of the run (the :class:`~growformer.training.loop.Trainer`)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    cfg: Any  # the run's TrainConfig
    state: dict[str, Any]  # counters: "step", "train_flops", "wall_s", ...
    policy: Any  # the structure policy


class Callback:
    """Hooks of a training run; each may return ``True`` to stop it after this step.

    ``trainer`` gives the run's parts (:class:`Run`): ``trainer.model``,
    ``trainer.optimizer``, ``trainer.cfg``, ``trainer.state["step"]``, ``trainer.policy``.
    """

    def on_step(self, trainer: Run, step: int, lr: float) -> bool | None:
        """After optimizer step ``step`` (1-based) and its structural changes."""

    def on_log(self, trainer: Run, step: int, loss: float) -> bool | None:
        """The mean training loss of the steps since the last one (every ``log_every``)."""

    def on_evaluate(self, trainer: Run, step: int, metrics: dict[str, float]) -> bool | None:
        """Validation metrics (``val_loss``, ``val_accuracy``, ...) after ``step``."""

    def on_event(self, trainer: Run, step: int, record: dict[str, Any]) -> bool | None:
        """A structural change made at ``step``, as its ``events.jsonl`` record."""


def stop_requested(callbacks: list[Callback], hook: str, *args: Any) -> str | None:
    """Call ``hook`` on every callback (all of them, in order); the first that asked to
    stop, named by its class, or None."""
    asked = None
    for callback in callbacks:
        if getattr(callback, hook)(*args) is True and asked is None:
            asked = type(callback).__name__
    return asked
