"""SGT on an encoder classifier (GLUE SST-2), alone and composed with INCRT in one run.

Four-layer encoder, same steps, data order and seed for every run: a hand-sized static
model (4 heads of 32 per layer), the same with SGT, INCRT (from one head per layer), and
INCRT+SGT (both policies in one run: INCRT grows heads, SGT loops the high-entropy heads
of the [CLS] row, deep layers first). Reports dev accuracy, the heads and loops found,
the analytic training-FLOPs overhead of the loops over the same model without loops
(integrated over the run), and the measured training-step time of the final structure
over the same structure without loops (alternating timing in this process).

    python benchmarks/sgt_sst2.py --data-dir ../shared/data/sst2 [--seed 0] [--steps 2000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from common import run, save_report, time_steps

from growformer.arch import Architecture
from growformer.data import collate, load_task
from growformer.flops import train_step_flops, without_loops
from growformer.model import build_model

RUNS = {
    "static4": ("static", {}),
    "static4+sgt": ("sgt", {}),
    "incrt": ("incrt", {}),
    "incrt+sgt": ("incrt+sgt", {}),
}


def config(args: argparse.Namespace, policy: str) -> dict[str, Any]:
    return {
        "task": "sst2",
        "data_dir": args.data_dir,
        "policy": policy,
        "seed": args.seed,
        "steps": args.steps,
        "eval_every": args.steps // 4,
        "checkpoint_every": args.steps,
        "device": "cpu",
        "model": {"d_model": 128, "n_layers": 4, "heads": 4, "head_dim": 32, "ffn_dim": 512},
    }


def final_overhead(
    summary: dict[str, Any], batch: dict[str, torch.Tensor], args: argparse.Namespace
) -> tuple[float, float]:
    """(FLOPs, measured wall) overhead in % of the final structure over itself without loops."""
    arch = Architecture.from_dict(summary["architecture"])
    plain = without_loops(arch)
    if arch == plain:
        return 0.0, 0.0
    torch.manual_seed(0)
    models = {"looped": (build_model(arch), False), "plain": (build_model(plain), False)}
    t = time_steps(models, batch, args.rounds, args.timed_steps)
    shape = tuple(batch["input_ids"].shape)
    flops = train_step_flops(arch, *shape) / train_step_flops(plain, *shape)
    return 100 * (flops - 1), 100 * (t.ratio("looped", "plain") - 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=15, help="timing rounds per structure")
    p.add_argument("--timed-steps", type=int, default=5, help="steps per timing round")
    p.add_argument("--train-only", action="store_true", help="train, skip timing and report")
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--out", default="runs/sgt_sst2")
    args = p.parse_args()
    out = Path(args.out)
    t0 = time.perf_counter()
    results = {}
    for name, (policy, _) in RUNS.items():
        print(f"[{time.perf_counter() - t0:.0f} s] {name}", flush=True)
        results[name] = run(config(args, policy), out / f"{name}_s{args.seed}", args.fresh)
    if args.train_only:
        return
    data = load_task("sst2", data_dir=args.data_dir)
    torch.manual_seed(0)
    pick = torch.randperm(len(data.train))[:64]
    batch = collate(data.train, pick, data.tokenizer.pad_id)
    lines = [
        f"SST-2, 4 layers, d_model 128, head_dim 32, {args.steps} steps, seed {args.seed}; "
        f"CPU ({torch.get_num_threads()} threads), torch {torch.__version__}. FLOPs overhead: "
        "integrated over the run, vs the same model without loops; final structure: one "
        "training step of the final model vs the same model without loops (alternating "
        f"timing, {args.rounds} rounds x {args.timed_steps} steps of batch 64, medians).",
        "",
        "| run | dev acc | heads per layer | loops (layer: heads) | params | FLOPs overhead "
        "(run) | final structure: FLOPs | measured wall | train wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = {}
    for name, s in results.items():
        final_flops, final_wall = final_overhead(s, batch, args)
        heads = [layer["heads"] for layer in s["architecture"]["layers"]]
        loops = (
            "; ".join(
                f"L{i}: {layer['looped_heads']}"
                for i, layer in enumerate(s["loop_structure"])
                if layer["loops"]
            )
            or "-"
        )
        rows[name] = {
            "val_accuracy": s["metrics"]["val_accuracy"],
            "heads": heads,
            "loop_structure": s["loop_structure"],
            "params": s["params"],
            "flops_overhead_pct": s["flops_overhead_pct"],
            "final_flops_overhead_pct": final_flops,
            "final_wall_overhead_pct": final_wall,
            "wall_s": s["wall_s"],
        }
        lines.append(
            f"| {name} | {100 * s['metrics']['val_accuracy']:.1f} | {heads} | {loops} | "
            f"{s['params']:,} | {s['flops_overhead_pct']:.2f}% | {final_flops:.2f}% | "
            f"{final_wall:.2f}% | {s['wall_s']:.0f} |"
        )
    save_report(out, "sgt_sst2", lines, args, t0, runs=rows)


if __name__ == "__main__":
    main()
