"""Tests of the task registry: a task registered from user code trains and evaluates by name."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from helpers import load_toy

from growformer import ModelConfig, TrainConfig, train
from growformer.cli import main
from growformer.data import (
    TASKS,
    TaskSpec,
    load_task,
    register_task,
)
from growformer.errors import ConfigError


@pytest.fixture
def toy() -> Iterator[TaskSpec]:
    spec = TaskSpec(load=load_toy, options={"n_train": 256})
    before = dict(TASKS)
    register_task("toy", spec)
    yield spec
    # Registered for this test only: other tests see the built-in tasks alone.
    TASKS.clear()
    TASKS.update(before)


def test_a_registered_task_loads_trains_and_evaluates(toy, tmp_path, capsys):
    task = load_task("toy", options={"n_train": "100"}, seed=1)
    assert (task.name, len(task.train), len(task.val)) == ("toy", 100, 64)
    with pytest.raises(ConfigError, match="unknown option 'k' for task 'toy' \\(valid: n_train\\)"):
        load_task("toy", options={"k": 2})
    with pytest.raises(ConfigError, match="task 'toy' takes no data file"):
        load_task("toy", data_file="x.tsv")
    cfg = TrainConfig(
        task="toy",
        steps=4,
        batch_size=16,
        eval_every=4,
        checkpoint_every=4,
        warmup_steps=1,
        max_len=16,
        device="cpu",
        model=ModelConfig(d_model=16, n_layers=1, heads=1, head_dim=8, ffn_dim=32),
    )
    summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["task"] == "toy" and "val_accuracy" in summary["metrics"]
    capsys.readouterr()
    table = tmp_path / "new.tsv"
    table.write_text("sentence\tlabel\nb a c a b c\tyes\na b b c a a\tno\n")
    assert main(["evaluate", str(tmp_path / "run"), "--data", str(table)]) == 0
    assert "accuracy" in json.loads(capsys.readouterr().out)


def test_register_task_refuses_what_it_cannot_load(toy):
    with pytest.raises(ConfigError, match="task 'toy' is already registered"):
        register_task("toy", toy)
    register_task("toy", toy, replace=True)
    with pytest.raises(ConfigError, match="task name must be a non-empty string"):
        register_task(" ", toy)
    with pytest.raises(ConfigError, match="'data_files'"):
        register_task("toy2", TaskSpec(load=load_toy, files=("data_files",)))
    with pytest.raises(TypeError, match="TaskSpec"):
        register_task("toy3", load_toy)  # type: ignore[arg-type]
    assert "toy2" not in TASKS and "toy3" not in TASKS
