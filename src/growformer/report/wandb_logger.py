"""Weights & Biases logging while a run trains (``loggers: [wandb]``)."""

from __future__ import annotations

import html
import os
import uuid
from pathlib import Path

import yaml

from growformer.report.loggers import ScalarLogger, optional_package, register_logger

STEP = "trainer/step"
"""The x-axis of every chart: the run's optimizer steps (W&B's own step counts calls)."""


class WandbLogger(ScalarLogger):
    """The run's scalars (names as :class:`~growformer.report.loggers.ScalarLogger`) and
    structural events in a W&B run, its configuration the run's ``config.yaml``.

    W&B reads its usual settings from the environment: ``WANDB_PROJECT`` (else
    ``growformer``), ``WANDB_ENTITY``, ``WANDB_MODE=offline`` to write only to
    ``RUN/wandb`` (``wandb sync`` uploads it later). The W&B run is named after the run
    directory and its id is kept in ``RUN/wandb_run_id``, so a resumed run logs into the
    same W&B run; W&B cannot take back what an interrupted session logged after its
    checkpoint, so those steps appear twice (the later values are the run's).

    Args:
        run_dir: The run directory.
        step: Steps done before this session.

    Raises:
        ConfigError: wandb is not installed.
    """

    def __init__(self, run_dir: str | Path, step: int = 0) -> None:
        wandb = optional_package("wandb", "W&B", "wandb")
        run_dir = Path(run_dir)
        id_file = run_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
        config = run_dir / "config.yaml"
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "growformer"),
            name=run_dir.resolve().name,
            id=run_id,
            resume="allow",
            dir=run_dir,
            config=yaml.safe_load(config.read_text()) if config.exists() else None,
        )
        id_file.write_text(run_id + "\n")
        self.run.define_metric(STEP)
        self.run.define_metric("*", step_metric=STEP)
        self._html = wandb.Html

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log({**values, STEP: step})

    def text(self, step: int, name: str, text: str) -> None:
        self.run.log({name: self._html(f"<pre>{html.escape(text)}</pre>"), STEP: step})

    def close(self) -> None:
        self.run.finish()


register_logger("wandb", lambda run_dir, step: WandbLogger(run_dir, step))
