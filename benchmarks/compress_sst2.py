"""Compression of a trained SST-2 classifier: SVD head dimensions, grouped keys/values and
a factored token embedding.

Trains (or reuses) the static model of ``incrt_sst2.py`` (2 layers, 12 heads of 32 per
layer, d_model 128) and measures its saturation curves on training batches (the dev set
is kept for the accuracies). Then applies each compression without fine-tuning: uniform
head-dimension cuts, per-layer cuts read off the curves at several tolerances, grouped
keys/values, factored token embeddings (the table holds 61% of this model's parameters),
and combinations. Reports for each: dev accuracy, parameters (all, and
without the embeddings), forward FLOPs and measured latency relative to the uncompressed
model (all models timed in alternation in this process), with a table and a PNG.

    python benchmarks/compress_sst2.py --data-dir ../shared/data/sst2
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from common import run, save_report

from growformer import checkpoint
from growformer.allocation import (
    compress_head_dim,
    factor_embedding,
    group_kv,
    latency,
    plot_curves,
    ranks_for_tolerance,
    saturation_curves,
)
from growformer.data import eval_batches
from growformer.evaluation import evaluate
from growformer.flops import forward_flops
from growformer.model import ElasticModel
from growformer.training.config import TrainConfig
from growformer.training.setup import task_data

TOLERANCES = (0.002, 0.005, 0.01, 0.02)


def non_embedding_params(model: ElasticModel) -> int:
    embedding = ("transformer.tok_", "transformer.pos_")
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(embedding))


def variants(model: ElasticModel, curves: dict[str, Any]) -> dict[str, ElasticModel]:
    n, heads = model.arch.n_layers, model.arch.layers[0].heads
    hd = model.arch.layers[0].head_dim
    out = {"uncompressed": model}
    for r in (24, 16, 12, 8, 6, 4):
        if r < hd:
            out[f"svd r={r}"] = compress_head_dim(model, [r] * n)
    for tol in TOLERANCES:
        ranks = ranks_for_tolerance(curves, tol)
        out[f"svd curves {100 * tol:g}% {ranks}"] = compress_head_dim(model, ranks)
    for g in (6, 4, 3, 2, 1):
        if heads % g == 0 and g < heads:
            out[f"kv_heads={g}"] = group_kv(model, [g] * n)
    for r, g in ((16, 6), (8, 6), (8, 4)):
        if r < hd and heads % g == 0:
            out[f"svd r={r} + kv_heads={g}"] = group_kv(compress_head_dim(model, [r] * n), [g] * n)
    for e in (64, 32, 16, 8):
        out[f"embed {e}"] = factor_embedding(model, e)
    for r, e in ((8, 32), (4, 32), (4, 16)):
        if r < hd:
            out[f"svd r={r} + embed {e}"] = factor_embedding(compress_head_dim(model, [r] * n), e)
    return {name: m.eval() for name, m in out.items()}


def family(name: str) -> str:
    """The legend group of a compression (its passes, without their settings)."""
    parts = [p.split()[0].split("=")[0] for p in name.split(" + ")]
    return " + ".join("svd curves" if p == "svd" and "curves" in name else p for p in parts)


def plot(rows: list[dict[str, Any]], base: dict[str, Any], png: Path) -> None:
    """Accuracy against the change in all parameters and in latency, one colour per kind of
    compression; the compressions within 1 point that cut both by 30% or more are ringed,
    and the smallest of them is named."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    families = list(dict.fromkeys(family(r["name"]) for r in rows))
    passing = [
        r
        for r in rows
        if r["accuracy"] >= base["accuracy"] - 0.01
        and all(r[k] <= 0.7 * base[k] for k in ("params", "latency_s"))
    ]
    best = min(passing, key=lambda r: r["params"], default=None)
    for ax, key, label in (
        (axes[0], "params", "all parameters"),
        (axes[1], "latency_s", "latency"),
    ):

        def x(r: dict[str, Any], key: str = key) -> float:
            return 100 * (r[key] / base[key] - 1)

        for i, fam in enumerate(families):
            mine = [r for r in rows if family(r["name"]) == fam]
            ax.scatter(
                [x(r) for r in mine],
                [100 * r["accuracy"] for r in mine],
                s=30,
                color=f"C{i}",
                label=fam,
            )
        ax.scatter(
            [x(r) for r in passing],
            [100 * r["accuracy"] for r in passing],
            s=110,
            facecolors="none",
            edgecolors="black",
            label="within 1 point, both -30%" if key == "latency_s" else None,
        )
        if best is not None:
            ax.annotate(
                best["name"],
                (x(best), 100 * best["accuracy"]),
                fontsize=8,
                xytext=(0, -16),
                textcoords="offset points",
                ha="center",
            )
        ax.axhline(100 * base["accuracy"] - 1, color="grey", ls="--", lw=0.8)
        ax.axvline(-30, color="grey", ls=":", lw=0.8)
        ax.set(xlabel=f"{label} vs uncompressed, % (dotted: -30%)")
    axes[0].set(ylabel="SST-2 dev accuracy, % (dashed: -1 point)")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle("Compression trade-off (no fine-tuning)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--checkpoint", help="a trained classifier (default: train the static model)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--curve-batches", type=int, default=8)
    p.add_argument("--rounds", type=int, default=30, help="latency timings per model")
    p.add_argument("--out", default="runs/compress_sst2")
    args = p.parse_args()
    out = Path(args.out)
    t0 = time.perf_counter()
    ckpt_path = args.checkpoint
    if ckpt_path is None:
        cfg = {
            "task": "sst2",
            "data_dir": args.data_dir,
            "steps": args.steps,
            "eval_every": 500,
            "checkpoint_every": args.steps,
            "device": "cpu",
            "model": {"d_model": 128, "n_layers": 2, "heads": 12, "head_dim": 32, "ffn_dim": 512},
        }
        run(cfg, out / "static12")
        ckpt_path = out / "static12"
    ckpt = checkpoint.load(ckpt_path)
    model = ckpt.model.eval()
    cfg = TrainConfig.from_dict(ckpt.config)
    data = task_data(cfg, ckpt)
    pad_id = data.tokenizer.pad_id
    # Curves on training sentences, so that choosing ranks never looks at the dev set that
    # the accuracies are measured on.
    curve_data = list(itertools.islice(eval_batches(data.train, 64, pad_id), args.curve_batches))
    print(f"[{time.perf_counter() - t0:.0f} s] saturation curves", flush=True)
    curves = saturation_curves(model, curve_data, per_head=True)
    (out / "saturation.json").write_text(json.dumps(curves, indent=2))
    plot_curves(curves, out / "saturation.png")
    models = variants(model, curves)
    print(f"[{time.perf_counter() - t0:.0f} s] latency of {len(models)} models", flush=True)
    batch = next(iter(eval_batches(data.val, 64, pad_id)))
    times = latency(models, batch, args.rounds)
    shape = tuple(batch["input_ids"].shape)
    rows = []
    base = None
    for name, m in models.items():
        metrics = evaluate(m, data.val, batch_size=64, pad_id=pad_id)
        row = {
            "name": name,
            "accuracy": metrics["accuracy"],
            "params": m.num_params(),
            "non_embedding_params": non_embedding_params(m),
            "forward_flops": forward_flops(m.arch, *shape),
            "latency_s": times[name],
            "head_dims": [x.head_dim for x in m.arch.layers],
            "kv_heads": [x.kv_heads for x in m.arch.layers],
        }
        base = base or row
        rows.append(row)
    lines = [
        f"Compression of {ckpt.path} (dev accuracy, no fine-tuning); latency: forward pass of "
        f"a batch of {shape[0]} dev sentences, median of {args.rounds} alternating timings, "
        f"CPU {torch.get_num_threads()} threads. Changes are relative to the uncompressed model.",
        "",
        "| compression | dev acc | Δ acc (pt) | params | Δ | non-embedding params | Δ "
        "| forward FLOPs Δ | latency Δ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:

        def rel(key: str, r: dict = r) -> str:
            return f"{100 * (r[key] / base[key] - 1):+.1f}%"

        lines.append(
            f"| {r['name']} | {100 * r['accuracy']:.1f} | "
            f"{100 * (r['accuracy'] - base['accuracy']):+.1f} | {r['params']:,} | "
            f"{rel('params')} | {r['non_embedding_params']:,} | {rel('non_embedding_params')} | "
            f"{rel('forward_flops')} | {rel('latency_s')} |"
        )
    save_report(out, "compress_sst2", lines, args, t0, rows=rows)
    plot(rows, base, out / "compress_sst2.png")
    print(f"wrote {out / 'compress_sst2.png'} and {out / 'saturation.png'}")


if __name__ == "__main__":
    main()
