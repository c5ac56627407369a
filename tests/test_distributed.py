"""Data parallelism: real ``torchrun`` launches of 2 CPU processes (gloo) against one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest
import torch
from helpers import arch
from safetensors.torch import load_file
from test_incrt import run_config as incrt_config
from test_sgt import run_config as sgt_config

from growformer import checkpoint
from growformer.data import load_task
from growformer.distributed import Ranks, fingerprint
from growformer.errors import ConfigError
from growformer.evaluation import evaluate
from growformer.model import build_model
from growformer.training.config import ModelConfig, TrainConfig
from growformer.training.loop import train
from growformer.training.setup import build_arch

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _command(cfg: dict, tmp_path: Path, out: Path, *extra: str) -> list[str]:
    path = tmp_path / f"{out.name}.json"
    path.write_text(json.dumps(cfg))
    train_args = ["train", "--config", str(path), "--out", str(out), "--no-progress", *extra]
    return [*TORCHRUN, "-m", "growformer.cli", *train_args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun(cfg: dict, tmp_path: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = _command(cfg, tmp_path, out, *extra)
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint.resolve(run) / "model.safetensors")


def _structure(events: list[dict]) -> list[dict]:
    """The events without the losses measured around them (floats of the probe batch)."""
    return [{k: v for k, v in e.items() if not k.startswith("loss_")} for e in events]


CONFIGS = {
    # No dropout: two processes cannot draw one process's dropout masks.
    "incrt": incrt_config(model={"dropout": 0.0}),
    "sgt": {**sgt_config(), "model": {**sgt_config()["model"], "dropout": 0.0}},
}


@pytest.mark.parametrize("policy", list(CONFIGS))
def test_two_processes_grow_like_one(policy, tmp_path):
    """Same global batch: the same structure trajectory, and the same weights within 1e-5."""
    cfg = CONFIGS[policy]
    single = train(TrainConfig.from_dict(cfg), tmp_path / "single", progress=False)
    assert single["events"], "the run must change its structure to test anything"
    done = _torchrun(cfg, tmp_path, tmp_path / "double")
    assert len(done.stdout.strip().splitlines()) == 1  # rank 0 alone prints the summary
    double = json.loads((tmp_path / "double" / "summary.json").read_text())
    assert (single["ranks"], double["ranks"]) == (1, 2)
    assert _structure(double["events"]) == _structure(single["events"])
    for a, b in zip(double["events"], single["events"], strict=True):
        assert a["loss_after"] == pytest.approx(b["loss_after"], abs=1e-5)
    assert double["architecture"] == single["architecture"]
    one, two = _weights(tmp_path / "single"), _weights(tmp_path / "double")
    assert one.keys() == two.keys()
    assert max((one[k] - two[k]).abs().max().item() for k in one) <= 1e-5
    for name in ("events.jsonl", "stats.jsonl"):  # rank 0 alone writes: one line per record
        lines = (tmp_path / "double" / name).read_text().splitlines()
        assert len(lines) == len((tmp_path / "single" / name).read_text().splitlines())
    # The ranks share the validation set and add up their sums: the metrics of all of it.
    metrics = [
        [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        for run in ("single", "double")
    ]
    assert [m.keys() for m in metrics[1]] == [m.keys() for m in metrics[0]]
    for a, b in zip(*metrics, strict=True):
        assert a == pytest.approx(b, rel=1e-4)


def _worker_pids(launcher: int) -> dict[int, int]:
    """Rank -> pid of the worker processes a torchrun launcher started."""
    pids = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != launcher:
                continue
            env = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        for var in env:
            if var.startswith(b"RANK="):
                pids[int(var[5:])] = int(stat.parent.name)
    return pids


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_a_killed_rank_stops_the_job_and_resume_finishes_it(tmp_path):
    cfg = incrt_config(model={"dropout": 0.0}, steps=300, decay_steps=300, checkpoint_every=10)
    out = tmp_path / "run"
    launcher = subprocess.Popen(
        _command(cfg, tmp_path, out),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    # Killed once the run has grown and saved, so that there is something to lose.
    written = [out / "checkpoints" / "LATEST", out / "events.jsonl"]
    deadline = time.monotonic() + 120
    while (
        not all(p.exists() for p in written)
        and launcher.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    workers = _worker_pids(launcher.pid)
    assert all(p.exists() for p in written) and set(workers) == {0, 1}
    os.kill(workers[1], signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    assert "rank 0 lost contact with the other ranks" in stderr
    assert "resume with --resume" in stderr
    saved = checkpoint.load(out)  # intact: the manifest's sizes and checksums hold
    stopped_at = saved.trainer_state["step"]
    assert 10 <= stopped_at < 300
    events_before = (out / "events.jsonl").read_text().splitlines()
    _torchrun(cfg, tmp_path, out, "--resume")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 300
    kept = [e for e in events_before if json.loads(e)["step"] <= stopped_at]
    assert (out / "events.jsonl").read_text().splitlines()[: len(kept)] == kept


class _Wrapper(torch.nn.Module):
    """Stands in for DDP: a module that holds the model, forwards to it, and like DDP is
    part of a reference cycle (freed only by the garbage collector)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.module = model
        self.cycle = [self]

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def test_the_ddp_wrapper_is_gone_before_the_process_group(tmp_path, monkeypatch):
    """At the end of a run the trainer drops its DDP wrapper before it leaves the process
    group: a reducer freed afterwards destroys the group with the GIL held, which can
    deadlock against gloo's threads (seen as a rank that never exits)."""
    wrappers: list[weakref.ref] = []
    alive_at_stop: list[int] = []

    def wrap(self, model):
        wrapper = _Wrapper(model)
        wrappers.append(weakref.ref(wrapper))
        return wrapper

    def stop(self):
        alive_at_stop.append(sum(ref() is not None for ref in wrappers))

    monkeypatch.setattr(Ranks, "wrap", wrap)
    monkeypatch.setattr(Ranks, "stop", stop)
    train(TrainConfig.from_dict(sgt_config()), tmp_path / "run", progress=False)
    assert len(wrappers) > 1, "the run must rebuild its wrapper after a structural change"
    assert alive_at_stop == [0]


