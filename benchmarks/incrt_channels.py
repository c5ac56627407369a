"""Does INCRT find the head count a task is known to need? INCRT on the ``channels`` task
(k channels, each needing its own head of dimension 1: ``known_heads.py`` shows k-1 heads
fail and k succeed) from one head, for every k, seed and gate.

Per k and gate: final heads, how many runs end within 12% of k, the forecast taken at
the first decision point and how many forecasts are within 12% of k, the certified
interval on held-out data, the null interval at random initialisation, the step of the
certificate, and validation accuracy next to the static k-head model's (from
``known_heads.json`` in --static, same schedule and seeds). Finished runs are reused.
Writes ``incrt_channels.{md,json,png}`` to --out.

    python benchmarks/incrt_channels.py [--ks 1 2 4 8] [--gates realigned energy_fraction]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import matplotlib
import torch

matplotlib.use("Agg")
import known_heads
import matplotlib.pyplot as plt
from common import run, save_report
from known_heads import STEPS

from growformer.training.config import TrainConfig

WITHIN = 0.12


def config(k: int, gate: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """The static model of known_heads.py with one head, growing under INCRT."""
    cfg = known_heads.config(k, 1, seed, args)
    return {
        **cfg,
        "policy": "incrt",
        "policy_options": {"gate": gate, "max_heads": 2 * max(args.ks)},
    }


def near(value: float | None, k: int) -> bool:
    return value is not None and abs(value - k) <= WITHIN * k


def span(values: list[float], fmt: str = "{:.1f}") -> str:
    if not values:
        return "-"
    body = fmt.format(statistics.mean(values))
    return (
        body
        if min(values) == max(values)
        else f"{body} ({fmt.format(min(values))}-{fmt.format(max(values))})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--gates", nargs="+", default=["realigned", "energy_fraction"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--d-model", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=1)
    parser.add_argument("--steps-scale", type=float, default=1.0, help="times the schedules")
    parser.add_argument("--static", default="benchmarks/results/known_heads.json")
    parser.add_argument("--out", default="runs/incrt_channels")
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    root = Path(args.out)
    static = {}
    if Path(args.static).exists():
        for r in json.loads(Path(args.static).read_text())["rows"]:
            if r["heads"] == r["k"]:
                static[r["k"]] = r["accuracy"]
    rows: list[dict[str, Any]] = []
    for gate in args.gates:
        for k in args.ks:
            runs = []
            for seed in args.seeds:
                cfg = config(k, gate, seed, args)
                TrainConfig.from_dict(cfg)  # a bad option fails here, before any training
                s = run(cfg, root / f"{gate}_k{k}_s{seed}", args.fresh)
                runs.append(
                    {
                        "seed": seed,
                        "heads": s["architecture"]["layers"][0]["heads"],
                        "accuracy": s["metrics"]["val_accuracy"],
                        "converged_step": s["converged_step"],
                        "forecast": (s["forecast_heads"] or [None])[0],
                        "certified": s["certified_interval"][0],
                        "null": s["null_interval"][0],
                        "events": [e["op"] for e in s["events"]],
                    }
                )
            rows.append({"gate": gate, "k": k, "runs": runs, "static": static.get(k)})

    lines = [
        f"# INCRT on the channels task: 1 layer from one head of dimension {args.head_dim}, "
        f"d_model {args.d_model}, seeds {args.seeds}, steps {args.steps_scale:g} x "
        f"{ {k: STEPS.get(k, 10000) for k in args.ks} }",
        "",
        "The task needs k heads of dimension 1 (k-1 fail, k succeed: known_heads.md).",
        "",
        f"| gate | k | final heads | within {WITHIN:.0%} | forecast | forecast within "
        f"{WITHIN:.0%} | certified interval (held-out) | null interval (init) | certified at "
        "step | accuracy | static k heads |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    total = {"runs": 0, "heads": 0, "forecast": 0, "certified": 0}
    for r in rows:
        runs, k = r["runs"], r["k"]
        heads = [x["heads"] for x in runs]
        forecasts = [x["forecast"] for x in runs if x["forecast"] is not None]
        steps = [x["converged_step"] for x in runs if x["converged_step"] is not None]
        total["runs"] += len(runs)
        total["heads"] += sum(near(h, k) for h in heads)
        total["forecast"] += sum(near(f, k) for f in forecasts)
        total["certified"] += len(steps)
        intervals = ", ".join(f"[{a}, {b}]" for a, b in (x["certified"] for x in runs))
        nulls = ", ".join(f"[{a}, {b}]" for a, b in (x["null"] for x in runs))
        lines.append(
            f"| {r['gate']} | {k} | {span(heads)} | {sum(near(h, k) for h in heads)}/{len(runs)}"
            f" | {span(forecasts)} | {sum(near(f, k) for f in forecasts)}/{len(runs)}"
            f" | {intervals} | {nulls} | {span(steps, '{:.0f}')} ({len(steps)}/{len(runs)})"
            f" | {span([x['accuracy'] for x in runs], '{:.1%}')}"
            f" | {span(r['static'], '{:.1%}') if r['static'] else '-'} |"
        )
    lines += [
        "",
        f"Over all runs: certified {total['certified']}/{total['runs']}, final heads within "
        f"{WITHIN:.0%} of k {total['heads']}/{total['runs']}, forecast within {WITHIN:.0%} "
        f"{total['forecast']}/{total['runs']}.",
    ]

    fig, ax = plt.subplots(figsize=(6, 4))
    ks = sorted(args.ks)
    ax.plot(ks, ks, color="grey", ls="--", lw=1, label="true requirement (k)")
    for i, gate in enumerate(args.gates):
        for r in (r for r in rows if r["gate"] == gate):
            xs = [r["k"] * (1 + 0.04 * (i - 0.5))] * len(r["runs"])
            ax.scatter(
                xs,
                [x["heads"] for x in r["runs"]],
                s=20,
                color=f"C{i}",
                label=gate if r["k"] == ks[0] else None,
            )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (heads the task needs)")
    ax.set_ylabel("heads INCRT ended with")
    ax.set_title(f"INCRT on channels (head_dim {args.head_dim}), one point per seed")
    ax.legend(fontsize=8)
    fig.tight_layout()
    root.mkdir(parents=True, exist_ok=True)
    fig.savefig(root / "incrt_channels.png", dpi=120)
    save_report(root, "incrt_channels", lines, args, started, rows=rows, totals=total)


if __name__ == "__main__":
    main()
