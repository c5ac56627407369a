"""The command line, end to end on real SST-2 rows, and every kind of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from growformer import checkpoint
from growformer.cli import main
from growformer.errors import CheckpointError

TINY = {
    "model": {"d_model": 32, "n_layers": 1, "heads": 2, "head_dim": 8, "ffn_dim": 64},
    "vocab_size": 300,
    "max_len": 48,
    "batch_size": 16,
    "eval_every": 10,
    "checkpoint_every": 5,
    "warmup_steps": 2,
    "device": "cpu",
}


def _rows(src: Path, n: int) -> str:
    return "".join(src.read_text().splitlines(keepends=True)[: n + 1])


@pytest.fixture(scope="module")
def files(sst2_dir, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("files")
    paths = {"train": d / "train.tsv", "dev": d / "dev.tsv", "config": d / "tiny.json"}
    paths["train"].write_text(_rows(sst2_dir / "train.tsv", 400))
    paths["dev"].write_text(_rows(sst2_dir / "dev.tsv", 60))
    paths["config"].write_text(json.dumps(TINY))
    return paths


@pytest.fixture(scope="module")
def run(files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    code = main(
        [
            "train",
            "--data",
            str(files["train"]),
            "--config",
            str(files["config"]),
            "--out",
            str(out),
            "--steps",
            "10",
            "--seed",
            "3",
            "--no-progress",
        ]
    )
    assert code == 0
    return out


def test_train_writes_summary_and_checkpoints(run):
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "file" and summary["seed"] == 3 and summary["steps"] == 10
    assert summary["architecture"]["layers"] == [
        {"heads": 2, "head_dim": 8, "ffn_dim": 64, "loops": 0, "looped_heads": []}
    ]
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "step_00000010"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "LATEST",
        "step_00000005",
        "step_00000010",
    ]


def test_train_says_what_the_run_became(files, tmp_path, capsys):
    config = tmp_path / "incrt.json"
    options = {"calibration_batches": 2, "heldout_batches": 2, "refractory_steps": 5}
    config.write_text(json.dumps({**TINY, "policy": "incrt", "policy_options": options}))
    out = tmp_path / "run"
    args = ["train", "--data", str(files["train"]), "--config", str(config), "--out", str(out)]
    assert main([*args, "--steps", "20", "--no-progress"]) == 0
    captured = capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads(captured.out)["metrics"] == summary["metrics"]
    lines = dict(line.split(None, 1) for line in captured.err.replace("per layer", "").splitlines())
    heads = "/".join(str(layer["heads"]) for layer in summary["architecture"]["layers"])
    assert lines["heads"] == heads
    step = summary["converged_step"]
    assert lines["certified"].startswith(f"at step {step} of 20" if step else "no:")
    assert lines["forecast"] == f"{summary['forecast_heads'][0]} (at step 5)"
    assert f"accuracy {summary['metrics']['val_accuracy']:.4g}" in lines["metrics"]
    assert lines["report"] == str(out / "report" / "index.html")


def test_train_without_out_takes_a_free_run_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--task", "retrieval", "--steps", "2", "--no-progress"]
    argv += ["--set", "model.d_model=32", "--set", "task_options.n_train=200"]
    for name in ("retrieval-static", "retrieval-static-2"):
        assert main(argv) == 0
        assert f"run directory {Path('runs') / name}" in capsys.readouterr().err
        assert (tmp_path / "runs" / name / "summary.json").is_file()


def test_evaluate_prints_json(run, files, capsys):
    for target in (run, run / "checkpoints" / "step_00000005"):
        assert main(["evaluate", str(target), "--data", str(files["dev"])]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["n"] == 60 and 0 <= result["accuracy"] <= 1 and result["loss"] > 0


def test_the_older_checkpoint_flag_gives_the_same_result(run, files, capsys):
    dev = ["--data", str(files["dev"])]
    assert main(["evaluate", str(run), *dev]) == 0
    positional = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--checkpoint", str(run), *dev]) == 0
    assert json.loads(capsys.readouterr().out) == positional


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "--data", "x.tsv"], "evaluate needs a CHECKPOINT"),
        (["evaluate", "a", "--checkpoint", "b", "--data", "x"], "give the checkpoint once"),
        (["assign", "genomes.fasta", "--out", "c.csv"], "assign takes CHECKPOINT GENOMES"),
        (["assign", "a", "b", "--checkpoint", "c", "--out", "c.csv"], "GENOMES alone"),
    ],
)
def test_checkpoint_arguments_given_wrongly(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_version_and_one_line_per_command(capsys):
    from growformer import __version__

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"growformer {__version__}"
    proc = subprocess.run(
        [sys.executable, "-m", "growformer.cli", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "100"},
    )
    listing = proc.stdout.split("positional arguments:")[1].split("options:")[0]
    commands = [line.split()[0] for line in listing.splitlines()[2:] if line.strip()]
    assert commands == [
        "train",
        "evaluate",
        "assign",
        "import",
        "info",
        "report",
        "export",
        "plan",
        "analyze",
        "compress",
    ]  # each on a line of its own: no help text wraps onto a second line


def test_info(run, capsys):
    assert main(["info", str(run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["step"] == 10 and info["architecture"]["layers"][0]["heads"] == 2
    assert main(["info", str(run)]) == 0
    table = capsys.readouterr().out
    assert "layer  heads  head_dim" in table and "step 10" in table


def _error(args: list[str], capsys) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("growformer: error: "), err
    return lines[0]


def _train_args(data: Path, config: Path, out: Path) -> list[str]:
    return [
        "train",
        "--data",
        str(data),
        "--config",
        str(config),
        "--out",
        str(out),
        "--steps",
        "2",
        "--no-progress",
    ]


def _write(path: Path, content: str | bytes) -> Path:
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.tsv", None, "does not exist"),
        ("corrupt.tsv", b"sentence\tlabel\n\xff\xfe bad bytes\t1\n", "UTF-8"),
        ("columns.tsv", "review\tstars\ngood\t1\n", "has no 'sentence' or 'text' column"),
        ("empty.tsv", "sentence\tlabel\n", "no data rows"),
        ("ragged.tsv", "sentence\tlabel\ngood\t1\nbad\n", "line 3"),
        ("blank.csv", "", "empty"),
    ],
)
def test_bad_training_data(name, content, message, files, tmp_path, capsys):
    path = tmp_path / name
    if content is not None:
        _write(path, content)
    line = _error(_train_args(path, files["config"], tmp_path / "out"), capsys)
    assert message in line and str(path) in line


@pytest.mark.parametrize(
    "config, message",
    [
        ("{not json", "not valid JSON"),
        (
            '{"model": {"layers": [{"heads": 0, "head_dim": 8, "ffn_dim": 8, "loops": 1, '
            '"looped_heads": [0]}]}}',
            "looped head 0 is out of range",
        ),
        ('{"model": {"layers": [{"heads": -2, "head_dim": 8, "ffn_dim": 8}]}}', "heads must be"),
        ('{"model": {"layers": [{"heads": 2, "head_dim": 8}]}}', "ffn_dim"),
        ('{"stepz": 4}', "unknown key(s) stepz"),
    ],
)
def test_bad_config_or_architecture(config, message, files, tmp_path, capsys):
    path = _write(tmp_path / "c.json", config)
    line = _error(_train_args(files["train"], path, tmp_path / "out"), capsys)
    assert message in line


def test_bad_flags(files, tmp_path, capsys):
    args = ["--data", str(files["train"]), "--out", str(tmp_path / "o"), "--no-progress"]
    assert "steps must be positive" in _error(["train", *args, "--steps", "0"], capsys)
    assert "unknown policy 'grow'" in _error(["train", *args, "--policy", "grow"], capsys)
    assert "unknown task" in _error(["train", "--task", "imagenet", "--out", str(tmp_path)], capsys)
    assert "CUDA is not available" in _error(["train", *args, "--device", "cuda"], capsys)
    assert "no checkpoint at" in _error(["train", *args, "--resume"], capsys)


def _copy_checkpoint(run: Path, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "ckpt"
    shutil.copytree(run / "checkpoints" / "step_00000010", dst)
    return dst


def test_truncated_checkpoint(run, files, tmp_path, capsys):
    ckpt = _copy_checkpoint(run, tmp_path)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for args in (
        ["evaluate", str(ckpt), "--data", str(files["dev"])],
        ["info", str(ckpt)],
    ):
        assert "model.safetensors is truncated" in _error(args, capsys)


def test_checkpoint_disagreeing_with_its_architecture(run, tmp_path):
    ckpt = _copy_checkpoint(run, tmp_path)
    arch = json.loads((ckpt / "architecture.json").read_text())
    arch["layers"][0]["heads"] = 3
    (ckpt / "architecture.json").write_text(json.dumps(arch))
    with pytest.raises(CheckpointError, match=r"architecture\.json is truncated or altered"):
        checkpoint.load(ckpt)
    # Even with a consistent manifest, tensors that do not fit are refused by name.
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["files"]["architecture.json"] = checkpoint._digest(ckpt / "architecture.json")
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        CheckpointError,
        match=r"transformer.layers.0.attn.q_proj.weight has shape "
        r"\(16, 32\) but the architecture needs \(24, 32\)",
    ):
        checkpoint.load(ckpt)


def test_crash_while_saving_keeps_the_previous_checkpoint(run, tmp_path, monkeypatch):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run, out)
    ckpt = checkpoint.load(out)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "_save_optimizer", crash)
    import torch

    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(
            out,
            step=11,
            model=ckpt.model,
            optimizer=torch.optim.AdamW(ckpt.model.parameters()),
            config=ckpt.config,
            tokenizer_json=ckpt.tokenizer_json,
            task=ckpt.task,
            trainer_state=ckpt.trainer_state,
        )
    assert checkpoint.resolve(out).name == "step_00000010"
    assert checkpoint.load(out).trainer_state["step"] == 10


def test_evaluate_with_unknown_label(run, tmp_path, capsys):
    path = _write(tmp_path / "d.tsv", "sentence\tlabel\nfine film\t1\nawful\tmaybe\n")
    line = _error(["evaluate", str(run), "--data", str(path)], capsys)
    assert "maybe" in line and str(path) in line


def test_no_traceback_from_the_installed_command(files, tmp_path):
    """The real console entry point, in a fresh process."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "growformer.cli",
            "evaluate",
            "--checkpoint",
            str(tmp_path / "none"),
            "--data",
            str(files["dev"]),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "no checkpoint at" in proc.stderr


