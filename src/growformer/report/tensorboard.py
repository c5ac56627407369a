"""TensorBoard logging while a run trains (``TrainConfig.tensorboard``)."""

from __future__ import annotations

from pathlib import Path

from growformer.report.loggers import ScalarLogger, optional_package, register_logger


class TensorBoardLog(ScalarLogger):
    """Training statistics as TensorBoard scalars and text (the names of
    :class:`~growformer.report.loggers.ScalarLogger`), written while a run trains.

    Args:
        log_dir: Directory of the event files (``RUN/tensorboard``).
        step: Optimizer steps already done: a resumed run drops what an earlier session
            logged from this step on (it is logged again).

    Raises:
        ConfigError: TensorBoard is not installed.
    """

    def __init__(self, log_dir: str | Path, step: int = 0) -> None:
        board = optional_package("torch.utils.tensorboard", "TensorBoard", "tensorboard")
        self.writer = board.SummaryWriter(str(log_dir), purge_step=step or None)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def text(self, step: int, name: str, text: str) -> None:
        self.writer.add_text(name, text, step)

    def close(self) -> None:
        self.writer.close()


register_logger("tensorboard", lambda run_dir, step: TensorBoardLog(run_dir / "tensorboard", step))
