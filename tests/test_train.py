"""Training loop: exact resume, determinism, logs, graceful stop, configuration errors."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from growformer import checkpoint
from growformer.errors import ConfigError, DataError
from growformer.evaluation import macro_f1
from growformer.hf.files import growformer_tokenizer
from growformer.optim import lr_at
from growformer.training.config import TrainConfig
from growformer.training.loop import train

EVENTS = [
    {"step": 5, "op": "add_head", "layer": 0, "init": "random"},
    {"step": 11, "op": "remove_head", "layer": 1, "head": 0},
    {"step": 14, "op": "set_loops", "layer": 0, "loops": 1, "looped_heads": [2]},
    {"step": 19, "op": "add_head", "layer": 1, "init": "function_preserving"},
]


def config(**changes) -> dict:
    base = {
        "task": "retrieval",
        "policy": "scheduled",
        "policy_options": {"events": EVENTS},
        "steps": 24,
        "decay_steps": 24,
        "batch_size": 16,
        "warmup_steps": 4,
        "eval_every": 8,
        "checkpoint_every": 6,
        "log_every": 4,
        "task_options": {"n_train": 256, "n_val": 64, "k": 2, "seq_len": 12},
        "model": {
            "d_model": 32,
            "n_layers": 2,
            "heads": 2,
            "head_dim": 8,
            "ffn_dim": 64,
            "dropout": 0.1,
        },
        "device": "cpu",
    }
    return {**base, **changes}


def _files(run: Path) -> dict[str, bytes]:
    latest = (run / "checkpoints" / "LATEST").read_text().strip()
    ckpt = run / "checkpoints" / latest
    return {
        "weights": (ckpt / "model.safetensors").read_bytes(),
        "optimizer": (ckpt / "optimizer.safetensors").read_bytes(),
        "events": (run / "events.jsonl").read_bytes(),
        "metrics": (run / "metrics.jsonl").read_bytes(),
    }


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("straight")
    return out, train(TrainConfig.from_dict(config()), out, progress=False)


def test_summary_has_the_promised_fields(straight):
    out, summary = straight
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    for key in (
        "task",
        "policy",
        "seed",
        "steps",
        "architecture",
        "params",
        "metrics",
        "events",
        "train_flops",
        "wall_s",
    ):
        assert key in summary
    assert summary["steps"] == 24 and summary["train_flops"] > 0
    assert {"val_loss", "val_accuracy"} <= summary["metrics"].keys()
    assert [layer["heads"] for layer in summary["architecture"]["layers"]] == [3, 2]
    assert summary["architecture"]["layers"][0]["loops"] == 1
    assert [e["op"] for e in summary["events"]] == [e["op"] for e in EVENTS]
    assert [e["step"] for e in summary["events"]] == [5, 11, 14, 19]


def _without_session_end_eval(metrics: bytes, step: int) -> bytes:
    """Drop the evaluation a session runs at its last step (the straight run has none there)."""
    lines = metrics.decode().splitlines(keepends=True)
    extra = [line for line in lines if json.loads(line)["step"] == step and "val_loss" in line]
    assert len(extra) == 1
    return "".join(line for line in lines if line not in extra).encode()


def test_resume_is_exact(straight, tmp_path):
    out, _ = straight
    train(TrainConfig.from_dict(config(steps=12)), tmp_path, progress=False)
    summary = train(TrainConfig.from_dict(config()), tmp_path, resume=True, progress=False)
    assert summary["steps"] == 24
    resumed, expected = _files(tmp_path), _files(out)
    resumed["metrics"] = _without_session_end_eval(resumed["metrics"], 12)
    assert resumed == expected


def test_resume_of_a_checkpoint_written_before_a_config_field_existed(straight, tmp_path):
    """A configuration field added since (here ``model.embed_rank``) reads as its default."""
    out, _ = straight
    train(TrainConfig.from_dict(config(steps=12)), tmp_path, progress=False)
    for ckpt in (tmp_path / "checkpoints").glob("step_*"):
        saved = json.loads((ckpt / checkpoint.TRAIN_CONFIG).read_text())
        del saved["model"]["embed_rank"]
        text = json.dumps(saved).encode()
        (ckpt / checkpoint.TRAIN_CONFIG).write_bytes(text)
        manifest = json.loads((ckpt / "manifest.json").read_text())
        digest = {"bytes": len(text), "sha256": hashlib.sha256(text).hexdigest()}
        manifest["files"][checkpoint.TRAIN_CONFIG] = digest
        (ckpt / "manifest.json").write_text(json.dumps(manifest))
    train(TrainConfig.from_dict(config()), tmp_path, resume=True, progress=False)
    assert _files(tmp_path)["weights"] == _files(out)["weights"]


def test_resume_of_a_checkpoint_of_format_1(straight, tmp_path):
    """Checkpoints written before the files for transformers (format 1: the training
    configuration in config.json, no tokenizer_config.json) resume exactly."""
    out, _ = straight
    train(TrainConfig.from_dict(config(steps=12)), tmp_path, progress=False)
    for ckpt in (tmp_path / "checkpoints").glob("step_*"):
        (ckpt / checkpoint.TRAIN_CONFIG).replace(ckpt / "config.json")
        (ckpt / "tokenizer_config.json").unlink()
        tokenizer = ckpt / "tokenizer.json"
        tokenizer.write_text(growformer_tokenizer(tokenizer.read_text()))
        files = sorted(p.name for p in ckpt.iterdir() if p.name != "manifest.json")
        manifest = {"format": 1, "files": {f: checkpoint._digest(ckpt / f) for f in files}}
        (ckpt / "manifest.json").write_text(json.dumps(manifest))
    assert checkpoint.read_config(tmp_path)["steps"] == 12
    summary = train(TrainConfig.from_dict(config()), tmp_path, resume=True, progress=False)
    assert summary["steps"] == 24
    assert _files(tmp_path)["weights"] == _files(out)["weights"]
    latest = checkpoint.resolve(tmp_path)
    assert json.loads((latest / "manifest.json").read_text())["format"] == checkpoint.FORMAT
    assert json.loads((latest / "config.json").read_text())["model_type"] == "growformer"


def test_same_seed_same_trajectory_other_seed_differs(straight, tmp_path):
    out, summary = straight
    again = train(TrainConfig.from_dict(config()), tmp_path / "a", progress=False)
    assert _files(tmp_path / "a") == _files(out)
    assert again["metrics"] == summary["metrics"]
    other = train(TrainConfig.from_dict(config(seed=1)), tmp_path / "b", progress=False)
    assert other["metrics"] != summary["metrics"]


def test_logs_drop_lines_written_after_the_checkpoint(straight, tmp_path):
    """A crash after the last checkpoint leaves log lines that the resumed run rewrites."""
    out, _ = straight
    train(TrainConfig.from_dict(config(steps=12)), tmp_path, progress=False)
    with open(tmp_path / "events.jsonl", "a") as f:
        f.write('{"op": "add_head", "layer": 0, "step": 13}\n')
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 13, "train_loss": 9.9}\n')
    train(TrainConfig.from_dict(config()), tmp_path, resume=True, progress=False)
    resumed, expected = _files(tmp_path), _files(out)
    resumed["metrics"] = _without_session_end_eval(resumed["metrics"], 12)
    assert resumed == expected


def test_sigterm_stops_with_a_checkpoint_and_resumes_exactly(tmp_path):
    cfg = config(steps=4000, decay_steps=24, checkpoint_every=1000, eval_every=1000, log_every=1)
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "growformer.cli",
        "train",
        "--config",
        str(tmp_path / "c.json"),
        "--out",
        str(run),
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopped at step" in err and "Traceback" not in err
    stopped = int(err.split("stopped at step ")[1].split(";")[0])
    assert 0 < stopped < 4000
    assert (run / "checkpoints" / "LATEST").read_text().strip() == f"step_{stopped:08d}"
    assert not (run / "summary.json").exists()

    # Resume to 10 steps past the stop and compare with a straight run to that step.
    total = stopped + 10
    done = subprocess.run([*cmd, "--resume", "--steps", str(total)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    train(TrainConfig.from_dict({**cfg, "steps": total}), tmp_path / "straight", progress=False)
    resumed, expected = _files(run), _files(tmp_path / "straight")
    assert (resumed["weights"], resumed["optimizer"], resumed["events"]) == (
        expected["weights"],
        expected["optimizer"],
        expected["events"],
    )


def test_lr_schedule():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)
    assert lr_at(500, cfg) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"steps": 0}, "steps must be positive"),
        ({"lr": -1}, "lr must be positive"),
        ({"min_lr_ratio": 2}, "min_lr_ratio must be in"),
        ({"batch_size": "8"}, "config.batch_size has the wrong type"),
        ({"compile": 1}, "config.compile has the wrong type: 1"),
        ({"steps": True}, "config.steps has the wrong type: True"),
        ({"colour": "red"}, "unknown key"),
        ({"model": {"heads": 1, "depth": 3}}, "config.model has unknown key"),
        ({"model": []}, "config.model must be a JSON object"),
    ],
)
def test_bad_configs(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(config(**changes))


def test_run_dir_mistakes(straight, tmp_path):
    out, _ = straight
    with pytest.raises(ConfigError, match="already holds a run"):
        train(TrainConfig.from_dict(config()), out, progress=False)
    with pytest.raises(ConfigError, match="cannot resume: seed is 3"):
        train(TrainConfig.from_dict(config(seed=3)), out, resume=True, progress=False)
    bad = config(
        model={
            "layers": [{"heads": 1, "head_dim": 8, "ffn_dim": 8, "loops": 1, "looped_heads": [4]}]
        }
    )
    with pytest.raises(ConfigError, match="looped head 4 is out of range"):
        train(TrainConfig.from_dict(bad), tmp_path / "x", progress=False)


def test_resume_refuses_changed_data(tmp_path):
    train(
        TrainConfig.from_dict(config(steps=4, policy="static", policy_options={})),
        tmp_path,
        progress=False,
    )
    changed = config(steps=8, policy="static", policy_options={})
    changed["task_options"] = {**changed["task_options"], "n_train": 300}
    with pytest.raises((ConfigError, DataError), match="task_options"):
        train(TrainConfig.from_dict(changed), tmp_path, resume=True, progress=False)


def test_lm_task_trains_and_reports_perplexity(tmp_path):
    cfg = config(
        task="lm",
        policy="static",
        policy_options={},
        task_options={"max_chars": 60_000},
        steps=6,
        max_len=32,
        vocab_size=400,
    )
    summary = train(TrainConfig.from_dict(cfg), tmp_path, progress=False)
    assert summary["architecture"]["kind"] == "causal_lm"
    assert {"val_loss", "val_ppl"} <= summary["metrics"].keys()
    assert summary["metrics"]["val_ppl"] < 400


def test_no_pickle_in_checkpoints(straight):
    out, _ = straight
    ckpt = out / "checkpoints" / (out / "checkpoints" / "LATEST").read_text().strip()
    assert sorted(p.suffix for p in ckpt.iterdir()) == sorted([".safetensors"] * 3 + [".json"] * 9)
    assert not [p for p in ckpt.iterdir() if p.suffix in (".pt", ".pkl", ".bin")]


def test_macro_f1_by_hand():
    # labels x predictions: class 0: 3 right, 1 called 1; class 1: 1 right; class 2 never seen,
    # but predicted once for a class-1 example.
    confusion = torch.tensor([[3, 1, 0], [0, 1, 1], [0, 0, 0]])
    f1 = [2 * 3 / (4 + 3), 2 * 1 / (2 + 2), 0.0]
    assert macro_f1(confusion) == pytest.approx(sum(f1) / 3)
    # A class absent from labels and predictions does not count.
    assert macro_f1(torch.tensor([[2, 0, 0], [0, 2, 0], [0, 0, 0]])) == 1.0


FAULTS_PER_STEP = """
import resource, sys, torch
from growformer.arch import Architecture
from growformer.model import build_model
from growformer.training.runtime import keep_freed_memory
if sys.argv[1] == "keep" and not keep_freed_memory():
    print("unsupported")
    sys.exit()
