"""Configuration files (YAML and JSON), --set overrides and the resolved configuration."""

from __future__ import annotations

import json

import pytest
import yaml

from growformer.cli import main
from growformer.errors import ConfigError
from growformer.training.config import TrainConfig
from growformer.training.config_files import (
    RUN_CONFIG,
    apply_overrides,
    dump_config,
    parse_value,
    read_config,
)

SETTINGS = {
    "task": "retrieval",
    "policy": "incrt",
    "steps": 30,
    "lr": 0.001,
    "policy_options": {"growth_ratio": 0.2, "prune_patience": 5},
    "model": {"d_model": 64, "heads": 2, "dropout": 0.1},
}
YAML_TEXT = """\
task: retrieval
policy: incrt
steps: 30
lr: 1e-3  # YAML 1.1 would read this as text
policy_options: {growth_ratio: 0.2, prune_patience: 5}
model:
  d_model: 64
  heads: 2
  dropout: .1
"""


@pytest.mark.parametrize("name", ["run.yaml", "run.yml", "run.json"])
def test_yaml_and_json_files_give_the_same_configuration(name, tmp_path):
    path = tmp_path / name
    path.write_text(json.dumps(SETTINGS) if name.endswith("json") else YAML_TEXT)
    assert read_config(path) == SETTINGS
    assert TrainConfig.from_dict(read_config(path)).lr == 1e-3


def test_an_empty_yaml_file_sets_nothing(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    assert read_config(path) == {}


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("c.yaml", "steps: 10\n  lr: [1\n", "not valid YAML (line 2"),
        ("c.yaml", "- 1\n- 2\n", "must hold a mapping of keys, got list"),
        ("c.yaml", "stepz: 4\n", "unknown key(s) stepz"),
        ("c.yaml", "model: {d_modle: 64}\n", "config.model has unknown key(s) d_modle"),
        ("c.yaml", "steps: ten\n", "config.steps has the wrong type: 'ten'"),
        ("c.json", "{not json", "not valid JSON"),
        ("c.json", '{"stepz": 4}', "unknown key(s) stepz"),
        ("c.yaml", b"steps: \xff\n", "not UTF-8"),
    ],
)
def test_bad_config_files_name_the_file_and_the_problem(name, text, message, tmp_path):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(ConfigError) as e:
        read_config(path)
    assert message in str(e.value) and str(path) in str(e.value)
    assert "\n" not in str(e.value)


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_config(tmp_path / "none.yaml")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("256", 256),
        ("0.2", 0.2),
        ("1e-3", 1e-3),
        ("true", True),
        ("null", None),
        ("[4, 2]", [4, 2]),
        ('{"a": 1}', {"a": 1}),
        ("lineage", "lineage"),
        ("", ""),
    ],
)
def test_override_values_are_json_or_text(text, value):
    assert parse_value(text) == value


def test_overrides_reach_into_sections_and_the_last_one_wins():
    base = {"steps": 5, "model": {"d_model": 32}}
    out = apply_overrides(
        base,
        [
            "model.heads=3",
            "policy_options.growth_ratio=0.2",
            "task_options.split=lineage",
            "steps=7",
            "steps=9",
        ],
    )
    assert out == {
        "steps": 9,
        "model": {"d_model": 32, "heads": 3},
        "policy_options": {"growth_ratio": 0.2},
        "task_options": {"split": "lineage"},
    }
    assert base == {"steps": 5, "model": {"d_model": 32}}  # not changed


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("steps", "expected KEY=VALUE"),
        ("=3", "expected KEY=VALUE"),
        ("model..heads=3", "expected KEY=VALUE"),
        ("steps.x=3", "steps is a value, not a section"),
    ],
)
def test_bad_overrides_are_named(item, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides({"steps": 5}, [item])


def test_the_dumped_configuration_reads_back_as_itself(tmp_path):
    cfg = TrainConfig.from_dict(SETTINGS)
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert TrainConfig.from_dict(read_config(path)) == cfg


def test_print_config_resolves_file_flags_and_overrides(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(YAML_TEXT)
    code = main(
        [
            "train",
            "--config",
            str(path),
            "--steps",
            "40",
            "--set",
            "model.d_model=96",
            "--set",
            "policy_options.growth_ratio=0.3",
            "--set",
            "seed=4",
            "--print-config",
        ]
    )
    assert code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == TrainConfig.from_dict(printed).to_dict()  # every field, a valid file
    assert (printed["steps"], printed["seed"], printed["task"]) == (40, 4, "retrieval")
    assert printed["model"]["d_model"] == 96 and printed["model"]["heads"] == 2
    assert printed["policy_options"] == {"growth_ratio": 0.3, "prune_patience": 5}
    assert not list(tmp_path.glob("*/"))  # nothing trained


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "model.d_modle=3", "--print-config"], "config.model has unknown key(s)"),
        (["--set", "steps=many", "--print-config"], "config.steps has the wrong type"),
        (["--set", "steps", "--print-config"], "expected KEY=VALUE"),
        (["--task", "retrieval", "--resume"], "train --resume needs --out DIR"),
    ],
)
def test_bad_overrides_on_the_command_line(args, message, capsys):
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("growformer: error:") and message in err and "\n" not in err


@pytest.mark.parametrize(
    ("task", "message"),
    [("file", "pass --data FILE"), ("fasta", "pass --data FASTA and --labels CSV")],
)
def test_tasks_on_your_data_say_which_flags_give_it(task, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--task", task, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("growformer: error:") and message in err


def test_a_run_directory_keeps_its_resolved_configuration(tmp_path):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--task",
            "retrieval",
            "--out",
            str(out),
            "--no-progress",
            "--set",
            "steps=2",
            "--set",
            "eval_every=2",
            "--set",
            'model={"d_model": 32, "n_layers": 1, "heads": 1, "head_dim": 8}',
            "--set",
            "device=cpu",
        ]
    )
    assert code == 0
    kept = TrainConfig.from_dict(read_config(out / RUN_CONFIG))
    assert kept.steps == 2 and kept.model.d_model == 32 and kept.task == "retrieval"
