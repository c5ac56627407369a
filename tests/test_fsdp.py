"""FSDP2: real ``torchrun`` launches of 2 CPU processes (gloo), each holding shards of the
model, against one process; sharded checkpoints resumed on 1 and on 2 processes."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_distributed import CONFIGS, _env, _structure, _torchrun, _weights

from growformer import checkpoint
from growformer.errors import CheckpointError, ConfigError
from growformer.optim import OPTIMIZERS
from growformer.training.config import TrainConfig
from growformer.training.loop import train

FSDP = {"distributed": "fsdp"}


def _same_run(a: Path, b: Path) -> None:
    """Same structure trajectory, architecture and weights (within 1e-5)."""
    one, two = (json.loads((run / "summary.json").read_text()) for run in (a, b))
    assert one["events"], "the run must change its structure to test anything"
    assert _structure(two["events"]) == _structure(one["events"])
    for x, y in zip(two["events"], one["events"], strict=True):
        assert x["loss_after"] == pytest.approx(y["loss_after"], abs=1e-5)
    assert two["architecture"] == one["architecture"]
    w1, w2 = (checkpoint.load(run).model.state_dict() for run in (a, b))
    assert w1.keys() == w2.keys()
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) <= 1e-5


@pytest.mark.parametrize("policy", list(CONFIGS))
def test_two_sharded_processes_grow_like_one(policy, tmp_path):
    """Same global batch: the same structure trajectory and weights within 1e-5; the
    checkpoint (gathered, ``full``) is the one-process format. INCRT's validation set is
    5 batches: one rank evaluates 3, the other repeats one to keep the passes in step."""
    cfg = CONFIGS[policy]
    if "n_val" in cfg.get("task_options", {}):
        cfg = {**cfg, "task_options": {**cfg["task_options"], "n_val": 5 * cfg["batch_size"]}}
    train(TrainConfig.from_dict(cfg), tmp_path / "single", progress=False)
    _torchrun(cfg, tmp_path, tmp_path / "sharded", "--distributed", "fsdp")
    summary = json.loads((tmp_path / "sharded" / "summary.json").read_text())
    assert summary["ranks"] == 2
    assert checkpoint.read_config(tmp_path / "sharded")["distributed"] == "fsdp"
    _same_run(tmp_path / "single", tmp_path / "sharded")
    assert _weights(tmp_path / "sharded").keys()  # model.safetensors, readable as before
    metrics = [
        [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        for run in ("single", "sharded")
    ]
    for a, b in zip(*metrics, strict=True):
        assert a == pytest.approx(b, rel=1e-4)


def test_a_sharded_checkpoint_resumes_on_two_processes_and_on_one(tmp_path):
    cfg = CONFIGS["incrt"]
    train(TrainConfig.from_dict(cfg), tmp_path / "single", progress=False)
    sharded = {**cfg, **FSDP, "checkpoint_format": "sharded"}
    _torchrun(sharded, tmp_path, tmp_path / "two", "--set", "steps=30")
    ckpt = checkpoint.resolve(tmp_path / "two")
    assert {"__0_0.distcp", "__1_0.distcp", "shards.json"} <= {p.name for p in ckpt.iterdir()}
    assert not (ckpt / "model.safetensors").exists()
    shutil.copytree(tmp_path / "two", tmp_path / "one")
    _torchrun(sharded, tmp_path, tmp_path / "two", "--resume")
    train(TrainConfig.from_dict(sharded), tmp_path / "one", resume=True, progress=False)
    for run in ("two", "one"):
        _same_run(tmp_path / "single", tmp_path / run)


def test_every_shardable_optimizer_carries_its_state_through_sharded_changes():
    """Heads added (random and function-preserving inits), removed, and loops with a fade,
    each made on its layer gathered (or the whole model) and sharded again: weights and
    optimizer state as without sharding."""
    worker = Path(__file__).with_name("fsdp_worker.py")
    cmd = [*_torchrun_base(), str(worker), "uniform", "llama"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines()]
    shardable = [n for n, spec in OPTIMIZERS.items() if spec.shardable]
    assert [(r["variant"], r["optimizer"], r["whole_model"]) for r in results] == [
        (v, n, w) for v in ("uniform", "llama") for n in shardable for w in (False, True)
    ]
    for r in results:
        assert r["arch"] and r["same_state_keys"], r
        assert r["weights"] <= 1e-5 and r["state"] <= 1e-5, r


def _torchrun_base() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def test_an_optimizer_that_cannot_step_shards_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    cfg = TrainConfig.from_dict({**CONFIGS["incrt"], **FSDP, "optimizer": "adafactor"})
    with pytest.raises(ConfigError, match="optimizer adafactor cannot step parameters sharded"):
        train(cfg, tmp_path / "run", progress=False)


def _sharded_run(tmp_path: Path) -> Path:
    cfg = {**CONFIGS["incrt"], "checkpoint_format": "sharded", "steps": 15}
    train(TrainConfig.from_dict(cfg), tmp_path / "run", progress=False)
    return checkpoint.resolve(tmp_path / "run")


def _rewrite(ckpt: Path, name: str, data: bytes) -> None:
    """Replace a file of ``ckpt`` and its manifest entry (as a forger would)."""
    (ckpt / name).write_bytes(data)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["files"][name] = checkpoint._digest(ckpt / name)
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


def test_dcps_pickled_index_is_never_read(tmp_path):
    """The shards' index is read from JSON: a forged ``.metadata`` pickle never runs."""
    ckpt = _sharded_run(tmp_path)
    marker = tmp_path / "ran"

    class Forged:
        def __reduce__(self):
            return (Path.touch, (marker,))

    _rewrite(ckpt, ".metadata", pickle.dumps(Forged()))
    loaded = checkpoint.load(tmp_path / "run")
    assert loaded.model.num_params() > 0
    assert not marker.exists()


def test_a_malformed_shard_index_is_named(tmp_path):
    ckpt = _sharded_run(tmp_path)
    index = json.loads((ckpt / "shards.json").read_text())
    index["storage"][0]["file"] = "../elsewhere"
    _rewrite(ckpt, "shards.json", json.dumps(index).encode())
    with pytest.raises(CheckpointError, match=r"shards\.json is malformed: .*not a file of"):
        checkpoint.load(tmp_path / "run")


def test_a_damaged_shard_is_named(tmp_path):
    ckpt = _sharded_run(tmp_path)
    shard = ckpt / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"__0_0\.distcp is truncated or altered"):
        checkpoint.load(tmp_path / "run")


def test_one_process_ignores_fsdp(tmp_path):
    cfg = {**CONFIGS["incrt"], **FSDP, "steps": 15}
    summary = train(TrainConfig.from_dict(cfg), tmp_path / "run", progress=False)
    assert summary["ranks"] == 1
    assert torch.isfinite(torch.tensor(summary["metrics"]["val_loss"]))
