"""SGT on a causal LM: vanilla vs block loop vs SGT and its ablations, same steps and seeds.

Six-layer causal LM (d_model 128 unless ``--d-model``, 8 heads) on the ``lm`` corpus
(the Python standard library's source unless ``--data-dir``), trained from scratch with
the same data order per seed. Variants: vanilla; block loop (the deepest 3 layers run
twice from step 0); SGT (reference schedule: top 3 layers, 2 kept heads, loop depth 1,
deep to shallow, windows of 250 steps); SGT with loop depth up to 3; one high-entropy
and one low-entropy head loop (SGT's schedule with one layer); shallow-to-deep SGT.
Reports held-out perplexity per seed, the analytic training-FLOPs overhead over the same
model without loops, and the measured wall-clock overhead of SGT's structures over
vanilla (training steps timed in alternation in this process, integrated over the
schedule), with a table and a PNG. Every variant trains without dropout (``--dropout``),
as the reference's OLMo config does; the report also times SGT's final structure with
dropout 0.1, whose mask sampling in every loop pass costs CPU time that no FLOP count
shows.

    python benchmarks/sgt_lm.py [--seeds 0 1] [--steps 2000] [--out runs/sgt_lm]
    python benchmarks/sgt_lm.py --variants vanilla sgt --seeds 0 --d-model 256 \
        --out runs/sgt_lm_d256   # the same at twice the width
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from common import run, save_report, time_steps

from growformer import surgery
from growformer.arch import Architecture
from growformer.data import collate, load_task
from growformer.events import Event
from growformer.flops import train_step_flops, without_loops
from growformer.model import ElasticModel, build_model
from growformer.policies import make_policy

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "vanilla": ("static", {}),
    "block_loop": ("block_loop", {}),
    "sgt": ("sgt", {}),
    "sgt_k3": ("sgt", {"max_loops": 3}),
    "high_entropy_1layer": ("sgt", {"top_layers": 1}),
    "low_entropy_1layer": ("low_entropy_loop", {"top_layers": 1}),
    "sgt_shallow_to_deep": ("sgt", {"order": "shallow_to_deep"}),
}


def config(args: argparse.Namespace, variant: str, seed: int) -> dict[str, Any]:
    policy, options = VARIANTS[variant]
    if policy != "static" and policy != "block_loop":
        options = {**options, "warmup": args.window, "window": args.window}
    return {
        "task": "lm",
        "data_dir": args.data_dir,
        "policy": policy,
        "policy_options": options,
        "seed": seed,
        "steps": args.steps,
        "batch_size": args.batch,
        "max_len": args.seq,
        "vocab_size": args.vocab,
        "eval_every": args.steps // 4,
        "checkpoint_every": args.steps,
        "device": "cpu",
        "model": {
            "d_model": args.d_model,
            "n_layers": 6,
            "heads": 8,
            "head_dim": args.d_model // 8,
            "ffn_dim": 4 * args.d_model,
            "dropout": args.dropout,
        },
    }


def val_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    steps, ppl = [], []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "val_ppl" in row:
            steps.append(row["step"])
            ppl.append(row["val_ppl"])
    return steps, ppl


def phases(summary: dict[str, Any], initial: Architecture) -> list[tuple[int, int, ElasticModel]]:
    """(first step, steps, model) for each structure a run went through, replayed from its
    events on a fresh model (the weights are irrelevant to the timing)."""
    model = build_model(initial)
    events = sorted(summary["events"], key=lambda e: e["step"])
    boundaries = sorted({0, *(e["step"] for e in events)})
    out = []
    for i, start in enumerate(boundaries):
        for e in events:
            if e["step"] == start:
                fields = {k: e[k] for k in Event.__dataclass_fields__ if k in e}
                surgery.apply(model, None, Event(**fields))
        surgery.advance(model, start)
        end = boundaries[i + 1] if i + 1 < len(boundaries) else summary["steps"]
        if end > start:
            out.append((start, end - start, copy.deepcopy(model)))
    return out


def freeze_step(run_dir: Path) -> int | None:
    log = run_dir / "stats.jsonl"
    for line in log.read_text().splitlines() if log.exists() else []:
        row = json.loads(line)
        if row.get("action") == "freeze":
            return row["step"]
    return None


def stat_steps(summary: dict[str, Any], cfg: dict[str, Any], run_dir: Path) -> set[int]:
    """Step indices whose forward pass records entropies, as the run's policy asks."""
    if cfg["policy"] in ("static", "block_loop"):
        return set()
    policy = make_policy(cfg["policy"], cfg["policy_options"])
    frozen = freeze_step(run_dir)
    # wants_stats(n) is asked for the forward pass of step index n - 1.
    return {
        n - 1
        for n in range(1, summary["steps"] + 1)
        if (frozen is None or n <= frozen) and policy.wants_stats(n)
    }