def test_one_process_needs_no_torchrun(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ranks = Ranks.from_env()
    assert (ranks.rank, ranks.world, ranks.main, ranks.active) == (0, 1, True, False)
    model = build_model(arch("causal_lm", "uniform"))
    assert ranks.wrap(model) is model
    assert ranks.mean(2.5) == 2.5 and ranks.any(True) and not ranks.any(False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ConfigError, match="torchrun environment is incomplete or invalid"):
        Ranks.from_env()


@pytest.mark.parametrize("variable", ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"])
def test_processes_started_without_a_rank_are_refused(variable, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(variable, "1")
    assert not Ranks.from_env().active  # one process of such a launcher is fine
    monkeypatch.setenv(variable, "2")
    with pytest.raises(ConfigError, match=rf"started 2 processes \({variable}\) but not torchrun"):
        Ranks.from_env()


def test_accelerate_launch_grows_like_one_process(tmp_path):
    """``accelerate launch --multi_gpu`` runs torchrun underneath, on CPU too (``--cpu``
    alone starts a single process whatever ``--num_processes`` says)."""
    pytest.importorskip("accelerate")
    cfg = CONFIGS["incrt"]
    single = train(TrainConfig.from_dict(cfg), tmp_path / "single", progress=False)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(cfg))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    launch += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no", "-m", "growformer.cli", "train", "--config", str(path)]
    launch += ["--out", str(tmp_path / "double"), "--no-progress"]
    done = subprocess.run(launch, capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    double = json.loads((tmp_path / "double" / "summary.json").read_text())
    assert (single["ranks"], double["ranks"]) == (1, 2)
    assert _structure(double["events"]) == _structure(single["events"])
    one, two = _weights(tmp_path / "single"), _weights(tmp_path / "double")
    assert max((one[k] - two[k]).abs().max().item() for k in one) <= 1e-5


class _LocalRanks(Ranks):
    """A rank of a job whose sums stay local: what this rank adds to the collective sum."""

    def sum_(self, tensors: list[torch.Tensor]) -> None:
        pass


@pytest.mark.parametrize("kind", ["classifier", "causal_lm"])
def test_ranks_share_the_evaluation(kind):
    """Each of 3 ranks evaluates every third batch; their shares add up to the whole set."""
    task = "retrieval" if kind == "classifier" else "lm"
    options = {"n_train": 64, "n_val": 100, "k": 2, "seq_len": 12} if task == "retrieval" else None
    data = load_task(task, max_len=24, vocab_size=300, options=options)
    torch.manual_seed(0)
    model = build_model(build_arch(TrainConfig(task=task, model=ModelConfig(d_model=32)), data))
    pad = data.tokenizer.pad_id
    whole = evaluate(model, data.val, batch_size=16, pad_id=pad)
    shares = [
        evaluate(model, data.val, batch_size=16, pad_id=pad, ranks=_LocalRanks(r, 3, r))
        for r in range(3)
    ]
    batches = -(-len(data.val) // 16)
    sizes = [min(16, len(data.val) - 16 * b) for b in range(batches)]
    assert [s["n"] for s in shares] == [sum(sizes[r::3]) for r in range(3)]
    if kind == "classifier":
        correct = sum(s["accuracy"] * s["n"] for s in shares)
        assert correct / whole["n"] == pytest.approx(whole["accuracy"], abs=1e-12)
        weights = [s["n"] for s in shares]
    else:
        weights = [s["tokens"] for s in shares]
    loss = sum(s["loss"] * w for s, w in zip(shares, weights, strict=True)) / sum(weights)
    assert loss == pytest.approx(whole["loss"], rel=1e-9)


def test_fingerprint_tells_structures_apart():
    a = build_model(arch("causal_lm", "uniform"))
    b = build_model(arch("causal_lm", "looped"))
    assert fingerprint(a) == fingerprint(build_model(arch("causal_lm", "uniform")))
    assert fingerprint(a) != fingerprint(b)


def test_batch_must_split_over_the_ranks(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ConfigError, match=r"batch_size 16 \(the global batch\) does not split"):
        train(TrainConfig.from_dict(incrt_config()), tmp_path, progress=False)
