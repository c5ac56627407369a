"""Faults: a process killed mid-checkpoint, non-finite losses, structural budgets."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_incrt import run_config as incrt_config

from growformer import checkpoint, cli
from growformer.arch import Architecture
from growformer.errors import ConfigError, DivergenceError
from growformer.model import build_model
from growformer.structure import param_count
from growformer.training.config import TrainConfig
from growformer.training.loop import Trainer, train

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def config(**changes) -> dict:
    base = {
        "task": "retrieval",
        "policy": "static",
        "steps": 6,
        "decay_steps": 6,
        "batch_size": 16,
        "warmup_steps": 2,
        "eval_every": 100,
        "checkpoint_every": 2,
        "keep_checkpoints": 2,
        "log_every": 2,
        "task_options": {"n_train": 128, "n_val": 32, "k": 2, "seq_len": 10},
        "model": {"d_model": 32, "n_layers": 2, "heads": 2, "head_dim": 8, "ffn_dim": 64},
        "device": "cpu",
    }
    return {**base, **changes}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint.resolve(run) / "model.safetensors")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _resume_with_cli(cfg: dict, out: Path, tmp_path: Path) -> int:
    path = tmp_path / f"{out.name}.json"
    path.write_text(json.dumps(cfg))
    return cli.main(
        ["train", "--config", str(path), "--out", str(out), "--resume", "--no-progress"]
    )


# --- kill -9 while a checkpoint is written ---------------------------------------------

# Forks one child per kill point (torch is imported once, with the modules that torch and
# the trainer import lazily, but no torch op runs before a fork).
# Each child copies the run trained to step 4, resumes it to step 6 and SIGKILLs itself
# during the checkpoint of step 6: before its n-th write (mkdir, file opened for writing,
# rename, rmtree), or right after its n-th safetensors file is written, torn to half.
# The first child kills nothing and counts the writes.
DRIVER = r"""
import json, os, shutil, signal, sys
import torch, torch._dynamo, torch.optim.adamw
from growformer import checkpoint, report
from growformer.training.config import TrainConfig
from growformer.training.loop import Trainer

args = json.loads(sys.argv[1])
cfg = TrainConfig.from_dict(args["config"])
WRITES = ("os.mkdir", "os.rename", "shutil.rmtree")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT


