"""Data-parallel training on CPU: 1 vs 2 processes, and what a structural event costs.

Trains the same causal LM (the ``lm`` corpus, 4 layers, d_model 128, global batch 32 x
64 tokens) as one process with 2 threads, one process with 1 thread, and two ``torchrun``
processes with 1 thread each, every step timed on its own. A ``scheduled`` policy adds a
head to a layer at a few steps: under DDP that step also runs the structure check across
the ranks and rebuilds the DDP wrapper (broadcasting the parameters). Each launch runs
``--repeats`` times, in alternation, and the report gives medians: tokens per second,
speed-up over one process, and the extra time of an event step in units of a step.

    python benchmarks/ddp_scaling.py [--steps 120] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import save_report

from growformer.training.config import TrainConfig
from growformer.training.loop import Trainer

EVENT_STEPS = (40, 70, 100)
LAUNCHES = {
    "1 process x 2 threads": (1, 2),
    "1 process x 1 thread": (1, 1),
    "2 processes x 1 thread": (2, 1),
}


def config(args: argparse.Namespace) -> dict[str, Any]:
    events = [
        {"step": s, "op": "add_head", "layer": i % 4, "init": "function_preserving"}
        for i, s in enumerate(EVENT_STEPS)
        if s < args.steps
    ]
    return {
        "task": "lm",
        "policy": "scheduled",
        "policy_options": {"events": events},
        "steps": args.steps,
        "batch_size": 32,
        "max_len": 64,
        "vocab_size": 2000,
        "eval_every": 10**6,
        "checkpoint_every": 10**6,
        "device": "cpu",
        "model": {
            "d_model": 128,
            "n_layers": 4,
            "heads": 4,
            "head_dim": 32,
            "ffn_dim": 512,
            "dropout": 0.0,
        },
    }


def worker(args: argparse.Namespace) -> None:
    """One rank: train step by step, timing each; rank 0 writes the times."""
    cfg = TrainConfig.from_dict(json.loads(Path(args.worker).read_text()))
    trainer = Trainer(cfg, Path(args.times).parent / "run")
    times = []
    for _ in range(cfg.steps):
        t0 = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - t0)
    if trainer.ranks.main:
        Path(args.times).write_text(json.dumps(times))
    trainer.ranks.stop()


def launch(procs: int, threads: int, cfg_path: Path, times: Path) -> list[float]:
    me = [str(Path(__file__).resolve()), "--worker", str(cfg_path), "--times", str(times)]
    if procs == 1:
        cmd = [sys.executable, *me]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += [f"--nproc_per_node={procs}", *me]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    return json.loads(times.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="runs/ddp_scaling")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--times", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cfg = config(args)
    tokens = cfg["batch_size"] * cfg["max_len"]
    runs: dict[str, list[list[float]]] = {name: [] for name in LAUNCHES}
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "config.json"
        cfg_path.write_text(json.dumps(cfg))
        for r in range(args.repeats):
            for name, (procs, threads) in LAUNCHES.items():
                print(f"[{time.perf_counter() - t0:.0f} s] {name}, repeat {r}", flush=True)
                runs[name].append(launch(procs, threads, cfg_path, Path(tmp) / "times.json"))
    # Steady-state steps: after a warm-up, away from the event steps and the one after.
    skip = {s + d for s in EVENT_STEPS for d in (-1, 0, 1)}
    rows = []
    for name, repeats in runs.items():
        step = statistics.median(
            statistics.median(t for i, t in enumerate(times) if i >= 10 and i not in skip)
            for times in repeats
        )
        # train_step(i) runs step i + 1, whose end applies the event scheduled at i + 1.
        event = statistics.median(
            times[s - 1] for times in repeats for s in EVENT_STEPS if s <= len(times)
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
    base = rows[0]["tokens_per_s"]
    lines = [
        f"Causal LM (lm corpus, 4 layers, d_model 128, 4 heads x 32), global batch "
        f"{cfg['batch_size']} x {cfg['max_len']} tokens, {args.steps} steps, {args.repeats} "
        f"repeats in alternation, CPU (gloo); {os.cpu_count()} cores. Event: add one head "
        f"at steps {list(EVENT_STEPS)} (surgery, structure check, DDP rebuilt).",
        "",
        "| launch | step s (median) | tokens/s | vs 1 process x 2 threads | event step s "
        "| event cost (steps) |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['launch']} | {r['step_s']:.4f} | {r['tokens_per_s']:,.0f} | "
            f"{r['tokens_per_s'] / base:.2f}x | {r['event_step_s']:.4f} | "
            f"{r['event_cost_steps']:+.2f} |"
            for r in rows
        ),
    ]
    save_report(out, "ddp_scaling", lines, args, t0, rows=rows, step_times=runs)


if __name__ == "__main__":
    main()
