"""Data-parallel training, whole (DDP) and sharded (FSDP2), against one process: step
time, what a structural event costs, and memory per rank.

Speed: the same causal LM (the ``lm`` corpus, 4 layers, d_model 128, global batch 32 x
64 tokens) as one process with 2 threads, one with 1 thread, and two ``torchrun``
processes with 1 thread each, under DDP and under FSDP2, every step timed on its own. A
``scheduled`` policy adds a head to a layer at a few steps: under DDP that step also
checks the structure across the ranks and rebuilds the wrapper (a parameter broadcast);
under FSDP2 every rank gathers the model and optimizer state, changes it and shards it
again. Each launch runs ``--repeats`` times, in alternation; the report gives medians.

Memory: a model large enough for its state to dominate (8 layers, d_model 512, ffn 2048,
about 26M parameters, AdamW) for a few steps with one event, under DDP and FSDP2: the
bytes of parameters, gradients and optimizer state each rank holds, and each rank's peak
memory (resident set on CPU, allocated on CUDA) above what it held before training.

Both parts run unchanged on CUDA (``--device cuda``, NCCL), with one GPU per rank.

    python benchmarks/distributed_scaling.py [--steps 120] [--repeats 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import save_report
from torch.distributed.tensor import DTensor

from growformer.training.config import TrainConfig
from growformer.training.loop import Trainer

EVENT_STEPS = (40, 70, 100)
LAUNCHES = {  # name: processes, threads each, distributed
    "1 process x 2 threads": (1, 2, "ddp"),
    "1 process x 1 thread": (1, 1, "ddp"),
    "2 processes x 1 thread, DDP": (2, 1, "ddp"),
    "2 processes x 1 thread, FSDP2": (2, 1, "fsdp"),
}
MEMORY_LAUNCHES = {k: v for k, v in LAUNCHES.items() if k.startswith("2 processes")}
MEMORY_STEPS, MEMORY_EVENT = 6, 3


def config(steps: int, events: tuple[int, ...], device: str, large: bool) -> dict[str, Any]:
    shape = (512, 8, 8, 64, 2048) if large else (128, 4, 4, 32, 512)
    d_model, n_layers, heads, head_dim, ffn_dim = shape
    return {
        "task": "lm",
        "policy": "scheduled",
        "policy_options": {
            "events": [
                {"step": s, "op": "add_head", "layer": i % n_layers, "init": "function_preserving"}
                for i, s in enumerate(events)
                if s < steps
            ]
        },
        "steps": steps,
        "batch_size": 32,
        "max_len": 64,
        "vocab_size": 2000,
        "eval_every": 10**6,
        "checkpoint_every": 10**6,
        "device": device,
        "model": {
            "d_model": d_model,
            "n_layers": n_layers,
            "heads": heads,
            "head_dim": head_dim,
            "ffn_dim": ffn_dim,
            "dropout": 0.0,
        },
    }


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _local_bytes(tensor: torch.Tensor) -> int:
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.numel() * local.element_size()


def worker(args: argparse.Namespace) -> None:
    """One rank: train step by step, timing each; write the times and memory figures."""
    cfg = TrainConfig.from_dict(json.loads(Path(args.worker).read_text()))
    out = Path(args.times)
    trainer = Trainer(cfg, out.parent / f"run-{cfg.distributed}-{cfg.steps}")
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)
    before = _peak_bytes(trainer.device)  # data, tokenizer and model built
    times = []
    for _ in range(cfg.steps):
        t0 = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - t0)
    params = sum(_local_bytes(p) for p in trainer.model.parameters())
    state = sum(
        _local_bytes(v)
        for s in trainer.optimizer.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor)
    )
    result = {
        "times": times,
        "state_bytes": 2 * params + state,  # parameters, their gradients, optimizer state
        "peak_added_bytes": _peak_bytes(trainer.device) - before,
    }
    out.with_suffix(f".{trainer.ranks.rank}.json").write_text(json.dumps(result))
    trainer.ranks.stop()


def launch(name: str, cfg: dict[str, Any], tmp: Path) -> list[dict[str, Any]]:
    """Run ``cfg`` as launch ``name``; each rank's results."""
    procs, threads, distributed = LAUNCHES[name]
    cfg_path, times = tmp / "config.json", tmp / "times"
    cfg_path.write_text(json.dumps({**cfg, "distributed": distributed}))
    for old in tmp.glob("times.*.json"):
        old.unlink()
    me = [str(Path(__file__).resolve()), "--worker", str(cfg_path), "--times", str(times)]
    if procs == 1:
        cmd = [sys.executable, *me]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += [f"--nproc_per_node={procs}", *me]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return [json.loads((tmp / f"times.{r}.json").read_text()) for r in range(procs)]