def child(out, kill_at, tear_at):
    torch.set_num_threads(args["threads"])  # the sums of the run they are compared with
    shutil.copytree(args["prefix"], out)
    counts = {"writes": 0, "tensor_files": 0}
    armed = [False]

    def hook(event, a):
        if armed[0] and (event in WRITES or (event == "open" and a[2] & WRITE_FLAGS)):
            counts["writes"] += 1
            if counts["writes"] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    real_save, real_save_file = checkpoint.save, checkpoint.save_file

    def save(*a, **k):
        armed[0] = True
        try:
            return real_save(*a, **k)
        finally:
            armed[0] = False

    def save_file(tensors, path, *a, **k):
        real_save_file(tensors, path, *a, **k)
        counts["tensor_files"] += 1
        if counts["tensor_files"] == tear_at:
            os.truncate(path, os.path.getsize(path) // 2)
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.save, checkpoint.save_file = save, save_file
    sys.addaudithook(hook)
    Trainer(cfg, out, resume=True).run(progress=False)
    with open(os.path.join(args["root"], "counts.json"), "w") as f:
        json.dump(counts, f)


def fork(name, kill_at=None, tear_at=None):
    out = os.path.join(args["root"], name)
    pid = os.fork()
    if pid == 0:
        try:
            child(out, kill_at, tear_at)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    return {"out": out, "killed": killed}


done = fork("complete")
with open(os.path.join(args["root"], "counts.json")) as f:
    counts = json.load(f)
runs = [fork(f"write{n}", kill_at=n) for n in range(1, counts["writes"] + 1)]
runs += [fork(f"torn{n}", tear_at=n) for n in range(1, counts["tensor_files"] + 1)]
print(json.dumps({"complete": done, "counts": counts, "runs": runs}))
"""


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight")
    train(TrainConfig.from_dict(config()), out, progress=False)
    return out


def test_sigkill_at_every_write_of_a_checkpoint_loses_nothing(straight, tmp_path):
    """Killed before each write of the step-6 checkpoint, or with a tensor file torn in
    half: the newest complete checkpoint loads (manifest verified) and ``growformer train
    --resume`` ends with the weights of a run never interrupted."""
    prefix = tmp_path / "prefix"
    train(TrainConfig.from_dict(config(steps=4)), prefix, progress=False)
    args = {
        "config": config(),
        "prefix": str(prefix),
        "root": str(tmp_path),
        "threads": torch.get_num_threads(),
    }
    cmd = [sys.executable, "-c", DRIVER, json.dumps(args)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert not report["complete"]["killed"]
    # mkdir, 9 JSON/text files, rename, LATEST (open, rename), rmtree x2; model,
    # optimizer, rng tensors.
    assert report["counts"]["writes"] >= 14 and report["counts"]["tensor_files"] == 3
    expected = _weights(straight)
    complete = _weights(Path(report["complete"]["out"]))
    assert all(torch.equal(complete[k], expected[k]) for k in expected)
    steps_found = set()
    for run in report["runs"]:
        out = Path(run["out"])
        assert run["killed"], out.name
        ckpt = checkpoint.load(out)
        steps_found.add(ckpt.trainer_state["step"])
        assert _resume_with_cli(config(), out, tmp_path) == 0, out.name
        got = _weights(out)
        assert all(torch.equal(got[k], expected[k]) for k in expected), out.name
        leftovers = [*(out / "checkpoints").glob(".tmp-*"), *(out / "checkpoints").glob(".*.tmp-*")]
        assert not leftovers, out.name  # half-written files and directories: gone
    # Kills before the switch of LATEST find step 4, the later ones step 6.
    assert steps_found == {4, 6}


# --- non-finite losses -----------------------------------------------------------------

POISON = "zzz qqq xxx"


@pytest.fixture
def poisoned(tmp_path) -> tuple[dict, Path, list[int]]:
    """A run saved at step 0 with the embeddings of the tokens of one training row blown
    up to 1e30 (finite, as a flipped exponent bit would leave them): the loss overflows to
    NaN exactly at the steps whose batch holds that row. Returns the config, the run and
    those steps (1-based)."""
    words = ["good", "bad", "film", "fine", "dull", "grand", "plot", "cast", "lame", "hit"]
    rows = [f"{words[i % 10]} {words[(3 * i + 1) % 10]} {words[(7 * i) % 10]}" for i in range(63)]
    lines = [f"{r}\t{'pos' if i % 2 else 'neg'}" for i, r in enumerate(rows)]
    (tmp_path / "train.tsv").write_text("text\tlabel\n" + "\n".join([*lines, POISON + "\tpos"]))
    (tmp_path / "val.tsv").write_text("text\tlabel\ngood film\tpos\nbad plot\tneg\n")
    cfg = config(
        task="file",
        data_file=str(tmp_path / "train.tsv"),
        task_options={"val_file": str(tmp_path / "val.tsv")},
        vocab_size=300,
        max_len=8,
        batch_size=8,
        steps=16,
        decay_steps=16,
        checkpoint_every=1,
        log_every=1,
        model={**config()["model"], "dropout": 0.0},
    )
    out = tmp_path / "run"
    trainer = Trainer(TrainConfig.from_dict(cfg), out)
    ids = trainer.data.train.ids
    poison = set(ids[-1]) - {t for row in ids[:-1] for t in row}
    assert poison
    with torch.no_grad():
        trainer.model.transformer.tok_emb.weight[sorted(poison)] = 1e30
    trainer.save()
    (out / "poison.json").write_text(json.dumps(sorted(poison)))
    batches = (trainer.stream.batch(s)["input_ids"] for s in range(cfg["steps"]))
    steps = [s + 1 for s, b in enumerate(batches) if any((b == t).any() for t in poison)]
    return cfg, out, steps


def _finite_and_only_poison_huge(run: Path) -> bool:
    """Every weight is finite, and the huge ones are the poisoned embedding rows."""
    weights = _weights(run)
    huge = (weights["transformer.tok_emb.weight"].abs() > 1e20).any(1).nonzero().flatten()
    poison = json.loads((run / "poison.json").read_text())
    return huge.tolist() == poison and all(torch.isfinite(w).all().item() for w in weights.values())


def _skipped(run: Path) -> list[int]:
    return [r["step"] for r in _jsonl(run / "metrics.jsonl") if "skipped" in r]


def test_nonfinite_loss_stops_before_the_weights_then_skip_resumes(poisoned):
    cfg, out, bad = poisoned
    assert len(bad) >= 2 and bad[0] > 1 and bad[-1] < 16, bad  # the data's seeded order
    with pytest.raises(DivergenceError, match=f"non-finite loss nan .* at step {bad[0]};"):
        train(TrainConfig.from_dict(cfg), out, resume=True, progress=False)
    ckpt = checkpoint.load(out)  # the last one before the fault, never a poisoned one
    assert ckpt.trainer_state["step"] == bad[0] - 1
    assert _finite_and_only_poison_huge(out) and _skipped(out) == []

    # Resumed with the fault handled by skipping: only the poisoned batches are skipped.
    summary = train(TrainConfig.from_dict({**cfg, "on_nonfinite": "skip"}), out, resume=True)
    assert summary["steps"] == 16 and _skipped(out) == bad
    assert _finite_and_only_poison_huge(out)
    adam = load_file(checkpoint.resolve(out) / "optimizer.safetensors")
    assert adam["state.0.step"].item() == 16 - len(bad)  # no optimizer step on a skip
    losses = [r["train_loss"] for r in _jsonl(out / "metrics.jsonl") if "train_loss" in r]
    assert losses and all(math.isfinite(x) for x in losses)  # a skip logs no NaN loss


def test_two_processes_skip_the_same_batches_as_one(poisoned, tmp_path):
    """The poisoned row lands in one rank's half of a batch: both ranks skip the batches
    one process skips, and end with its weights."""
    cfg, out, bad = poisoned
    cfg = {**cfg, "on_nonfinite": "skip"}
    double = tmp_path / "double"
    shutil.copytree(out, double)
    train(TrainConfig.from_dict(cfg), out, resume=True, progress=False)
    path = tmp_path / "double.json"
    path.write_text(json.dumps(cfg))
    args = ["train", "--config", str(path), "--out", str(double), "--no-progress", "--resume"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*TORCHRUN, "-m", "growformer.cli", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _skipped(double) == _skipped(out) == bad
    one, two = _weights(out), _weights(double)
    assert all(torch.allclose(one[k], two[k], rtol=1e-5, atol=1e-5) for k in one)


def test_divergence_is_one_cli_error_and_skips_give_up(tmp_path, capsys):
    """lr 1e30 overflows the weights after one step: the CLI ends with one error line
    (exit 2) and the checkpoints before it load with finite weights; skipping gives up
    after max_nonfinite_skips batches in a row."""
    cfg = config(lr=1e30, warmup_steps=0, checkpoint_every=1)
    assert _resume_with_cli(cfg, tmp_path / "run", tmp_path) == 2  # nothing to resume
    capsys.readouterr()
    path = tmp_path / "diverge.json"
    path.write_text(json.dumps(cfg))
    args = ["train", "--config", str(path), "--out", str(tmp_path / "run"), "--no-progress"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("growformer: error: non-finite loss")
    ckpt = checkpoint.load(tmp_path / "run")
    assert all(torch.isfinite(w).all() for w in _weights(tmp_path / "run").values())
    assert f"at step {ckpt.trainer_state['step'] + 1};" in err[0]

    skip = TrainConfig.from_dict({**cfg, "on_nonfinite": "skip", "max_nonfinite_skips": 3})
    with pytest.raises(DivergenceError, match="after 3 skipped in a row"):
        train(skip, tmp_path / "skip", progress=False)
    skipped = _skipped(tmp_path / "skip")
    assert len(skipped) == 3 and skipped == list(range(skipped[0], skipped[0] + 3))


# --- structural budgets ----------------------------------------------------------------


def test_max_params_refuses_growth_and_training_goes_on(tmp_path):
    """An INCRT run that grows past the budget: the heads that would exceed it are refused
    (logged in stats.jsonl, at most once per layer and check), the others applied."""
    cfg = incrt_config(model={"dropout": 0.0})
    initial = Trainer(TrainConfig.from_dict(cfg), tmp_path / "probe").model.num_params()
    cap = initial + 4 * 8 * 32  # room for one head of head_dim 8 in d_model 32
    capped = train(
        TrainConfig.from_dict({**cfg, "max_params": cap}), tmp_path / "capped", progress=False
    )
    assert capped["steps"] == cfg["steps"] and capped["params"] <= cap
    applied = [e for e in capped["events"] if e["op"] == "add_head"]
    assert len(applied) == 1 and applied[0]["params_after"] == cap
    refused = [r for r in _jsonl(tmp_path / "capped" / "stats.jsonl") if "refused" in r]
    assert refused and all(r["op"] == "add_head" for r in refused)
    for r in refused:
        assert r["refused"].startswith("params ") and r["refused"].endswith(f"> max_params {cap}")
        assert int(r["refused"].split()[1]) > cap
    assert len({(r["step"], r["layer"]) for r in refused}) == len(refused)


def test_max_heads_per_layer_refuses_a_scheduled_head(tmp_path):
    events = [
        {"step": 2, "op": "add_head", "layer": 0},
        {"step": 3, "op": "add_head", "layer": 0},
        {"step": 3, "op": "add_head", "layer": 1},
    ]
    cfg = config(policy="scheduled", policy_options={"events": events}, max_heads_per_layer=3)
    summary = train(TrainConfig.from_dict(cfg), tmp_path, progress=False)
    assert [layer["heads"] for layer in summary["architecture"]["layers"]] == [3, 3]
    refused = [r for r in _jsonl(tmp_path / "stats.jsonl") if "refused" in r]
    assert refused == [
        {
            "kind": "budget.refused",
            "step": 3,
            "op": "add_head",
            "layer": 0,
            "refused": "layer 0 heads 4 > max_heads_per_layer 3",
        }
    ]


def test_param_count_matches_a_built_model():
    arch = Architecture.uniform(
        kind="classifier", d_model=24, vocab_size=50, max_len=9, n_layers=2, heads=3,
        head_dim=8, ffn_dim=40, num_labels=3,
    )  # fmt: skip
    assert param_count(arch) == build_model(arch).num_params()
    assert param_count(arch.with_layer(1, heads=4)) == param_count(arch) + 4 * 8 * 24


# --- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"on_nonfinite": "ignore"}, "on_nonfinite must be one of stop, skip"),
        ({"max_nonfinite_skips": 0}, "max_nonfinite_skips must be positive"),
        ({"max_params": 0}, "max_params must be positive or null"),
        ({"max_heads_per_layer": -1}, "max_heads_per_layer must be positive or null"),
        ({"max_params": "1M"}, "config.max_params has the wrong type"),
        ({"on_nonfinite": None}, "config.on_nonfinite has the wrong type"),
    ],
)
def test_bad_values_of_the_fault_options(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(config(**changes))


def test_an_initial_model_over_budget_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"over budget: params \d+ > max_params 1000"):
        train(TrainConfig.from_dict(config(max_params=1000)), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="layer 0 heads 2 > max_heads_per_layer 1"):
        train(TrainConfig.from_dict(config(max_heads_per_layer=1)), tmp_path, progress=False)


def test_checkpoints_from_before_the_options_resume_and_may_change_them(straight, tmp_path):
    """A checkpoint without the new fields (config and trainer state) resumes exactly;
    the fault options and budgets may change on resume."""
    train(TrainConfig.from_dict(config(steps=4)), tmp_path, progress=False)
    for ckpt in (tmp_path / "checkpoints").glob("step_*"):
        manifest = json.loads((ckpt / "manifest.json").read_text())
        for name, drop in (
            (checkpoint.TRAIN_CONFIG, ("on_nonfinite", "max_nonfinite_skips", "max_params")),
            ("trainer_state.json", ("nonfinite_skips",)),
        ):
            saved = json.loads((ckpt / name).read_text())
            for key in (*drop, "max_heads_per_layer"):
                saved.pop(key, None)
            text = json.dumps(saved).encode()
            (ckpt / name).write_bytes(text)
            digest = {"bytes": len(text), "sha256": hashlib.sha256(text).hexdigest()}
            manifest["files"][name] = digest
        (ckpt / "manifest.json").write_text(json.dumps(manifest))
    changed = config(on_nonfinite="skip", max_nonfinite_skips=2, max_params=10**6)
    train(TrainConfig.from_dict(changed), tmp_path, resume=True, progress=False)
    expected, got = _weights(straight), _weights(tmp_path)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
