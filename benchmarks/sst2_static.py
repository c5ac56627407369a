"""A static 2-layer model trained from scratch on GLUE SST-2, on CPU.

Target: >= 80% accuracy on the 872-sentence dev set, the whole benchmark (tokenizer
training included) within 15 minutes on 2 CPU cores. Writes the run directory (with
summary.json) and a learning-curve plot.

    python benchmarks/sst2_static.py --data-dir ../shared/data/sst2 [--out runs/sst2_static]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from growformer.training.config import TrainConfig
from growformer.training.loop import train

TARGET_ACCURACY = 0.80
BUDGET_S = 15 * 60


def plot(run: Path, png: Path) -> None:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train_loss" in r]
    val_rows = [r for r in rows if "val_accuracy" in r]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot([r["step"] for r in train_rows], [r["train_loss"] for r in train_rows], label="train")
    a.plot([r["step"] for r in val_rows], [r["val_loss"] for r in val_rows], "o-", label="dev")
    a.set(xlabel="step", ylabel="cross-entropy", title="loss")
    a.legend()
    b.plot([r["step"] for r in val_rows], [100 * r["val_accuracy"] for r in val_rows], "o-")
    b.axhline(100 * TARGET_ACCURACY, color="grey", ls="--", label="target 80%")
    b.set(xlabel="step", ylabel="dev accuracy (%)", title="SST-2 dev (872 sentences)")
    b.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="directory with train.tsv and dev.tsv")
    p.add_argument("--out", default="runs/sst2_static")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    cfg = TrainConfig(
        task="sst2",
        data_dir=args.data_dir,
        steps=args.steps,
        seed=args.seed,
        eval_every=250,
        checkpoint_every=1000,
        device="cpu",
    )
    out = Path(args.out)
    t0 = time.perf_counter()
    summary = train(cfg, out)
    total = time.perf_counter() - t0
    plot(out, out / "learning_curve.png")
    acc = summary["metrics"]["val_accuracy"]
    print(
        json.dumps(
            {
                "dev_accuracy": acc,
                "params": summary["params"],
                "train_wall_s": summary["wall_s"],
                "benchmark_wall_s": round(total, 1),
                "train_flops": summary["train_flops"],
            }
        )
    )
    ok = acc >= TARGET_ACCURACY and total <= BUDGET_S
    print(
        f"{'PASS' if ok else 'FAIL'}: dev accuracy {100 * acc:.1f}% (target >= 80%), "
        f"{total / 60:.1f} min (budget 15 min); plot: {out / 'learning_curve.png'}"
    )


if __name__ == "__main__":
    main()
