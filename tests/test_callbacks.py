"""Callbacks and loggers: what they are told, stopping a run, and resuming after it."""

from __future__ import annotations

import csv
import json

import pytest
from test_train import _files, _without_session_end_eval, config

from growformer import Callback, CSVLogger, Logger, TrainConfig, train
from growformer.errors import ConfigError


class Recorder(Callback):
    def __init__(self, stop_at: int | None = None) -> None:
        self.calls: dict[str, list] = {"step": [], "log": [], "evaluate": [], "event": []}
        self.stop_at = stop_at

    def on_step(self, trainer, step, lr):
        self.calls["step"].append((step, lr))
        return step == self.stop_at

    def on_log(self, trainer, step, loss):
        self.calls["log"].append({"step": step, "train_loss": loss})

    def on_evaluate(self, trainer, step, metrics):
        self.calls["evaluate"].append({"step": step, **metrics})

    def on_event(self, trainer, step, record):
        self.calls["event"].append(record)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_callbacks_see_every_step_log_evaluation_and_event(tmp_path):
    recorder = Recorder()
    train(TrainConfig.from_dict(config()), tmp_path, progress=False, callbacks=[recorder])
    assert [s for s, _ in recorder.calls["step"]] == list(range(1, 25))
    metrics = _lines(tmp_path / "metrics.jsonl")
    logged = [{"step": m["step"], "train_loss": m["train_loss"]} for m in metrics if "lr" in m]
    assert recorder.calls["log"] == logged
    assert recorder.calls["evaluate"] == [m for m in metrics if "val_loss" in m]
    assert recorder.calls["event"] == _lines(tmp_path / "events.jsonl")
    assert {e["op"] for e in recorder.calls["event"]} >= {"add_head", "remove_head"}


def test_a_callback_stops_the_run_and_resume_continues_exactly(tmp_path):
    straight = tmp_path / "straight"
    train(TrainConfig.from_dict(config()), straight, progress=False)
    stopped = tmp_path / "stopped"
    summary = train(
        TrainConfig.from_dict(config()), stopped, progress=False, callbacks=[Recorder(stop_at=12)]
    )
    assert summary["steps"] == 12 and summary["stopped_by"] == "Recorder.on_step at step 12"
    assert (stopped / "checkpoints" / "LATEST").read_text().strip() == "step_00000012"
    train(TrainConfig.from_dict(config()), stopped, resume=True, progress=False)
    resumed, expected = _files(stopped), _files(straight)
    resumed["metrics"] = _without_session_end_eval(resumed["metrics"], 12)
    assert resumed == expected


class Collector(Logger):
    def __init__(self) -> None:
        self.structures: list[tuple[int, int]] = []
        self.changes: list[str] = []
        self.closed = False

    def structure(self, step, arch, params):
        self.structures.append((step, sum(layer.heads for layer in arch.layers)))

    def events(self, step, records):
        self.changes += [f"{step}:{r.op}" for r in records]

    def close(self):
        self.closed = True


def test_a_logger_of_your_own_and_the_csv_logger(tmp_path):
    mine = Collector()
    cfg = TrainConfig.from_dict({**config(), "loggers": ["csv"]})
    train(cfg, tmp_path, progress=False, loggers=[mine])
    assert mine.closed and mine.structures[0] == (0, 4)
    assert mine.changes == [f"{e['step']}:{e['op']}" for e in _lines(tmp_path / "events.jsonl")]
    with (tmp_path / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    metrics = _lines(tmp_path / "metrics.jsonl")
    losses = [(int(r["step"]), float(r["value"])) for r in rows if r["name"] == "train/loss"]
    assert losses == [(m["step"], m["train_loss"]) for m in metrics if "train_loss" in m]
    accuracy = [(int(r["step"]), float(r["value"])) for r in rows if r["name"] == "val/accuracy"]
    assert accuracy == [(m["step"], m["val_accuracy"]) for m in metrics if "val_accuracy" in m]


def test_the_csv_logger_drops_rows_an_interrupted_session_logged_after_its_checkpoint(tmp_path):
    cfg = {**config(), "loggers": ["csv"]}
    train(TrainConfig.from_dict({**cfg, "steps": 12}), tmp_path, progress=False)
    with (tmp_path / "metrics.csv").open("a", newline="") as f:
        csv.writer(f).writerow([13, "train/loss", 99.0])  # logged after the checkpoint
    train(TrainConfig.from_dict(cfg), tmp_path, resume=True, progress=False)
    with (tmp_path / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert "99.0" not in {r["value"] for r in rows}
    steps = [int(r["step"]) for r in rows if r["name"] == "train/loss"]
    assert steps == [4, 8, 12, 16, 20, 24]
    assert [int(r["step"]) for r in rows if r["name"] == "structure/params"].count(12) == 1


def test_an_unknown_logger_is_refused_before_training(tmp_path):
    known = "known: csv, mlflow, tensorboard, wandb"
    with pytest.raises(ConfigError, match=rf"unknown logger 'wandbx' .*{known}"):
        train(TrainConfig.from_dict({**config(), "loggers": ["wandbx"]}), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_csv_logger_alone(tmp_path):
    logger = CSVLogger(tmp_path)
    logger.evaluation(3, {"val_loss": 0.5})
    logger.close()
    assert (tmp_path / "metrics.csv").read_text().splitlines() == [
        "step,name,value",
        "3,val/loss,0.5",
    ]