def wall_overhead(
    summary: dict[str, Any], cfg: dict[str, Any], run_dir: Path, args: argparse.Namespace, batch
) -> dict[str, Any]:
    """Measured vs analytic overhead of a run's structures over vanilla, integrated over its
    schedule (each structure timed with and without the entropy statistics, weighted by the
    steps that take them); plus its final structure with every head computed and the
    others multiplied by zero (what the reference code runs)."""
    torch.manual_seed(0)
    final_arch = Architecture.from_dict(summary["architecture"])
    vanilla = without_loops(final_arch)
    # Head loops come from events; block loops are there from step 0.
    initial = replace(
        final_arch,
        layers=tuple(
            replace(layer, loops=0, looped_heads=(), fade=None) for layer in final_arch.layers
        ),
    )
    phase_list = phases(summary, initial)
    with_stats = stat_steps(summary, cfg, run_dir)
    # A second vanilla model: the A/A control, the noise floor of the ratios.
    models: dict[str, tuple[ElasticModel, bool]] = {
        "vanilla": (build_model(vanilla), False),
        "vanilla_copy": (build_model(vanilla), False),
    }
    for start, n, model in phase_list:
        models[f"phase@{start}"] = (model, False)
        if with_stats & set(range(start, start + n)):
            models[f"phase@{start}+stats"] = (model, True)
    final = phase_list[-1][2]
    masked = copy.deepcopy(final)
    for i, block in enumerate(masked.transformer.layers):
        if block.loops and len(block.looped_heads) < block.attn.heads:
            surgery.set_loops(
                masked, i, block.loops, block.looped_heads, fade=surgery.LoopFade(start=0, steps=1)
            )
            block.loop_fade_level.fill_(0.0)
    models["final_masked"] = (masked, False)
    t = time_steps(models, batch, args.rounds, args.timed_steps)
    shape = tuple(batch["input_ids"].shape)
    base_flops = train_step_flops(vanilla, *shape)
    rows, wall, flops, total = [], 0.0, 0.0, 0
    for start, n, model in phase_list:
        name = f"phase@{start}"
        stats_n = len(with_stats & set(range(start, start + n)))
        ratio = t.ratio(name, "vanilla")
        stats_ratio = t.ratio(name + "+stats", "vanilla") if stats_n else None
        f = train_step_flops(model.arch, *shape)
        rows.append(
            {
                "phase_start": start,
                "steps": n,
                "steps_with_statistics": stats_n,
                "loops": [b.loops for b in model.transformer.layers],
                "fading": [b.fade is not None for b in model.transformer.layers],
                "flops_ratio": f / base_flops,
                "wall_ratio": ratio,
                "wall_ratio_with_statistics": stats_ratio,
            }
        )
        wall += (n - stats_n) * ratio + stats_n * (stats_ratio or 0.0)
        flops += n * f / base_flops
        total += n
    return {
        "vanilla_step_s": t["vanilla"],
        "aa_pct": 100 * (t.ratio("vanilla_copy", "vanilla") - 1),
        "phases": rows,
        "integrated_flops_overhead_pct": 100 * (flops / total - 1),
        "integrated_wall_overhead_pct": 100 * (wall / total - 1),
        "final_flops_overhead_pct": 100 * (rows[-1]["flops_ratio"] - 1),
        "final_wall_overhead_pct": 100 * (rows[-1]["wall_ratio"] - 1),
        "final_masked_flops_overhead_pct": 100
        * (train_step_flops(masked.arch, *shape) / base_flops - 1),
        "final_masked_wall_overhead_pct": 100 * (t.ratio("final_masked", "vanilla") - 1),
    }


