"""Data-parallel training, whole (DDP) and sharded (FSDP2), against one process: step
time, what a structural event costs, and memory per rank.

Speed: the same causal LM (the ``lm`` corpus, 4 layers, d_model 128, global batch 32 x
64 tokens) as one process with 2 threads, one with 1 thread, and two ``torchrun``
processes with 1 thread each, under DDP and under FSDP2, every step timed on its own. A
``scheduled`` policy adds a head to a layer at a few steps: under DDP that step also
checks the structure across the ranks and rebuilds the wrapper (a parameter broadcast);
under FSDP2 every rank gathers the layer's block and its optimizer state, changes it and
shards it again (a fifth launch gathers the whole model instead, to compare). Each launch
runs ``--repeats`` times, in alternation; the report gives medians.

Memory: a model large enough for its state to dominate (8 layers, d_model 512, ffn 2048,
about 26M parameters, AdamW) for a few steps with one event, under DDP and FSDP2: the
bytes of parameters, gradients and optimizer state each rank holds, and each rank's
memory above what the process held before the run was built: on CUDA what the allocator
holds; on CPU the resident set, with glibc told to map every block over 64 KiB on its own
and unmap it when freed, so that the resident set follows the live tensors (the trainer
otherwise keeps freed memory for speed, and the resident set then tells more about the
allocator's history than about the run).

Both parts run unchanged on CUDA (``--device cuda``, NCCL), with one GPU per rank.

    python benchmarks/distributed_scaling.py [--steps 120] [--repeats 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import os
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

import growformer.training.loop
from growformer.training.config import TrainConfig
from growformer.training.loop import Trainer


@dataclasses.dataclass(frozen=True)
class Launch:
    processes: int
    threads: int
    distributed: str = "ddp"
    whole_model: bool = False  # FSDP2: gather the whole model for a change


EVENT_STEPS = (40, 70, 100)
DDP = "2 processes x 1 thread, DDP"
LAUNCHES = {
    "1 process x 2 threads": Launch(1, 2),
    "1 process x 1 thread": Launch(1, 1),
    DDP: Launch(2, 1),
    "2 processes x 1 thread, FSDP2": Launch(2, 1, "fsdp"),
    "2 processes x 1 thread, FSDP2, whole model gathered": Launch(2, 1, "fsdp", True),
}
MEMORY_LAUNCHES = [name for name, launch in LAUNCHES.items() if launch.processes == 2]
MEMORY_STEPS, MEMORY_EVENT = 6, 3
_M_MMAP_THRESHOLD = -3


def config(steps: int, events: tuple[int, ...], device: str, large: bool) -> dict[str, Any]:
    d_model, n_layers, heads, head_dim, ffn_dim = (
        (512, 8, 8, 64, 2048) if large else (128, 4, 4, 32, 512)
    )
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


def _map_every_block() -> bool:
    """Instead of the trainer's ``keep_freed_memory``: every block over 64 KiB mapped on
    its own and unmapped when freed, so that the resident set follows the live tensors."""
    return bool(ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 64 * 1024))


def _memory(device: torch.device) -> tuple[int, int]:
    """(now, peak so far) bytes: allocated on CUDA, resident on CPU (Linux)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device), torch.cuda.max_memory_allocated(device)
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def _local_bytes(tensor: torch.Tensor) -> int:
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.numel() * local.element_size()


def worker(args: argparse.Namespace) -> None:
    """One rank: train step by step, timing each; write the times and memory figures."""
    cfg = TrainConfig.from_dict(json.loads(Path(args.worker).read_text()))
    out = Path(args.times)
    if args.memory:
        growformer.training.loop.keep_freed_memory = _map_every_block
    before = _memory(torch.device("cpu"))[0] if "cuda" not in cfg.device else 0
    trainer = Trainer(cfg, out.parent / f"run-{os.getpid()}")
    if args.whole_model:
        trainer.sharding = dataclasses.replace(trainer.sharding, whole_model=True)
    times, peaks = [], []
    for _ in range(cfg.steps):
        t0 = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - t0)
        peaks.append(_memory(trainer.device)[1] - before)
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
        "peak_bytes": peaks,  # after each step, the peak so far
        "end_bytes": _memory(trainer.device)[0] - before,
    }
    out.with_suffix(f".{trainer.ranks.rank}.json").write_text(json.dumps(result))
    trainer.ranks.stop()