torch.set_num_threads(1)  # one arena: the same allocations every run
torch.manual_seed(0)
arch = Architecture.uniform(kind="causal_lm", d_model=64, vocab_size=4000, max_len=64,
                            n_layers=2, heads=4, head_dim=16, ffn_dim=256)
model = build_model(arch)
optimizer = torch.optim.AdamW(model.parameters())
ids = torch.randint(0, 4000, (16, 64))
def step():
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
for _ in range(10):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="page-fault counts and mallopt: Linux")
def test_kept_freed_memory_spares_the_page_faults_of_every_step():
    # Each setting in a fresh process: mallopt is process-wide and the trainer sets it.
    def faults(mode: str) -> str:
        cmd = [sys.executable, "-c", FAULTS_PER_STEP, mode]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()

    kept = [faults("keep") for _ in range(2)]
    if "unsupported" in kept:
        pytest.skip("the C library has no mallopt")
    # The logits, their log-softmax and its gradient are 16 MB (4000 pages) each. By default
    # glibc hands some of them back to the system every step: measured 5,700-16,000 faults
    # a step in most processes, 1,200 in a few (the heap's layout varies from process to
    # process). Kept memory faults 0 a step, or 400-800 where the heap grows once more
    # within the 10 steps measured.
    assert max(map(float, kept)) < 2000
    assert any(float(faults("default")) > 4000 for _ in range(3))
