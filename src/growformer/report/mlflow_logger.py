"""MLflow logging while a run trains (``loggers: [mlflow]``)."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any

import yaml

from growformer.errors import ConfigError
from growformer.report.loggers import ScalarLogger, optional_package, register_logger


class MLflowLogger(ScalarLogger):
    """The run's scalars (names as :class:`~growformer.report.loggers.ScalarLogger`) as
    MLflow metrics, its structural events as text artifacts (``events/step_<n>.txt``), its
    configuration (``config.yaml``, flattened to dotted keys) as parameters.

    Where: ``MLFLOW_TRACKING_URI`` when set (a server, or ``sqlite:///mlflow.db`` to keep
    many runs in one file), else the run's own ``sqlite:///RUN/mlflow.db`` with artifacts in
    ``RUN/mlartifacts`` (``mlflow ui --backend-store-uri sqlite:///RUN/mlflow.db`` shows
    it). The experiment is ``MLFLOW_EXPERIMENT_NAME``, else ``growformer``; the MLflow
    run is named after the run directory and its id kept in ``RUN/mlflow_run_id``, so a
    resumed run logs into the same MLflow run. MLflow cannot take back what an interrupted
    session logged after its checkpoint: those steps appear twice (the later values are
    the run's).

    Args:
        run_dir: The run directory.
        step: Steps done before this session.

    Raises:
        ConfigError: mlflow (or its SQL store, for the default location) is not installed.
    """

    def __init__(self, run_dir: str | Path, step: int = 0) -> None:
        mlflow = optional_package("mlflow", "MLflow", "mlflow")
        from mlflow.entities import Metric, Param

        run_dir = Path(run_dir).resolve()
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run_dir / 'mlflow.db'}"
        missing = [m for m in ("sqlalchemy", "alembic") if importlib.util.find_spec(m) is None]
        if uri.startswith("sqlite") and missing:
            raise ConfigError(
                f'MLflow\'s store {uri} needs {" and ".join(missing)}: pip install -e ".[mlflow]"'
            )
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        self._metric = Metric
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "growformer")
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            own = None if "MLFLOW_TRACKING_URI" in os.environ else run_dir / "mlartifacts"
            experiment_id = self.client.create_experiment(
                name, artifact_location=None if own is None else own.as_uri()
            )
        id_file = run_dir / "mlflow_run_id"
        if id_file.exists():
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
            return
        self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
        id_file.write_text(self.run_id + "\n")
        config = run_dir / "config.yaml"
        if config.exists():
            flat = _flatten(yaml.safe_load(config.read_text()) or {})
            # MLflow keeps a parameter's first value: logged once, when the run is made.
            params = [Param(k, str(v)[:6000]) for k, v in flat.items()]
            for start in range(0, len(params), 100):  # MLflow's most per call
                self.client.log_batch(self.run_id, params=params[start : start + 100])

    def scalars(self, step: int, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        metrics = [self._metric(k, float(v), now, step) for k, v in values.items()]
        for start in range(0, len(metrics), 1000):  # MLflow's most per call
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def text(self, step: int, name: str, text: str) -> None:
        self.client.log_text(self.run_id, text, f"{name}/step_{step}.txt")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


register_logger("mlflow", lambda run_dir, step: MLflowLogger(run_dir, step))
