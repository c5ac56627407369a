"""INCRT on GLUE SST-2 against static models with 12 heads per layer.

Same depth, width, head size, data order and number of steps for every run; INCRT starts
from one head per layer. Prints dev accuracy, parameters, final and forecast heads per
layer and the homeostasis step, and writes a plot of the head counts over training.

    python benchmarks/incrt_sst2.py --data-dir ../shared/data/sst2 [--steps 2000]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from common import run

STATIC_HEADS = 12


def head_curve(summary: dict, layer: int, initial: int) -> tuple[list[int], list[int]]:
    steps, heads = [0], [initial]
    for e in summary["events"]:
        if e["layer"] == layer and e["op"] in ("add_head", "remove_head"):
            steps.append(e["step"])
            heads.append(e["heads_after"])
    steps.append(summary["steps"])
    heads.append(heads[-1])
    return steps, heads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--out", default="runs/incrt_sst2")
    args = p.parse_args()
    out = Path(args.out)
    base = {
        "task": "sst2",
        "data_dir": args.data_dir,
        "steps": args.steps,
        "seed": args.seed,
        "eval_every": 500,
        "checkpoint_every": args.steps,
        "device": "cpu",
        "model": {"d_model": 128, "n_layers": args.layers, "head_dim": 32, "ffn_dim": 512},
    }
    runs = {
        "incrt": {**base, "policy": "incrt"},
        "static12": {**base, "model": {**base["model"], "heads": STATIC_HEADS}},
        "static12_ref": {
            **base,
            "model": {**base["model"], "heads": STATIC_HEADS, "attn_init": "reference"},
        },
    }
    results = {name: run(cfg, out / name) for name, cfg in runs.items()}

    print(
        "\n| run | dev acc | params | heads per layer | forecast | K* | converged_step | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, s in results.items():
        heads = [layer["heads"] for layer in s["architecture"]["layers"]]
        kstar = [round(x, 1) for x in s.get("kstar_heads", [])] or "-"
        print(
            f"| {name} | {100 * s['metrics']['val_accuracy']:.1f} | {s['params']:,} | {heads} | "
            f"{s.get('forecast_heads', '-')} | {kstar} | {s.get('converged_step', '-')} | "
            f"{s['wall_s']:.0f} |"
        )
    inc, ref = results["incrt"], results["static12"]
    better = inc["metrics"]["val_accuracy"] >= ref["metrics"]["val_accuracy"]
    fewer = inc["params"] < ref["params"]
    print(
        f"{'PASS' if better and fewer else 'FAIL'}: INCRT dev accuracy "
        f"{100 * inc['metrics']['val_accuracy']:.1f}% vs static-12 "
        f"{100 * ref['metrics']['val_accuracy']:.1f}%, "
        f"params {inc['params']:,} vs {ref['params']:,}"
    )
    conv = inc.get("converged_step")
    print(f"{'PASS' if conv is not None else 'FAIL'}: homeostasis certificate at step {conv}")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for layer in range(args.layers):
        ax.step(*head_curve(inc, layer, 1), where="post", label=f"INCRT layer {layer}")
    ax.axhline(STATIC_HEADS, color="grey", ls="--", label="static (12)")
    ax.set(xlabel="step", ylabel="heads", title="SST-2: heads per layer during training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "heads.png", dpi=110)
    (out / "results.json").write_text(
        json.dumps(
            {
                n: {
                    k: s.get(k)
                    for k in (
                        "metrics",
                        "params",
                        "architecture",
                        "forecast_heads",
                        "certified_interval",
                        "kstar_heads",
                        "converged_step",
                        "wall_s",
                    )
                }
                for n, s in results.items()
            },
            indent=2,
        )
    )
    print(f"plot: {out / 'heads.png'}")


if __name__ == "__main__":
    main()