def launch(name: str, cfg: dict[str, Any], tmp: Path, memory: bool) -> list[dict[str, Any]]:
    """Run ``cfg`` as launch ``name``; each rank's results."""
    spec = LAUNCHES[name]
    cfg_path, times = tmp / "config.json", tmp / "times"
    cfg_path.write_text(json.dumps({**cfg, "distributed": spec.distributed}))
    for old in tmp.glob("times.*.json"):
        old.unlink()
    me = [str(Path(__file__).resolve()), "--worker", str(cfg_path), "--times", str(times)]
    me += ["--memory"] * memory + ["--whole-model"] * spec.whole_model
    if spec.processes == 1:
        cmd = [sys.executable, *me]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += [f"--nproc_per_node={spec.processes}", *me]
    env = {**os.environ, "OMP_NUM_THREADS": str(spec.threads)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return [json.loads((tmp / f"times.{r}.json").read_text()) for r in range(spec.processes)]


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
        # Step MEMORY_EVENT ends with the event: the peaks before it and through it.
        rows.append(
            {
                "launch": name,
                "state_mib": max(r["state_bytes"] for r in ranks) / 2**20,
                "before_event_mib": max(r["peak_bytes"][MEMORY_EVENT - 2] for r in ranks) / 2**20,
                "peak_mib": max(r["peak_bytes"][-1] for r in ranks) / 2**20,
                "end_mib": max(r["end_bytes"] for r in ranks) / 2**20,
            }
        )
    return rows


def report(args: argparse.Namespace, cfg: dict, rows: list[dict], mem: list[dict]) -> list[str]:
    base, ddp = rows[0], next(r for r in rows if r["launch"] == DDP)
    mem_ddp = next(r for r in mem if r["launch"] == DDP)
    measured = "allocated" if args.device.startswith("cuda") else "resident"

    def vs(r: dict, key: str) -> str:
        return f"{r[key]:.1f} | {r[key] / mem_ddp[key]:.2f}x"

    return [
        f"**Speed.** Causal LM (lm corpus, 4 layers, d_model 128, 4 heads x 32), global batch "
        f"{cfg['batch_size']} x {cfg['max_len']} tokens, {args.steps} steps, {args.repeats} "
        f"repeats in alternation, {args.device} ({os.cpu_count()} cores). Event: add one head "
        f"at steps {list(EVENT_STEPS)} (surgery; DDP: structure check and wrapper rebuilt; "
        "FSDP2: the layer's block and optimizer state gathered, changed and sharded again, or "
        "the whole model's).",
        "",
        "| launch | step s (median) | tokens/s | vs 1 process x 2 threads | vs DDP "
        "| event step s | event cost (steps) |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['launch']} | {r['step_s']:.4f} | {r['tokens_per_s']:,.0f} | "
            f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x | "
            f"{r['tokens_per_s'] / ddp['tokens_per_s']:.2f}x | "
            f"{r['event_step_s']:.4f} | {r['event_cost_steps']:+.2f} |"
            for r in rows
        ),
        "",
        f"**Memory.** Causal LM of 8 layers, d_model 512, 8 heads x 64, ffn 2048, AdamW, "
        f"global batch 32 x 64, {MEMORY_STEPS} steps, one event at the end of step "
        f"{MEMORY_EVENT}: memory ({measured}) added to what the process held before the run "
        "was built, the largest rank's.",
        "",
        "| launch | parameters + gradients + optimizer state per rank (MiB) | vs DDP "
        "| peak before the event (MiB) | vs DDP | peak through the event (MiB) | vs DDP "
        "| held after the last step (MiB) | vs DDP |",
        "|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['launch']} | {vs(r, 'state_mib')} | {vs(r, 'before_event_mib')} | "
            f"{vs(r, 'peak_mib')} | {vs(r, 'end_mib')} |"
            for r in mem
        ),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, or cuda (NCCL, one GPU per rank)")
    p.add_argument("--out", default="runs/distributed_scaling")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--times", help=argparse.SUPPRESS)
    p.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--whole-model", action="store_true", help=argparse.SUPPRESS)
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
                runs[name].append(launch(name, cfg, Path(tmp), memory=False))
        for name in MEMORY_LAUNCHES:
            print(f"[{time.perf_counter() - t0:.0f} s] memory: {name}", flush=True)
            memory[name] = launch(name, large, Path(tmp), memory=True)
    rows = speed_rows(runs, cfg["batch_size"] * cfg["max_len"])
    mem = memory_rows(memory)
    lines = report(args, cfg, rows, mem)
    save_report(out, "distributed_scaling", lines, args, t0, rows=rows, memory=mem, step_times=runs)


if __name__ == "__main__":
    main()
