"""Is the ``channels`` task's head requirement really k? Static 1-layer models with k-1 and
k heads of dimension 1, on the same data, schedule and seeds.

The task is only a valid yardstick for INCRT's head count if k-1 heads measurably fail
and k heads succeed, for every k (the validity table the INCRT work needs first). Per k
and head count: validation accuracy and the worst channel's vote accuracy over the seeds
(mean and range). Finished runs are reused (delete --out or pass --fresh to rerun).
Writes ``known_heads.{md,json,png}`` to --out.

    python benchmarks/known_heads.py [--ks 1 2 4 8] [--seeds 0 1 2] [--out runs/known_heads]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from common import run, save_report

from growformer import checkpoint
from growformer.data import collate, load_task

SOLVED = 0.99
# Longer schedules for more channels: more heads must each find their own channel.
STEPS = {1: 1500, 2: 1500, 4: 6000, 8: 10000}


def config(k: int, heads: int, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    steps = round(STEPS.get(k, 10000) * args.steps_scale)
    return {
        "task": "channels",
        "seed": seed,
        "task_options": {"k": k},
        "steps": steps,
        "batch_size": 64,
        "lr": 3e-3,
        "warmup_steps": 150,
        "eval_every": steps,
        "checkpoint_every": steps,
        "device": "cpu",
        "model": {
            "d_model": args.d_model,
            "n_layers": 1,
            "heads": heads,
            "head_dim": args.head_dim,
            "ffn_dim": 4 * args.d_model,
            "dropout": 0.0,
        },
    }


@torch.no_grad()
def worst_channel(out: Path, k: int, seed: int) -> float:
    """The lowest per-channel vote accuracy of the run's final model on validation."""
    saved = checkpoint.load(out)
    model = saved.model.eval()
    task = load_task("channels", seed=seed, options={"k": k})
    batch = collate(task.val, list(range(len(task.val))), pad_id=0)
    predicted = model(batch["input_ids"], batch["attention_mask"]).logits.argmax(-1)
    labels = task.val.labels
    return min(
        (((predicted >> c) & 1) == ((labels >> c) & 1)).float().mean().item() for c in range(k)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--d-model", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=1)
    parser.add_argument("--steps-scale", type=float, default=1.0, help="times the schedules")
    parser.add_argument("--out", default="runs/known_heads")
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    root = Path(args.out)
    rows: list[dict[str, Any]] = []
    for k in args.ks:
        for heads in (k - 1, k):
            accs, worst = [], []
            for seed in args.seeds:
                out = root / f"k{k}_h{heads}_s{seed}"
                summary = run(config(k, heads, seed, args), out, args.fresh)
                accs.append(summary["metrics"]["val_accuracy"])
                worst.append(worst_channel(out, k, seed))
            rows.append({"k": k, "heads": heads, "accuracy": accs, "worst_channel": worst})

    lines = [
        f"# channels task: static 1-layer models, head_dim {args.head_dim}, "
        f"d_model {args.d_model}, seeds {args.seeds}, steps {args.steps_scale:g} x "
        f"{ {k: STEPS.get(k, 10000) for k in args.ks} }",
        "",
        "| k | heads | val accuracy (mean, range) | worst channel's vote (mean, range) | "
        f"solved (>= {SOLVED:.0%}) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        acc, worst = r["accuracy"], r["worst_channel"]
        solved = sum(a >= SOLVED for a in acc)
        lines.append(
            f"| {r['k']} | {r['heads']} "
            f"| {statistics.mean(acc):.1%} ({min(acc):.1%}-{max(acc):.1%})"
            f" | {statistics.mean(worst):.1%} ({min(worst):.1%}-{max(worst):.1%})"
            f" | {solved}/{len(acc)} |"
        )
    valid = all(
        max(r["accuracy"]) < SOLVED if r["heads"] == r["k"] - 1 else min(r["accuracy"]) >= SOLVED
        for r in rows
    )
    lines += [
        "",
        f"Valid as a known requirement (every k-1 run below {SOLVED:.0%}, every k run at or "
        f"above): {'yes' if valid else 'NO'}",
    ]

    fig, ax = plt.subplots(figsize=(6, 4))
    for offset, fewer in ((-0.1, True), (0.1, False)):
        picked = [r for r in rows if (r["heads"] == r["k"] - 1) == fewer]
        xs = [str(r["k"]) for r in picked]
        for i, r in enumerate(picked):
            ax.scatter(
                [i + offset] * len(r["accuracy"]),
                r["accuracy"],
                s=18,
                color="tab:red" if fewer else "tab:green",
            )
        ax.plot(
            [i + offset for i in range(len(picked))],
            [statistics.mean(r["accuracy"]) for r in picked],
            color="tab:red" if fewer else "tab:green",
            label="k-1 heads" if fewer else "k heads",
        )
        ax.set_xticks(range(len(xs)), xs)
    ax.axhline(SOLVED, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("k (channels)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"channels task, 1 layer, head_dim {args.head_dim}: k-1 vs k heads")
    ax.legend()
    fig.tight_layout()
    root.mkdir(parents=True, exist_ok=True)
    fig.savefig(root / "known_heads.png", dpi=120)
    save_report(root, "known_heads", lines, args, started, rows=rows, valid=valid)


if __name__ == "__main__":
    main()
