"""The W&B and MLflow loggers, in their offline modes: what a run logs there, read back from
their own files, and a resumed run logging into the same run."""

from __future__ import annotations

import json
import struct

import pytest
from test_train import config

from growformer import TrainConfig, train

wandb = pytest.importorskip("wandb")
mlflow = pytest.importorskip("mlflow")

BLOCK = 32 * 1024  # W&B's run file: LevelDB's log format, records in 32 KiB blocks


def wandb_records(path):
    """The records of an offline W&B run file, parsed with W&B's own protobuf schema."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos = [], b"", 7  # after the magic, its check bytes and version
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_history(run_dir):
    """The logged rows of every session (a directory each, named by time) and the config."""
    paths = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    records = [r for path in paths for r in wandb_records(path)]
    rows = [  # a name with "/" is stored as a one-part nested key
        {
            item.key or "".join(item.nested_key): json.loads(item.value_json)
            for item in r.history.item
        }
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in runs[0].config.update}
    return rows, config, {run.run_id for run in runs}


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_wandb_and_mlflow_receive_the_run_and_a_resume_continues_the_same_runs(offline, tmp_path):
    cfg = {**config(), "loggers": ["wandb", "mlflow"]}
    train(TrainConfig.from_dict({**cfg, "steps": 12}), tmp_path, progress=False)
    ids = {n: (tmp_path / f"{n}_run_id").read_text() for n in ("wandb", "mlflow")}
    train(TrainConfig.from_dict(cfg), tmp_path, resume=True, progress=False)
    assert ids == {n: (tmp_path / f"{n}_run_id").read_text() for n in ("wandb", "mlflow")}
    metrics = _lines(tmp_path / "metrics.jsonl")
    losses = [(m["step"], m["train_loss"]) for m in metrics if "train_loss" in m]
    events = _lines(tmp_path / "events.jsonl")

    rows, wandb_config, wandb_ids = wandb_history(tmp_path)
    assert wandb_ids == {ids["wandb"].strip()}
    assert [(r["trainer/step"], r["train/loss"]) for r in rows if "train/loss" in r] == losses
    heads = [
        (r["trainer/step"], r["structure/heads_total"]) for r in rows if "structure/params" in r
    ]
    assert heads[0] == (0, 4) and len(heads) >= 1 + len({e["step"] for e in events})
    assert wandb_config["policy"] == "scheduled" and wandb_config["model"]["d_model"] == 32

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(ids["mlflow"].strip())
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == losses
    assert run.data.params["policy"] == "scheduled" and run.data.params["model.d_model"] == "32"
    assert run.info.status == "FINISHED"
    texts = [a.path for a in client.list_artifacts(run.info.run_id, "events")]
    assert texts == sorted(f"events/step_{s}.txt" for s in {e["step"] for e in events})
    experiment = client.get_experiment_by_name("growformer")
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [
        run.info.run_id
    ]
