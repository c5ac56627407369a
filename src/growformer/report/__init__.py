"""What a run did, for people: an HTML report after training, loggers while it trains.

:func:`write_report` reads a run directory (``summary.json``, and where present
``events.jsonl``, ``metrics.jsonl`` and ``stats.jsonl``) and writes ``RUN/report/index.html``
with its figures beside it as PNG files. The page is self-contained (the figures are
embedded as data URIs, the style is inline): it can be mailed or archived on its own. A
figure whose data the run lacks (a static run has no INCRT statistics) is replaced by a
line saying so. The trainer writes the report at the end of every run; ``growformer report
RUN`` writes it again.

:class:`TensorBoardLog` writes the same statistics to ``RUN/tensorboard`` as training goes
(``TrainConfig.tensorboard``), one of the run's loggers (:mod:`~growformer.report.loggers`:
``TrainConfig.loggers``, or instances passed to :func:`growformer.train`).

Modules: :mod:`~growformer.report.logs` (the run's files, parsed),
:mod:`~growformer.report.page` (the page and the order of its figures),
:mod:`~growformer.report.figures` (training and structure),
:mod:`~growformer.report.policy_figures` (INCRT and SGT statistics),
:mod:`~growformer.report.plotting` (what the figures share),
:mod:`~growformer.report.loggers` (the logger interface, CSV), and the loggers of
:mod:`~growformer.report.tensorboard`, :mod:`~growformer.report.wandb_logger` and
:mod:`~growformer.report.mlflow_logger`.
"""

from growformer.report.loggers import (
    LOGGERS,
    CSVLogger,
    Logger,
    ScalarLogger,
    check_loggers,
    open_logger,
    register_logger,
)
from growformer.report.logs import RunRecords, read_run
from growformer.report.mlflow_logger import MLflowLogger
from growformer.report.page import write_report
from growformer.report.tensorboard import TensorBoardLog
from growformer.report.wandb_logger import WandbLogger

__all__ = [
    "LOGGERS",
    "CSVLogger",
    "Logger",
    "MLflowLogger",
    "RunRecords",
    "ScalarLogger",
    "TensorBoardLog",
    "WandbLogger",
    "check_loggers",
    "open_logger",
    "read_run",
    "register_logger",
    "write_report",
]
