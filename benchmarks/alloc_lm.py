"""Allocation strategies on a 6-layer causal LM at equal attention budget.

Every strategy of ``growformer.allocation.plan`` at the budget of the uniform model (8
heads of 16 in each of 6 layers: D = 768), trained from scratch with the same steps, data
order and seeds as ``sgt_lm.py``'s vanilla model (which is the uniform run here, reused
from its directory). ``measured`` reads the saturation curves of a pilot model twice as
wide (8 heads of 32) trained the same way. Reports held-out loss per seed, training FLOPs
per step, and measured inference latency and training-step time relative to uniform (all
models timed in alternation in this process), with a table and a PNG.

    python benchmarks/alloc_lm.py [--seeds 0 1] [--sgt-out runs/sgt_lm]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import sgt_lm
from common import run, save_report, time_steps

from growformer import checkpoint
from growformer.allocation import STRATEGIES, budget_of, latency, plan, saturation_curves
from growformer.arch import Architecture
from growformer.data import collate, eval_batches
from growformer.flops import train_step_flops
from growformer.model import build_model
from growformer.training.config import TrainConfig
from growformer.training.setup import task_data

HEADS, HEAD_DIM, LAYERS = 8, 16, 6


def lm_args(args: argparse.Namespace) -> argparse.Namespace:
    """The settings of sgt_lm.py's runs."""
    return argparse.Namespace(
        data_dir=args.data_dir,
        steps=args.steps,
        batch=16,
        seq=64,
        vocab=2000,
        window=250,
        dropout=args.dropout,
    )


def planned_config(base: dict[str, Any], arch: Architecture) -> dict[str, Any]:
    model = {k: v for k, v in base["model"].items() if k not in ("heads", "head_dim")}
    return {**base, "model": {**model, "layers": arch.to_dict()["layers"]}}