def speed_rows(runs: dict[str, list[list[dict]]], tokens: int) -> list[dict[str, Any]]:
    # Steady-state steps: after a warm-up, away from the event steps and the one after.
    skip = {s + d for s in EVENT_STEPS for d in (-1, 0, 1)}
    rows = []
    for name, repeats in runs.items():
        series = [ranks[0]["times"] for ranks in repeats]
        step = statistics.median(
            statistics.median(t for i, t in enumerate(times) if i >= 10 and i not in skip)
            for times in series
        )
        # train_step(i) runs step i + 1, whose end applies the event scheduled at i + 1.
        event = statistics.median(
            times[s - 1] for times in series for s in EVENT_STEPS if s <= len(times)
        )
        rows.append(
            {
                "launch": name,
                "step_s": step,
                "tokens_per_s": tokens / step,
                "event_step_s": event,
                "event_cost_steps": event / step - 1,
            }
        )
    return rows


def memory_rows(runs: dict[str, list[dict]]) -> list[dict[str, Any]]:
    rows = []
    for name, ranks in runs.items():
        times = ranks[0]["times"]
        rows.append(
            {
                "launch": name,
                "state_mib": max(r["state_bytes"] for r in ranks) / 2**20,
                "peak_added_mib": max(r["peak_added_bytes"] for r in ranks) / 2**20,
                "step_s": statistics.median(
                    t for i, t in enumerate(times) if i != MEMORY_EVENT - 1
                ),
                "event_step_s": times[MEMORY_EVENT - 1],
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, or cuda (NCCL, one GPU per rank)")
    p.add_argument("--out", default="runs/distributed_scaling")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--times", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cfg = config(args.steps, EVENT_STEPS, args.device, large=False)
    large = config(MEMORY_STEPS, (MEMORY_EVENT,), args.device, large=True)
    runs: dict[str, list[list[dict]]] = {name: [] for name in LAUNCHES}
    memory: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name in LAUNCHES:
                print(f"[{time.perf_counter() - t0:.0f} s] {name}, repeat {r}", flush=True)
                runs[name].append(launch(name, cfg, Path(tmp)))
        for name in MEMORY_LAUNCHES:
            print(f"[{time.perf_counter() - t0:.0f} s] memory: {name}", flush=True)
            memory[name] = launch(name, large, Path(tmp))
    rows = speed_rows(runs, cfg["batch_size"] * cfg["max_len"])
    mem = memory_rows(memory)
    base = rows[0]["tokens_per_s"]
    ddp = {r["launch"]: r for r in rows}["2 processes x 1 thread, DDP"]
    mem_ddp = mem[0]
    lines = [
        f"**Speed.** Causal LM (lm corpus, 4 layers, d_model 128, 4 heads x 32), global batch "
        f"{cfg['batch_size']} x {cfg['max_len']} tokens, {args.steps} steps, {args.repeats} "
        f"repeats in alternation, {args.device} ({os.cpu_count()} cores). Event: add one head "
        f"at steps {list(EVENT_STEPS)} (surgery; DDP: structure check and wrapper rebuilt; "
        "FSDP2: model and optimizer state gathered, changed, sharded again).",
        "",
        "| launch | step s (median) | tokens/s | vs 1 process x 2 threads | vs DDP "
        "| event step s | event cost (steps) |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['launch']} | {r['step_s']:.4f} | {r['tokens_per_s']:,.0f} | "
            f"{r['tokens_per_s'] / base:.2f}x | {r['tokens_per_s'] / ddp['tokens_per_s']:.2f}x | "
            f"{r['event_step_s']:.4f} | {r['event_cost_steps']:+.2f} |"
            for r in rows
        ),
        "",
        f"**Memory.** Causal LM of 8 layers, d_model 512, 8 heads x 64, ffn 2048, AdamW, "
        f"global batch 32 x 64, {MEMORY_STEPS} steps with one event (step {MEMORY_EVENT}); "
        "the largest rank's figures.",
        "",
        "| launch | parameters + gradients + optimizer state per rank (MiB) | vs DDP "
        "| peak memory added per rank (MiB) | vs DDP | step s | event step s |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['launch']} | {r['state_mib']:.1f} | "
            f"{r['state_mib'] / mem_ddp['state_mib']:.2f}x | {r['peak_added_mib']:.1f} | "
            f"{r['peak_added_mib'] / mem_ddp['peak_added_mib']:.2f}x | {r['step_s']:.3f} | "
            f"{r['event_step_s']:.3f} |"
            for r in mem
        ),
    ]
    save_report(out, "distributed_scaling", lines, args, t0, rows=rows, memory=mem, step_times=runs)


if __name__ == "__main__":
    main()