def test_cli_resume_in_two_halves_equals_one_run(tmp_path):
    """N steps straight vs N/2, stop, --resume, N/2 more: same weights and events.jsonl
    (the configuration a YAML file)."""
    import yaml
    from test_train import _files, config

    cfg = config()
    del cfg["steps"], cfg["decay_steps"]
    path = _write(tmp_path / "c.yaml", yaml.safe_dump(cfg))
    common = ["train", "--config", str(path), "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "straight"), "--steps", "24"]) == 0
    half = [*common, "--out", str(tmp_path / "halves")]
    assert main([*half, "--steps", "12", "--decay-steps", "24"]) == 0
    assert (
        main(
            [
                "train",
                "--out",
                str(tmp_path / "halves"),
                "--resume",
                "--steps",
                "24",
                "--no-progress",
            ]
        )
        == 0
    )
    straight, halves = _files(tmp_path / "straight"), _files(tmp_path / "halves")
    assert halves["weights"] == straight["weights"]
    assert halves["optimizer"] == straight["optimizer"]
    assert halves["events"] == straight["events"] and halves["events"].count(b"\n") == 4


def test_plan_writes_a_config_that_trains(files, tmp_path, capsys):
    plan = tmp_path / "plan.json"
    args = ["plan", "--budget", "48", "--layers", "2", "--seq", "48", "--d-model", "32"]
    args += ["--head-dim", "8", "--strategy", "front_loaded_heads", "--out", str(plan)]
    assert main(args) == 0
    assert "front_loaded_heads" in capsys.readouterr().out
    planned = json.loads(plan.read_text())["model"]["layers"]
    assert [(x["heads"], x["head_dim"]) for x in planned] == [(4, 8), (2, 8)]
    config = {**TINY, **json.loads(plan.read_text())}
    config["model"] = {**TINY["model"], **config["model"]}
    out = tmp_path / "run"
    assert (
        main(_train_args(files["train"], _write(tmp_path / "c.json", json.dumps(config)), out)) == 0
    )
    layers = json.loads((out / "summary.json").read_text())["architecture"]["layers"]
    assert [(x["heads"], x["head_dim"]) for x in layers] == [(4, 8), (2, 8)]


def test_analyze_then_compress(run, files, tmp_path, capsys):
    assert main(["analyze", str(run), "--out", str(tmp_path / "a"), "--batches", "2"]) == 0
    curves = json.loads((tmp_path / "a" / "saturation.json").read_text())
    assert (tmp_path / "a" / "saturation.png").stat().st_size > 0
    assert curves["layers"][0]["head_dims"] == [1, 4, 8]
    assert len(curves["layers"][0]["head_loss"]) == 2
    capsys.readouterr()
    out = tmp_path / "c"
    dev = ["--data", str(files["dev"])]
    assert main(["compress", str(run), "--out", str(out), "--ranks", "4", *dev]) == 0
    printed = capsys.readouterr().out
    assert "head dimensions [8] -> [4]; kv_heads None" in printed
    report = json.loads((out / "compression.json").read_text())
    assert report["after"]["params"] < report["before"]["params"]
    assert report["after"]["forward_flops"] < report["before"]["forward_flops"]
    compressed = checkpoint.load(out)
    assert compressed.model.arch.layers[0].head_dim == 4
    assert compressed.config["model"]["layers"][0]["head_dim"] == 4
    # The written checkpoint holds the measured model: the same metrics when evaluated again.
    assert main(["evaluate", str(out), *dev]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(report["after"]["metrics"])
    out2 = tmp_path / "t"
    curves_file = str(tmp_path / "a" / "saturation.json")
    args = ["compress", str(run), "--out", str(out2), "--tolerance", "1e9", "--curves", curves_file]
    assert main(args) == 0
    assert json.loads((out2 / "compression.json").read_text())["ranks"] == [1]
    out_b = tmp_path / "b"
    args = ["compress", str(run), "--out", str(out_b), "--budget", "8", "--curves", curves_file]
    assert main(args) == 0  # 2 heads: a budget of 8 leaves 4 dimensions per head
    report = json.loads((out_b / "compression.json").read_text())
    assert report["ranks"] == [4] and report["after"]["attention_budget"] == 8
    out3 = tmp_path / "g"
    assert main(["compress", str(run), "--out", str(out3), "--ranks", "4", "--kv-heads", "1"]) == 0
    assert checkpoint.load(out3).model.arch.layers[0].kv_heads == 1
    out4 = tmp_path / "e"
    assert main(["compress", str(run), "--out", str(out4), "--embed-rank", "4", *dev]) == 0
    assert "embed_rank 4" in capsys.readouterr().out
    report = json.loads((out4 / "compression.json").read_text())
    assert report["after"]["params"] < report["before"]["params"]
    compressed = checkpoint.load(out4)
    assert compressed.model.arch.embed_rank == 4 == compressed.config["model"]["embed_rank"]
    assert main(["evaluate", str(out4), *dev]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(report["after"]["metrics"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ranks", "a,b"], "--ranks must be integers"),
        (["--ranks", "4,4"], "2 ranks for a model with 1 layers"),
        (["--tolerance", "0.1", "--curves", "/nonexistent.json"], "does not exist"),
        (["--embed-rank", "0"], "embed_rank must be an integer in [1, "),
    ],
)
def test_compress_bad_input(run, tmp_path, capsys, args, message):
    assert message in _error(["compress", str(run), "--out", str(tmp_path / "c"), *args], capsys)