def measured_curves(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Saturation curves of a pilot twice as wide, on training batches."""
    path = out / "pilot_curves.json"
    if path.exists():
        return json.loads(path.read_text())
    base = sgt_lm.config(lm_args(args), "vanilla", args.pilot_seed)
    pilot = {**base, "model": {**base["model"], "head_dim": 2 * HEAD_DIM}}
    run(pilot, out / "pilot")
    ckpt = checkpoint.load(out / "pilot")
    data = task_data(TrainConfig.from_dict(ckpt.config), ckpt)
    batches = list(itertools.islice(eval_batches(data.train, 16, data.tokenizer.pad_id), 16))
    curves = saturation_curves(ckpt.model, batches, per_head=False)
    path.write_text(json.dumps(curves, indent=2))
    return curves


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="LM corpus (default: Python's stdlib)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--skew", type=float, default=0.5)
    p.add_argument("--dropout", type=float, default=0.0, help="as sgt_lm.py's --dropout")
    p.add_argument("--pilot-seed", type=int, default=0, help="seed of the measured pilot")
    p.add_argument("--rounds", type=int, default=15, help="timing rounds per model")
    p.add_argument("--sgt-out", default="runs/sgt_lm", help="where sgt_lm.py's vanilla runs are")
    p.add_argument("--train-only", action="store_true", help="train, skip timing and report")
    p.add_argument("--out", default="runs/alloc_lm")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    template = Architecture.uniform(
        kind="causal_lm",
        d_model=128,
        vocab_size=2000,
        max_len=64,
        n_layers=LAYERS,
        heads=HEADS,
        head_dim=HEAD_DIM,
        ffn_dim=512,
    )
    budget = budget_of(template)
    archs: dict[str, Architecture] = {}
    for strategy in STRATEGIES:
        curves = measured_curves(args, out) if strategy == "measured" else None
        archs[strategy] = plan(
            strategy, budget=budget, base=template, multiple=4, skew=args.skew, curves=curves
        )
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for seed in args.seeds:
        base = sgt_lm.config(lm_args(args), "vanilla", seed)
        for strategy, arch in archs.items():
            print(f"[{time.perf_counter() - t0:.0f} s] {strategy} seed {seed}", flush=True)
            if strategy == "uniform":
                summary = run(base, Path(args.sgt_out) / f"vanilla_s{seed}")
            else:
                summary = run(planned_config(base, arch), out / f"{strategy}_s{seed}")
            results.setdefault(strategy, {})[seed] = summary
    if args.train_only:
        return
    data = task_data(TrainConfig.from_dict(sgt_lm.config(lm_args(args), "vanilla", 0)))
    torch.manual_seed(0)
    batch = collate(data.train, torch.randperm(len(data.train))[:16], data.tokenizer.pad_id)
    models = {s: build_model(replace(a, vocab_size=data.vocab_size)) for s, a in archs.items()}
    infer = latency(models, batch, args.rounds * 4)
    step = time_steps({s: (m, False) for s, m in models.items()}, batch, args.rounds, 3)
    shape = tuple(batch["input_ids"].shape)
    uniform_flops = train_step_flops(models["uniform"].arch, *shape)
    rows = []
    for strategy, by_seed in results.items():
        loss = {seed: s["metrics"]["val_loss"] for seed, s in by_seed.items()}
        rows.append(
            {
                "strategy": strategy,
                "layers": [(x.heads, x.head_dim) for x in archs[strategy].layers],
                "budget": budget_of(archs[strategy]),
                "val_loss": loss,
                "mean_val_loss": statistics.mean(loss.values()),
                "params": by_seed[args.seeds[0]]["params"],
                "train_flops_ratio": train_step_flops(models[strategy].arch, *shape)
                / uniform_flops,
                "latency_ratio": infer[strategy] / infer["uniform"],
                "train_step_ratio": step.ratio(strategy, "uniform"),
            }
        )
    uniform = rows[0]["mean_val_loss"]
    seeds = " | ".join(f"val loss s{s}" for s in args.seeds)
    lines = [
        f"6-layer causal LM (d_model 128, ffn 512, seq 64, batch 16, {args.steps} steps, "
        f"stdlib corpus), attention budget D = {budget} for every strategy, seeds {args.seeds}. "
        f"Ratios are to uniform, timed in alternation ({args.rounds * 4} inference rounds, "
        f"{args.rounds} x 3 training steps), CPU {torch.get_num_threads()} threads.",
        "",
        f"| strategy | heads x head_dim per layer | {seeds} | mean | vs uniform | params "
        "| train FLOPs | inference latency | train step time |",
        "|---|---|" + "---|" * (len(args.seeds) + 6),
    ]
    for r in rows:
        shape_text = " ".join(f"{h}x{d}" for h, d in r["layers"])
        losses = " | ".join(f"{r['val_loss'][s]:.4f}" for s in args.seeds)
        lines.append(
            f"| {r['strategy']} | {shape_text} | {losses} | {r['mean_val_loss']:.4f} | "
            f"{r['mean_val_loss'] - uniform:+.4f} | {r['params']:,} | "
            f"{r['train_flops_ratio']:.3f}x | {r['latency_ratio']:.3f}x | "
            f"{r['train_step_ratio']:.3f}x |"
        )
    save_report(out, "alloc_lm", lines, args, t0, rows=rows)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = [r["strategy"] for r in rows]
    for i, r in enumerate(rows):
        ax1.scatter([i] * len(r["val_loss"]), list(r["val_loss"].values()), color="C0")
        ax1.scatter(i, r["mean_val_loss"], marker="_", s=400, color="black")
        ax2.bar(
            i - 0.2,
            r["latency_ratio"],
            0.4,
            color="C1",
            label="inference latency" if i == 0 else None,
        )
        ax2.bar(
            i + 0.2,
            r["train_flops_ratio"],
            0.4,
            color="C2",
            label="train FLOPs" if i == 0 else None,
        )
    for ax in (ax1, ax2):
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax1.set(ylabel="held-out loss (dots: seeds, bar: mean)", title=f"Equal budget D = {budget}")
    ax2.axhline(1, color="grey", lw=0.8)
    ax2.set(ylabel="ratio to uniform", title="Cost")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "alloc_lm.png", dpi=110)
    print(f"wrote {out / 'alloc_lm.png'}")


if __name__ == "__main__":
    main()
