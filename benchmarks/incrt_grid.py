"""The user's question: which head count should I train? A grid of static models (heads per
layer in --heads, same depth, width, data and schedule) against INCRT runs that choose by
themselves (one row per INCRT gate in --gates), on SST-2 or SARS-CoV-2 (the settings of
``paper_claims.py``).

Per configuration over the seeds: accuracy (mean and range), attention parameters, train
FLOPs, wall time and, for INCRT, the final heads and the certificate's step. Then the
acceptance checks: INCRT accuracy >= static-12 minus 0.3 points with >= 3x fewer attention
parameters, INCRT's point on or above the static grid's Pareto front (no static model
with at most its attention parameters is more accurate), and INCRT's training FLOPs <=
0.6x static-12's; and the whole grid's compute against one INCRT run. Writes
``incrt_grid_<task>.{md,json,png}`` (accuracy vs attention parameters) to --out.
Finished runs are reused.

    python benchmarks/incrt_grid.py --task sst2 [--layers 2] [--seeds 0 1 2]
    python benchmarks/incrt_grid.py --task sarscov2 [--static-seeds 0]
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
from paper_claims import attention_params, growformer_base

MARGIN = 0.003  # accuracy points INCRT may lose against static-12
FEWER = 3.0  # times fewer attention parameters
FLOPS = 0.6  # at most this fraction of static-12's training FLOPs


def configs(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """Run name -> configuration per seed."""
    args.quick, args.seed = False, 0
    base = growformer_base(args.task, args)
    if args.layers is not None:
        base["model"] = {**base["model"], "n_layers": args.layers}
    out: dict[str, list[dict[str, Any]]] = {}
    for heads in args.heads:
        out[f"static-{heads}"] = [
            {**base, "seed": s, "model": {**base["model"], "heads": heads}}
            for s in args.static_seeds or args.seeds
        ]
    for gate in args.gates:
        # The default gate's runs keep their plain name.
        name = "incrt" if gate == "realigned" else f"incrt-{gate}"
        out[name] = [
            {**base, "seed": s, "policy": "incrt"}
            | ({} if gate == "realigned" else {"policy_options": {"gate": gate}})
            for s in args.seeds
        ]
    return out


def is_incrt(row: dict[str, Any]) -> bool:
    return row["run"].startswith("incrt")


def mean_range(values: list[float], fmt: str) -> str:
    body = fmt.format(statistics.mean(values))
    if len(values) == 1:
        return body
    return f"{body} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def checks(inc: dict[str, Any], static: list[dict[str, Any]]) -> list[str]:
    """The acceptance checks of one INCRT row against the static grid."""
    out = []
    acc = statistics.mean(inc["accuracy"])
    attn = statistics.mean(inc["attention_params"])
    flops = statistics.mean(inc["train_flops"])
    certified = sum(x is not None for x in inc["converged_step"])
    out.append(
        f"{'PASS' if certified == len(inc['seeds']) else 'FAIL'}: certificate reached in "
        f"{certified}/{len(inc['seeds'])} runs"
    )
    ref = next((r for r in static if r["run"] == "static-12"), None)
    if ref is not None:
        ref_acc = statistics.mean(ref["accuracy"])
        ref_attn = statistics.mean(ref["attention_params"])
        ref_flops = statistics.mean(ref["train_flops"])
        out += [
            f"{'PASS' if acc >= ref_acc - MARGIN else 'FAIL'}: accuracy {acc:.1%} vs "
            f"static-12 {ref_acc:.1%} ({100 * (acc - ref_acc):+.1f} points; target >= "
            f"{-100 * MARGIN:.1f})",
            f"{'PASS' if ref_attn / attn >= FEWER else 'FAIL'}: attention parameters "
            f"{ref_attn / attn:.1f}x fewer than static-12 (target >= {FEWER:g}x)",
            f"{'PASS' if flops <= FLOPS * ref_flops else 'FAIL'}: training FLOPs "
            f"{flops / ref_flops:.2f}x static-12's (target <= {FLOPS:g}x)",
        ]
    dominating = [
        r["run"]
        for r in static
        if statistics.mean(r["attention_params"]) <= attn and statistics.mean(r["accuracy"]) > acc
    ]
    out.append(
        f"{'PASS' if not dominating else 'FAIL'}: on or above the static Pareto front"
        + (f" (dominated by {', '.join(dominating)})" if dominating else "")
    )
    grid_flops = sum(statistics.mean(r["train_flops"]) for r in static)
    grid_wall = sum(statistics.mean(r["wall_s"]) for r in static)
    out.append(
        f"info: the grid ({len(static)} static models, mean over their seeds) costs "
        f"{grid_flops / flops:.1f}x the FLOPs and "
        f"{grid_wall / statistics.mean(inc['wall_s']):.1f}x the wall time of one run"
    )
    changes = [c for run_changes in inc["prunes"] for c in run_changes]
    out.append(
        f"{'PASS' if all(c <= 0.01 for c in changes) else 'FAIL'}: {len(changes)} prunes, "
        "loss change on their batch "
        + (f"at most {max(changes):+.2%}" if changes else "-")
        + " (target <= 1%)"
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=["sst2", "sarscov2"], default="sst2")
    p.add_argument("--sst2-dir", default="../shared/data/sst2")
    p.add_argument("--sarscov2-dir", default="../shared/data/sarscov2")
    p.add_argument("--layers", type=int, default=None, help="depth (default: the task's)")
    p.add_argument("--heads", type=int, nargs="+", default=[1, 2, 4, 8, 12])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--static-seeds", type=int, nargs="+", default=None, help="seeds of the grid (--seeds)"
    )
    p.add_argument("--gates", nargs="+", default=["realigned", "demand"], help="INCRT gates")
    p.add_argument("--out", default="runs/incrt_grid")
    p.add_argument("--fresh", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    depth = (
        args.layers
        or growformer_base(
            args.task,
            argparse.Namespace(quick=False, seed=0, sst2_dir="", sarscov2_dir=""),
        )["model"]["n_layers"]
    )
    root = Path(args.out) / f"{args.task}_l{depth}"
    rows: list[dict[str, Any]] = []
    for name, cfgs in configs(args).items():
        summaries = [run(c, root / f"{name}_s{c['seed']}", args.fresh) for c in cfgs]
        rows.append(
            {
                "run": name,
                "seeds": [c["seed"] for c in cfgs],
                "accuracy": [s["metrics"]["val_accuracy"] for s in summaries],
                "attention_params": [attention_params(s["architecture"]) for s in summaries],
                "params": [s["params"] for s in summaries],
                "train_flops": [s["train_flops"] for s in summaries],
                "wall_s": [s["wall_s"] for s in summaries],
                "heads": [[x["heads"] for x in s["architecture"]["layers"]] for s in summaries],
                "converged_step": [s.get("converged_step") for s in summaries],
                "forecast_heads": [s.get("forecast_heads") for s in summaries],
                "prunes": [
                    [e["loss_change"] for e in s["events"] if e["op"] == "fade_head"]
                    for s in summaries
                ],
            }
        )
    lines = [
        f"# {args.task}: static grid vs INCRT, {depth} layer(s); grid seeds "
        f"{args.static_seeds or args.seeds}, INCRT seeds {args.seeds}",
        "",
        "| run | accuracy (mean, range) | attention params | train FLOPs | wall s | heads "
        "per layer | certified at step | forecast |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        incrt = is_incrt(r)
        lines.append(
            f"| {r['run']} | {mean_range(r['accuracy'], '{:.1%}')}"
            f" | {mean_range(r['attention_params'], '{:,.0f}')}"
            f" | {mean_range(r['train_flops'], '{:.3g}')} | {mean_range(r['wall_s'], '{:.0f}')}"
            f" | {', '.join(map(str, r['heads'])) if incrt else r['heads'][0]}"
            f" | {', '.join(str(x) for x in r['converged_step']) if incrt else '-'}"
            f" | {', '.join(str(x) for x in r['forecast_heads']) if incrt else '-'} |"
        )
    static = [r for r in rows if not is_incrt(r)]
    for inc in (r for r in rows if is_incrt(r)):
        lines += ["", f"{inc['run']}:", *checks(inc, static)]

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(
        [statistics.mean(r["attention_params"]) for r in static],
        [statistics.mean(r["accuracy"]) for r in static],
        "o-",
        color="tab:grey",
        label="static grid (mean over seeds)",
    )
    for r in static:
        ax.annotate(
            r["run"].removeprefix("static-"),
            (statistics.mean(r["attention_params"]), statistics.mean(r["accuracy"])),
            textcoords="offset points",
            xytext=(4, -10),
            fontsize=8,
        )
        ax.scatter(r["attention_params"], r["accuracy"], s=8, color="tab:grey", alpha=0.5)
    colors = iter(("tab:red", "tab:blue", "tab:green", "tab:purple"))
    for inc, color in zip((r for r in rows if is_incrt(r)), colors, strict=False):
        ax.scatter(inc["attention_params"], inc["accuracy"], s=30, color=color, label=inc["run"])
        ax.scatter(
            [statistics.mean(inc["attention_params"])],
            [statistics.mean(inc["accuracy"])],
            s=90,
            marker="*",
            color=color,
            label=f"{inc['run']} mean",
        )
    ax.set_xscale("log")
    ax.set_xlabel("attention parameters")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"{args.task}, {depth} layer(s): accuracy vs attention parameters")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    root.mkdir(parents=True, exist_ok=True)
    fig.savefig(root / f"incrt_grid_{args.task}.png", dpi=120)
    save_report(root, f"incrt_grid_{args.task}", lines, args, started, rows=rows)


if __name__ == "__main__":
    main()
