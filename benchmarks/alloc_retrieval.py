"""Heads vs head dimension at a fixed attention budget on D-position retrieval.

One-layer classifiers on the synthetic retrieval task with the ``tuple`` label: the class
is the ordered tuple of the symbols at k hidden positions, so every position must be read
apart (the allocation paper's D-retrieval experiment, D = k). Every model has
the same budget heads x head_dim; the sweep splits it from one wide head to many narrow
ones, for several k, and reports held-out accuracy (table + heat map), to show where
accuracy breaks as heads < D.

    python benchmarks/alloc_retrieval.py [--budget 64] [--ks 1 2 3 4] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from common import run, save_report


def config(args: argparse.Namespace, k: int, heads: int, seed: int) -> dict[str, Any]:
    return {
        "task": "retrieval",
        "seed": seed,
        "task_options": {
            "k": k,
            "seq_len": args.seq_len,
            "symbols": args.symbols,
            "label": "tuple",
            "n_train": 20000,
            "n_val": 2000,
        },
        "steps": args.steps,
        "batch_size": 64,
        "lr": 1e-3,
        "warmup_steps": 100,
        "eval_every": args.steps,
        "checkpoint_every": args.steps,
        "device": "cpu",
        # The default max_len (128) covers shorter sequences (and keeps their runs' saved
        # configurations reusable).
        **({"max_len": args.seq_len + 1} if args.seq_len >= 128 else {}),
        "model": {
            "d_model": args.d_model,
            "n_layers": 1,
            "heads": heads,
            "head_dim": args.budget // heads,
            "ffn_dim": 4 * args.d_model,
            "dropout": 0.0,
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=int, default=64, help="heads x head_dim")
    p.add_argument("--heads", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--symbols", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--out", default="runs/alloc_retrieval")
    args = p.parse_args()
    out = Path(args.out)
    bad = [h for h in args.heads if args.budget % h]
    if bad:
        p.error(f"heads {bad} do not divide the budget {args.budget}")
    t0 = time.perf_counter()
    acc: dict[tuple[int, int], list[float]] = {}
    for k in args.ks:
        for heads in args.heads:
            for seed in args.seeds:
                print(f"[{time.perf_counter() - t0:.0f} s] k={k} heads={heads} seed={seed}")
                s = run(config(args, k, heads, seed), out / f"k{k}_h{heads}_s{seed}", args.fresh)
                acc.setdefault((k, heads), []).append(s["metrics"]["val_accuracy"])
    header = " | ".join(f"{h} x {args.budget // h}" for h in args.heads)
    lines = [
        f"Retrieval 'tuple' label, {args.symbols} symbols, seq_len {args.seq_len}, one layer, "
        f"d_model {args.d_model}, budget heads x head_dim = {args.budget}, {args.steps} steps, "
        f"seeds {args.seeds}. Held-out accuracy (mean over seeds; chance = 1/symbols^k).",
        "",
        f"| k (= D) | chance | {header} |",
        "|---|---|" + "---|" * len(args.heads),
    ]
    for k in args.ks:
        cells = " | ".join(
            f"{100 * statistics.mean(acc[k, h]):.1f}" + ("" if h >= k else " (h<D)")
            for h in args.heads
        )
        lines.append(f"| {k} | {100 / args.symbols**k:.1f} | {cells} |")
    accuracy = {f"k{k}_h{h}": v for (k, h), v in acc.items()}
    save_report(out, "alloc_retrieval", lines, args, t0, accuracy=accuracy)
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    grid = [[100 * statistics.mean(acc[k, h]) for h in args.heads] for k in args.ks]
    im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    for i, k in enumerate(args.ks):
        for j, h in enumerate(args.heads):
            ax.text(
                j,
                i,
                f"{grid[i][j]:.0f}",
                ha="center",
                va="center",
                color="white" if grid[i][j] < 60 else "black",
                fontsize=9,
            )
            if h < k:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=1))
    ax.set_xticks(range(len(args.heads)), [f"{h}x{args.budget // h}" for h in args.heads])
    ax.set_yticks(range(len(args.ks)), [str(k) for k in args.ks])
    ax.set(
        xlabel=f"heads x head_dim (budget {args.budget})",
        ylabel="positions to read, D",
        title="Held-out accuracy, % (red: heads < D)",
    )
    fig.colorbar(im)
    fig.tight_layout()
    fig.savefig(out / "alloc_retrieval.png", dpi=110)
    print(f"wrote {out / 'alloc_retrieval.png'}")


if __name__ == "__main__":
    main()
