"""TensorBoard logging while a run trains (``TrainConfig.tensorboard``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from growformer.arch import Architecture
from growformer.errors import ConfigError
from growformer.events import Event
from growformer.policies import record_scalars
from growformer.report.loggers import Logger, register_logger


class TensorBoardLog(Logger):
    """Training statistics as TensorBoard scalars and text, written while a run trains.

    Tags: ``train/loss``, ``train/lr``; ``val/<metric>``; ``structure/heads/layer_<i>``,
    ``structure/heads_total``, ``structure/loops/layer_<i>``, ``structure/params``;
    the scalars each kind of statistics record registered, e.g.
    ``incrt/{residual,grow_at,weakest,keep_at}/layer_<i>`` (the certificate's quantities),
    ``incrt/min_energy/layer_<i>``, ``sgt/score/layer_<i>``,
    ``sgt/entropy/layer_<i>/head_<h>``; the structural events of each step as the text
    ``events``.

    Args:
        log_dir: Directory of the event files (``RUN/tensorboard``).
        step: Optimizer steps already done: a resumed run drops what an earlier session
            logged from this step on (it is logged again).

    Raises:
        ConfigError: TensorBoard is not installed.
    """

    def __init__(self, log_dir: str | Path, step: int = 0) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                'TensorBoard logging needs the tensorboard package: pip install -e ".[tensorboard]"'
            ) from None
        self.writer = SummaryWriter(str(log_dir), purge_step=step or None)

    def train(self, step: int, loss: float, lr: float) -> None:
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/lr", lr, step)

    def evaluation(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(f"val/{name.removeprefix('val_')}", value, step)

    def structure(self, step: int, arch: Architecture, params: int) -> None:
        for i, layer in enumerate(arch.layers):
            self.writer.add_scalar(f"structure/heads/layer_{i}", layer.heads, step)
            self.writer.add_scalar(f"structure/loops/layer_{i}", layer.loops, step)
        self.writer.add_scalar("structure/heads_total", sum(x.heads for x in arch.layers), step)
        self.writer.add_scalar("structure/params", params, step)

    def events(self, step: int, records: list[Event]) -> None:
        lines = [
            f"- {r.op} layer {r.layer}"
            + ("" if r.head is None else f" head {r.head}")
            + ("" if r.reason is None else f": {r.reason}")
            for r in records
        ]
        self.writer.add_text("events", "\n".join(lines), step)

    def stats(self, record: dict[str, Any]) -> None:
        """One record of the policy's statistics log (``stats.jsonl``): the scalars its kind
        registered (:func:`growformer.policies.register_record_kind`)."""
        for tag, value in record_scalars(record).items():
            self.writer.add_scalar(tag, value, record["step"])

    def close(self) -> None:
        self.writer.close()


register_logger("tensorboard", lambda run_dir, step: TensorBoardLog(run_dir / "tensorboard", step))