def timed_in_processes(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """:func:`wall_overhead` of run ``name`` (first seed) measured in
    ``args.timing_processes`` fresh processes per CPU thread count of
    ``args.timing_threads``, one after the other: SGT's ratio moves by several percent
    between processes, much more than the A/A control's does. One entry per thread count:
    the median of each figure, and every process's."""
    out = []
    for threads in args.timing_threads:
        per_process = []
        for i in range(args.timing_processes):
            print(f"  {threads} thread(s), process {i + 1}/{args.timing_processes}", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                result = Path(tmp) / "speed.json"
                worker = ["--variants", name, "--seeds", str(args.seeds[0])]
                worker += ["--timing-worker", name, "--worker-out", str(result)]
                worker += ["--worker-threads", str(threads)]
                subprocess.run([sys.executable, __file__, *sys.argv[1:], *worker], check=True)
                per_process.append(json.loads(result.read_text()))
        keys = [k for k, v in per_process[0].items() if isinstance(v, float)]
        speed = {k: statistics.median(r[k] for r in per_process) for k in keys}
        speed["threads"] = threads
        speed["phases"] = per_process[0]["phases"]
        speed["per_process"] = [{k: r[k] for k in keys} for r in per_process]
        out.append(speed)
    return out


def looped_vs_vanilla(
    looped: Architecture, batch: dict[str, torch.Tensor], rounds: int, steps: int
) -> dict[str, float]:
    """``looped`` against the same model without loops, timed in alternation on ``batch``:
    vanilla step time and the FLOPs and measured overheads."""
    vanilla = without_loops(looped)
    torch.manual_seed(0)
    models = {"vanilla": (build_model(vanilla), False), "sgt": (build_model(looped), False)}
    t = time_steps(models, batch, rounds, steps)
    shape = tuple(batch["input_ids"].shape)
    flops = train_step_flops(looped, *shape) / train_step_flops(vanilla, *shape)
    return {
        "vanilla_step_s": t["vanilla"],
        "flops_overhead_pct": 100 * (flops - 1),
        "wall_overhead_pct": 100 * (t.ratio("sgt", "vanilla") - 1),
    }


def batch_scaling(
    summary: dict[str, Any], data: Any, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Final-structure overhead (FLOPs and measured) of a run at growing batch sizes: whether
    the gap between them is a fixed cost per operation (it would shrink) or not."""
    final = Architecture.from_dict(summary["architecture"])
    rows = []
    for b in args.scale_batches:
        torch.manual_seed(0)
        pick = torch.randperm(len(data.train))[:b]
        batch = collate(data.train, pick, data.tokenizer.pad_id)
        # Fewer, longer rounds: a step at batch 256 takes seconds.
        timed = looped_vs_vanilla(final, batch, max(5, args.rounds // 2), args.timed_steps)
        rows.append({"batch": b, "tokens": b * batch["input_ids"].shape[1], **timed})
    return rows


def dropout_cost(summary: dict[str, Any], batch, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Final-structure overhead (FLOPs and measured) of a run with the runs' dropout and with
    0.1: on CPU, sampling the dropout masks of every loop pass costs time no FLOP count
    shows."""
    final = Architecture.from_dict(summary["architecture"])
    return [
        {
            "dropout": p,
            **looped_vs_vanilla(replace(final, dropout=p), batch, args.rounds, args.timed_steps),
        }
        for p in sorted({args.dropout, 0.1})
    ]


def summarize(results: dict[str, dict[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for variant, by_seed in results.items():
        ppl = {seed: s["metrics"]["val_ppl"] for seed, s in by_seed.items()}
        rows.append(
            {
                "variant": variant,
                "val_ppl": ppl,
                "mean_ppl": statistics.mean(ppl.values()),
                "flops_overhead_pct": statistics.mean(
                    s["flops_overhead_pct"] for s in by_seed.values()
                ),
                "train_wall_s": statistics.mean(s["wall_s"] for s in by_seed.values()),
                "loops": {
                    seed: [
                        (i, layer["loops"] or layer["block_loops"], layer["looped_heads"])
                        for i, layer in enumerate(s["loop_structure"])
                        if layer["loops"] or layer["block_loops"]
                    ]
                    for seed, s in by_seed.items()
                },
            }
        )
    return rows


def table(rows: list[dict[str, Any]], seeds: list[int]) -> list[str]:
    vanilla = next(r["mean_ppl"] for r in rows if r["variant"] == "vanilla")
    seed_cols = " | ".join(f"ppl s{s}" for s in seeds)
    lines = [
        f"| variant | {seed_cols} | mean ppl | vs vanilla | FLOPs overhead | train wall s "
        f"| loops (layer, depth, heads) seed {seeds[0]} |",
        "|---|" + "---|" * (len(seeds) + 5),
    ]
    for r in rows:
        ppl = " | ".join(f"{r['val_ppl'][s]:.3f}" for s in seeds)
        loops = (
            "; ".join(f"L{i} x{d} {h if h else 'block'}" for i, d, h in r["loops"][seeds[0]]) or "-"
        )
        lines.append(
            f"| {r['variant']} | {ppl} | {r['mean_ppl']:.3f} | "
            f"{100 * (r['mean_ppl'] / vanilla - 1):+.2f}% | {r['flops_overhead_pct']:.2f}% | "
            f"{r['train_wall_s']:.0f} | {loops} |"
        )
    return lines


def speed_lines(speed: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| run (seed 0) | FLOPs overhead (integrated) | wall overhead (integrated) "
        "| gap (pp) | final structure: FLOPs | wall | all heads computed, masked: FLOPs | wall "
        "| A/A (vanilla vs vanilla) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in speed.items():
        gap = s["integrated_wall_overhead_pct"] - s["integrated_flops_overhead_pct"]
        lines.append(
            f"| {name} | {s['integrated_flops_overhead_pct']:.2f}% | "
            f"{s['integrated_wall_overhead_pct']:.2f}% | {gap:+.2f} | "
            f"{s['final_flops_overhead_pct']:.2f}% | {s['final_wall_overhead_pct']:.2f}% | "
            f"{s['final_masked_flops_overhead_pct']:.2f}% | "
            f"{s['final_masked_wall_overhead_pct']:.2f}% | {s['aa_pct']:+.2f}% |"
        )
    return lines


def process_lines(processes: list[dict[str, Any]]) -> list[str]:
    """SGT's overheads measured in fresh processes, one row per CPU thread count: the mean
    with its standard error and the range over the processes, and how many processes
    read the integrated wall overhead within 2 points of the FLOPs overhead."""

    def spread(runs: list[dict[str, float]], key: str, sign: str = "") -> str:
        xs = [r[key] for r in runs]
        se = statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else float("nan")
        return (
            f"{statistics.mean(xs):{sign}.2f} ± {se:.2f} "
            f"({min(xs):{sign}.2f} .. {max(xs):{sign}.2f})"
        )

    lines = [
        "| CPU threads | processes | vanilla step s | FLOPs overhead (integrated) "
        "| wall overhead (integrated) | gap (pp) | within 2 pp | final structure: FLOPs "
        "| wall | A/A |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in processes:
        runs = [
            {**r, "gap": r["integrated_wall_overhead_pct"] - r["integrated_flops_overhead_pct"]}
            for r in p["per_process"]
        ]
        within = sum(abs(r["gap"]) <= 2 for r in runs)
        lines.append(
            f"| {p['threads']} | {len(runs)} | {p['vanilla_step_s']:.3f} | "
            f"{p['integrated_flops_overhead_pct']:.2f}% | "
            f"{spread(runs, 'integrated_wall_overhead_pct')}% | {spread(runs, 'gap', '+')} | "
            f"{within}/{len(runs)} | {p['final_flops_overhead_pct']:.2f}% | "
            f"{spread(runs, 'final_wall_overhead_pct')}% | {spread(runs, 'aa_pct', '+')}% |"
        )
    return lines


def plot(
    results: dict, rows: list[dict], speed: dict, processes: list[dict], out: Path, seeds: list[int]
) -> Path:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for variant in results:
        steps, ppl = val_curve(out / f"{variant}_s{seeds[0]}")
        ax1.plot(steps, ppl, marker="o", label=variant)
    ax1.set(
        xlabel="step",
        ylabel="held-out perplexity",
        yscale="log",
        title=f"Held-out perplexity (seed {seeds[0]})",
    )
    ax1.legend(fontsize=8)
    # A legend, not labels at the points: several variants share an overhead.
    for r in rows:
        ax2.scatter(r["flops_overhead_pct"], r["mean_ppl"], s=40, label=r["variant"])
    ppl = {r["variant"]: r["mean_ppl"] for r in rows}
    for name, s in speed.items():
        ax2.scatter(s["integrated_wall_overhead_pct"], ppl[name], marker="x", color="black")
    for p in processes:
        walls = [r["integrated_wall_overhead_pct"] for r in p["per_process"]]
        ax2.scatter(
            walls,
            [ppl["sgt"]] * len(walls),
            marker="|",
            s=120,
            label=f"sgt, fresh processes, {p['threads']} thread(s)",
        )
    ax2.legend(fontsize=8, loc="center right")
    ax2.set(
        xlabel="training overhead over vanilla, % (dots: FLOPs; x, |: measured wall)",
        ylabel=f"final held-out perplexity, mean of {len(seeds)} seeds",
        title="Quality vs cost",
    )
    fig.tight_layout()
    png = out / "sgt_lm.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="LM corpus (default: Python's stdlib)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--window", type=int, default=250, help="SGT warm-up and window, steps")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--vocab", type=int, default=2000)
    p.add_argument(
        "--d-model", type=int, default=128, help="residual width (8 heads of d_model / 8)"
    )
    p.add_argument(
        "--dropout",
        type=float,
        default=0.0,
        help="dropout of every variant (0 as in the reference's OLMo pretraining config)",
    )
    p.add_argument("--rounds", type=int, default=60, help="timing rounds per structure")
    p.add_argument(
        "--timed-steps",
        type=int,
        default=1,
        help="steps per model and timing round (1: every step is paired with vanilla's)",
    )
    p.add_argument(
        "--scale-batches",
        type=int,
        nargs="+",
        default=[16, 64, 256],
        help="batch sizes for the final-structure overhead of SGT (seed 0)",
    )
    p.add_argument(
        "--timing-processes",
        type=int,
        default=5,
        help="fresh processes per thread count that time SGT's structures (0: none)",
    )
    p.add_argument(
        "--timing-threads",
        type=int,
        nargs="+",
        default=[1, 2],
        help="CPU thread counts of the fresh timing processes",
    )
    p.add_argument("--timing-worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-threads", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("--train-only", action="store_true", help="train, skip timing and report")
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--out", default="runs/sgt_lm")
    args = p.parse_args()
    out = Path(args.out)
    t0 = time.perf_counter()
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for seed in args.seeds:
        for variant in args.variants:
            print(f"[{time.perf_counter() - t0:.0f} s] {variant} seed {seed}", flush=True)
            cfg = config(args, variant, seed)
            results.setdefault(variant, {})[seed] = run(cfg, out / f"{variant}_s{seed}", args.fresh)
    if args.train_only:
        return
    rows = summarize(results)
    data = load_task("lm", data_dir=args.data_dir, max_len=args.seq, vocab_size=args.vocab)
    torch.manual_seed(0)
    pick = torch.randperm(len(data.train))[: args.batch]
    batch = collate(data.train, pick, data.tokenizer.pad_id)

    def timed(name: str) -> dict[str, Any]:
        run_dir = out / f"{name}_s{args.seeds[0]}"
        cfg = config(args, name, args.seeds[0])
        return wall_overhead(results[name][args.seeds[0]], cfg, run_dir, args, batch)

    if args.timing_worker:
        torch.set_num_threads(args.worker_threads)
        Path(args.worker_out).write_text(json.dumps(timed(args.timing_worker)))
        return
    speed = {}
    for name in ("sgt", "sgt_k3", "high_entropy_1layer", "block_loop"):
        if name in results:
            print(f"[{time.perf_counter() - t0:.0f} s] timing the structures of {name}", flush=True)
            speed[name] = timed(name)
    processes = []
    if "sgt" in results and args.timing_processes:
        print(f"[{time.perf_counter() - t0:.0f} s] SGT's structures in fresh processes", flush=True)
        processes = timed_in_processes("sgt", args)
    print(f"[{time.perf_counter() - t0:.0f} s] SGT's final structure at other batch sizes")
    scaling = batch_scaling(results["sgt"][args.seeds[0]], data, args) if "sgt" in results else []
    print(f"[{time.perf_counter() - t0:.0f} s] SGT's final structure with and without dropout")
    dropout = dropout_cost(results["sgt"][args.seeds[0]], batch, args) if "sgt" in results else []
    lines = [
        f"Causal LM, 6 layers, d_model {args.d_model}, 8 heads x {args.d_model // 8}, "
        f"seq {args.seq}, batch {args.batch}, "
        f"vocab {args.vocab}, dropout {args.dropout}, {args.steps} steps, seeds {args.seeds}; CPU "
        f"({torch.get_num_threads()} threads), torch {torch.__version__}.",
        "",
        *table(rows, args.seeds),
        "",
        "Measured training-step time of each run's structures over vanilla (alternating "
        f"timing, {args.rounds} rounds x {args.timed_steps} steps, medians), integrated over "
        "the run's schedule; the last two columns run the final structure the way the "
        "reference code does (every head computed, the non-kept ones multiplied by 0):",
        "",
        *speed_lines(speed),
        "",
        f"SGT's structures timed the same way in {args.timing_processes} fresh processes per "
        "CPU thread count (one after the other): mean ± standard error (range over the "
        "processes). Within 2 pp: processes whose integrated wall overhead is within 2 "
        "points of the FLOPs overhead:",
        "",
        *process_lines(processes),
        "",
        "SGT's final structure (seed 0) vs vanilla at other batch sizes (same timing): the "
        "gap between the two at each size:",
        "",
        "| batch x seq | tokens | vanilla step s | FLOPs overhead | measured wall overhead |",
        "|---|---|---|---|---|",
        *(
            f"| {r['batch']} x {args.seq} | {r['tokens']:,} | {r['vanilla_step_s']:.3f} | "
            f"{r['flops_overhead_pct']:.2f}% | {r['wall_overhead_pct']:.2f}% |"
            for r in scaling
        ),
        "",
        "SGT's final structure (seed 0) vs vanilla, both built with each dropout (same "
        "timing, batch as above): on CPU every loop pass samples dropout masks for its "
        "attention probabilities and its output, work that no FLOP count shows:",
        "",
        "| dropout | vanilla step s | FLOPs overhead | measured wall overhead |",
        "|---|---|---|---|",
        *(
            f"| {r['dropout']} | {r['vanilla_step_s']:.3f} | {r['flops_overhead_pct']:.2f}% | "
            f"{r['wall_overhead_pct']:.2f}% |"
            for r in dropout
        ),
    ]
    png = plot(results, rows, speed, processes, out, args.seeds)
    save_report(
        out,
        "sgt_lm",
        lines,
        args,
        t0,
        rows=rows,
        speed=speed,
        processes=processes,
        batch_scaling=scaling,
        dropout_cost=dropout,
    )
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
