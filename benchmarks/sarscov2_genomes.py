"""SARS-CoV-2 lineage assignment from genome-wide mutations: growformer against baselines.

In one run, on the pangoLEARN lineage tree (42,213 genomes), every growformer model trained
with the task's defaults (``growformer train --task sarscov2 --policy incrt``: INCRT grown
from one head per layer, 2 layers, 2,000 steps) and two baselines that need no network on
the very same examples (1-NN and logistic regression on presence features of mutations in
>= 20 training genomes, see ``lineage_baselines.py``):

1. WHO variant, split by genotype: macro-F1, Recombinant F1, training time, heads.
2. WHO variant, whole lineages held out (3 seeds) and the last-designated lineages held out.
3. Pango lineage (top 200 + other), split by genotype: exact accuracy and within one level
   (the call is the true lineage, its parent or one of its children, de-aliased), with the
   task defaults (2,000 steps) and with 6,000 steps (201 classes underfit in 2,000).
4. Amplicon dropout: the WHO test genomes with 0, 5, 10 and 20% of the genome masked in
   400-nt runs (amplicon-sized), the model and the baselines on the same masked genomes.
5. Position embedding: the WHO model again with the position table held at zero, since a
   genome's mutations are a set (same split, same steps).
7. The held-out splits again with 500 synthetic recombinant genomes added to training (task
   option ``recombinants``).
6. ``growformer assign`` on 1,000 unaligned genomes written from test genotypes with
   sequencing damage (trimmed ends, failed amplicons, deletions, ambiguity codes; 5% of them
   heavily damaged and 2% cut to fragments, which QC must fail): genomes/s, agreement with
   the tree's labels, QC failures by reason.

Writes ``results.json``, ``sarscov2_genomes.md`` and ``sarscov2_genomes.png`` to --out.
Finished training runs are reused when their configuration is unchanged (--fresh reruns).

    python benchmarks/sarscov2_genomes.py --data-dir ../shared/data/sarscov2 \
        [--out runs/sarscov2_genomes] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path
from typing import Any

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from common import run
from lineage_baselines import LogisticRegression, NearestNeighbour

from growformer import checkpoint
from growformer.assign import assign
from growformer.data import TaskData, eval_batches, load_task
from growformer.data import sarscov2 as sc
from growformer.data.datasets import ClassificationData
from growformer.data.tasks.sarscov2 import genome_encoder
from growformer.evaluation import class_f1, confusion_matrix, eval_mode, macro_f1
from growformer.training.config import TrainConfig
from growformer.training.loop import Trainer

MASKS = (0.0, 0.05, 0.10, 0.20)
LINEAGE_SEEDS = (0, 1, 2)
BASELINES = ("1-NN", "logistic regression")
RECOMBINANTS = 500  # synthetic recombinant genomes added to training in the last stage


def base_config(args: argparse.Namespace, **task_options: Any) -> dict[str, Any]:
    """The task's defaults, only the data directory (and the options given) set."""
    cfg: dict[str, Any] = {
        "task": "sarscov2",
        "policy": "incrt",
        "data_dir": str(Path(args.data_dir).resolve()),
        "device": "cpu",
        "task_options": task_options,
    }
    if args.quick:
        cfg.update(steps=300, warmup_steps=30, eval_every=300, checkpoint_every=300)
    return cfg


def task_of(cfg: dict[str, Any]) -> TaskData:
    """The task exactly as the run of ``cfg`` loads it."""
    c = TrainConfig.from_dict(cfg)
    return load_task(
        c.task, data_dir=c.data_dir, seed=c.seed, max_len=c.max_len, options=c.task_options
    )


def predict(model: torch.nn.Module, ids: list[list[int]], pad_id: int) -> torch.Tensor:
    """The model's label for each example."""
    data = ClassificationData(ids=ids, labels=torch.zeros(len(ids), dtype=torch.long))
    out = []
    with eval_mode(model), torch.no_grad():
        for batch in eval_batches(data, 256, pad_id):
            out.append(model(batch["input_ids"], batch["attention_mask"]).logits.argmax(-1))
    return torch.cat(out)


def scores(pred: torch.Tensor, gold: torch.Tensor, names: list[str]) -> dict[str, Any]:
    confusion = confusion_matrix(gold, pred, len(names))
    f1 = class_f1(confusion).tolist()
    return {
        "accuracy": round((pred == gold).double().mean().item(), 4),
        "macro_f1": round(macro_f1(confusion), 4),
        "class_f1": {n: round(v, 3) for n, v in zip(names, f1, strict=True)},
    }


def baselines(data: TaskData) -> dict[str, Any]:
    """Both baselines, fitted on the task's training examples."""
    train, labels = data.train.ids, data.train.labels
    return {
        "1-NN": NearestNeighbour(train, labels),
        "logistic regression": LogisticRegression(train, labels, data.num_labels),
    }


def baseline_rows(data: TaskData) -> dict[str, dict[str, Any]]:
    return {
        name: {**scores(fitted.predict(data.val.ids), data.val.labels, data.label_names)}
        for name, fitted in baselines(data).items()
    }


def model_row(summary: dict[str, Any], data: TaskData, run_dir: Path) -> dict[str, Any]:
    model = checkpoint.load(run_dir).model
    pred = predict(model, data.val.ids, data.tokenizer.pad_id)
    return {
        **scores(pred, data.val.labels, data.label_names),
        "params": summary["params"],
        "heads": [layer["heads"] for layer in summary["architecture"]["layers"]],
        "forecast": summary.get("forecast_heads"),
        "certified_step": summary.get("converged_step"),
        "train_s": round(summary["wall_s"]),
        "pred": pred,
    }


def who_genotype(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    cfg = base_config(args)
    summary = run(cfg, out / "who_genotype", args.fresh)
    data = task_of(cfg)
    rows = {"INCRT": model_row(summary, data, out / "who_genotype"), **baseline_rows(data)}
    return {"config": cfg, "rows": rows, "info": data.info, "data": data}


def held_out(args: argparse.Namespace, out: Path, **options: Any) -> dict[str, Any]:
    """WHO variant with whole lineages held out (3 seeds), and the future split; with
    ``options``, the task options added (the baselines see the same training examples)."""
    result: dict[str, Any] = {}
    suffix = "".join(f"_{k}{v}" for k, v in options.items())
    for split, seeds in (("lineage", LINEAGE_SEEDS), ("future", (0,))):
        per_seed = []
        for seed in seeds:
            cfg = {**base_config(args, split=split, **options), "seed": seed}
            run_dir = out / f"who_{split}_seed{seed}{suffix}"
            summary = run(cfg, run_dir, args.fresh)
            data = task_of(cfg)
            rows = {"INCRT": model_row(summary, data, run_dir), **baseline_rows(data)}
            per_seed.append(
                {
                    "seed": seed,
                    "held_out_lineages": len(data.info["held_out_lineages"]),
                    "test_examples": len(data.val),
                    "rows": rows,
                }
            )
        result[split] = per_seed
    return result


def full_names(labels: list[str], aliases: dict[str, Any]) -> list[str]:
    return [name if name == sc.OTHER else sc.dealias(name, aliases) for name in labels]


def within_one_level(pred: torch.Tensor, gold: torch.Tensor, names: list[str]) -> float:
    """Share of calls that are the true lineage, its parent or one of its children."""
    hits = 0
    for p, g in zip(pred.tolist(), gold.tolist(), strict=True):
        a, b = names[p], names[g]
        hits += a == b or (
            sc.OTHER not in (a, b) and (sc.parent_lineage(b) == a or sc.parent_lineage(a) == b)
        )
    return round(hits / len(gold), 4)


PANGO_STEPS = (None, 6000)  # the defaults' 2,000, and longer


def pango_lineages(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    preds: dict[str, torch.Tensor] = {}
    for steps in PANGO_STEPS:
        cfg = base_config(args, label="lineage", top_lineages=200)
        name, run_dir = "INCRT", out / "pango_top200"
        if steps and not args.quick:
            cfg.update(steps=steps, eval_every=steps, checkpoint_every=steps)
            name, run_dir = f"INCRT, {steps:,} steps", out / f"pango_top200_steps{steps}"
        elif steps:
            continue
        summary = run(cfg, run_dir, args.fresh)
        data = task_of(cfg)
        rows[name] = model_row(summary, data, run_dir)
        preds[name] = rows[name]["pred"]
    names = full_names(data.label_names, sc.read_aliases(Path(args.data_dir) / sc.ALIAS_FILE))
    preds |= {name: fitted.predict(data.val.ids) for name, fitted in baselines(data).items()}
    for name, pred in preds.items():
        row = rows.setdefault(name, scores(pred, data.val.labels, data.label_names))
        row.pop("class_f1", None)
        row["within_one_level"] = within_one_level(pred, data.val.labels, names)
    return {"classes": data.num_labels, "test_examples": len(data.val), "rows": rows}


def masking_curve(args: argparse.Namespace, out: Path, who: dict[str, Any]) -> dict[str, Any]:
    """Macro-F1 of the WHO model and the baselines with amplicon-sized runs masked."""
    cfg, data = who["config"], who["data"]
    ckpt = checkpoint.load(out / "who_genotype")
    split = genotype_split(args, cfg)
    encoder = genome_encoder(data.tokenizer, ckpt.task)
    index = {name: i for i, name in enumerate(data.label_names)}
    gold = torch.tensor([index[y] for _, y in split.test])
    curve: dict[str, list[float]] = {"INCRT": [], **{b: [] for b in BASELINES}}
    fitted = baselines(data)
    for fraction in MASKS:
        gen = torch.Generator().manual_seed(1234)
        masked = [sc.mask_amplicons(g, fraction, gen)[0] for g, _ in split.test]
        ids = [encoder.ids(g) for g in masked]
        preds = {"INCRT": predict(ckpt.model, ids, data.tokenizer.pad_id)}
        preds |= {name: f.predict(ids) for name, f in fitted.items()}
        for name, pred in preds.items():
            curve[name].append(round(macro_f1(confusion_matrix(gold, pred, len(index))), 4))
        print(f"  masked {fraction:.0%}: " + ", ".join(f"{k} {v[-1]}" for k, v in curve.items()))
    return {"fractions": list(MASKS), "macro_f1": curve, "test_genomes": len(gold)}


def genotype_split(args: argparse.Namespace, cfg: dict[str, Any]) -> sc.SequenceSplit:
    """The WHO task's genotype split, as genotypes (the same seed and fraction as the run)."""
    d = Path(args.data_dir)
    leaves = sc.load_tree_leaves(d / sc.TREE_FILE, d / sc.REFERENCE_FILE)
    aliases = sc.read_aliases(d / sc.ALIAS_FILE)
    who = [sc.who_label(sc.dealias(s, aliases)) for s in leaves.lineages]
    c = TrainConfig.from_dict(cfg)
    fraction = c.task_options.get("test_fraction", 0.2)
    return sc.split_by_sequence(
        leaves.genotypes, who, test_fraction=fraction, seed=c.seed, dedup=True
    )


def no_positions(args: argparse.Namespace, out: Path, who: dict[str, Any]) -> dict[str, Any]:
    """The WHO model trained with its position table held at zero."""
    cfg = who["config"]
    run_dir = out / "who_genotype_no_positions"
    summary_path = run_dir / "summary.json"
    if args.fresh or not summary_path.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        trainer = Trainer(TrainConfig.from_dict(cfg), run_dir)
        table = trainer.model.transformer.pos_emb.weight
        table.data.zero_()
        table.requires_grad_(False)  # no gradient: AdamW leaves it (and its decay) alone
        summary = trainer.run(progress=False)
    else:
        summary = json.loads(summary_path.read_text())
    data = who["data"]
    row = model_row(summary, data, run_dir)
    ckpt = checkpoint.load(run_dir)
    assert ckpt.model.transformer.pos_emb.weight.abs().max().item() == 0.0
    split = genotype_split(args, cfg)
    encoder = genome_encoder(data.tokenizer, ckpt.task)
    index = {name: i for i, name in enumerate(data.label_names)}
    gold = torch.tensor([index[y] for _, y in split.test])
    gen = torch.Generator().manual_seed(1234)
    masked = [encoder.ids(sc.mask_amplicons(g, 0.10, gen)[0]) for g, _ in split.test]
    pred = predict(ckpt.model, masked, data.tokenizer.pad_id)
    row["macro_f1_masked_10"] = round(macro_f1(confusion_matrix(gold, pred, len(index))), 4)
    return row


def assign_damaged(args: argparse.Namespace, out: Path, who: dict[str, Any]) -> dict[str, Any]:
    """`assign` on 1,000 damaged genomes written from the WHO split's test genotypes."""
    split = genotype_split(args, who["config"])
    reference = sc.read_reference(Path(args.data_dir) / sc.REFERENCE_FILE)
    gen = torch.Generator().manual_seed(7)
    picked = torch.randperm(len(split.test), generator=gen)[:1000].tolist()
    heavy = sc.Damage(max_failed_amplicons=60)
    path, labels = out / "damaged_genomes.fasta", {}
    with path.open("w") as f:
        for n, i in enumerate(picked):
            genotype, label = split.test[i]
            genome = sc.genome_sequence(genotype, reference)
            if n % 50 == 0:  # 2%: a fragment of 5 kb
                start = int(torch.randint(0, len(genome) - 5000, (), generator=gen))
                genome = genome[start : start + 5000]
            else:
                genome = sc.damage(genome, gen, heavy if n % 20 == 1 else sc.Damage())
            name = f"genome{n:04d}"
            labels[name] = label
            f.write(f">{name}\n{genome}\n")
    calls = out / "damaged_calls.csv"
    ckpt = checkpoint.load(out / "who_genotype")
    summary = assign(ckpt, path, calls, progress=False).to_dict()
    with calls.open(newline="") as f:
        rows = list(csv.DictReader(f))
    called = [r for r in rows if r["qc_status"] == sc.QC_PASS]
    agree = sum(r["call"] == labels[r["taxon"]] for r in called)
    return {
        **{k: summary[k] for k in ("genomes", "called", "qc_failed", "qc_failed_by_reason")},
        "genomes_per_s": summary["genomes_per_s"],
        "agreement": round(agree / len(called), 4),
        "disagreements": len(called) - agree,
        "masked_fraction_median": round(
            statistics.median(float(r["masked_fraction"]) for r in called), 4
        ),
    }


def plot(results: dict[str, Any], path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    curve = results["masking"]
    for name, values in curve["macro_f1"].items():
        left.plot([100 * f for f in curve["fractions"]], values, marker="o", label=name)
    left.axhline(0.98, color="grey", linestyle=":", label="target at 10%")
    left.set(xlabel="genome masked in 400-nt runs (%)", ylabel="WHO macro-F1", title="dropout")
    left.legend()
    names = ["INCRT", *BASELINES]
    groups = ["genotype", "lineage", "future"]
    for k, name in enumerate(names):
        means = [results["who_genotype"]["rows"][name]["macro_f1"]]
        for split in ("lineage", "future"):
            means.append(
                statistics.mean(s["rows"][name]["macro_f1"] for s in results["held_out"][split])
            )
        right.bar([g + 0.27 * k for g in range(3)], means, width=0.27, label=name)
    right.set_xticks([g + 0.27 for g in range(3)], groups)
    right.set(ylabel="WHO macro-F1", ylim=(0.5, 1.0), title="split (held-out: mean of seeds)")
    right.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="../shared/data/sarscov2")
    p.add_argument("--out", default="runs/sarscov2_genomes")
    p.add_argument("--quick", action="store_true", help="300 steps per model (minutes)")
    p.add_argument("--fresh", action="store_true", help="rerun runs whose results exist")
    args = p.parse_args()
    out = Path(args.out) / ("quick" if args.quick else "full")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    stages = (
        ("who_genotype", lambda: who_genotype(args, out)),
        ("masking", lambda: masking_curve(args, out, results["who_genotype"])),
        ("assign", lambda: assign_damaged(args, out, results["who_genotype"])),
        ("no_positions", lambda: no_positions(args, out, results["who_genotype"])),
        ("pango", lambda: pango_lineages(args, out)),
        ("held_out", lambda: held_out(args, out)),
        ("held_out_recombinants", lambda: held_out(args, out, recombinants=RECOMBINANTS)),
    )
    for name, stage in stages:
        print(f"{name}:", flush=True)
        results[name] = stage()
        print(f"  [{time.perf_counter() - t0:.0f} s] {name} done", flush=True)
    results["wall_s"] = round(time.perf_counter() - t0)
    text = report(results)
    print("\n" + text)
    (out / "sarscov2_genomes.md").write_text(text + "\n")
    plot(results, out / "sarscov2_genomes.png")
    (out / "results.json").write_text(json.dumps(strip(results), indent=2))


def strip(value: Any) -> Any:
    """``results`` without tensors and task data, for JSON."""
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k not in ("pred", "data")}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def report(r: dict[str, Any]) -> str:
    who = r["who_genotype"]["rows"]
    inc = who["INCRT"]
    lines = [
        "## WHO variant, split by genotype",
        "",
        "| model | accuracy | macro-F1 | Recombinant F1 | params | heads | forecast | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in who.items():
        lines.append(
            f"| {name} | {row['accuracy']:.4f} | {row['macro_f1']:.4f} | "
            f"{row['class_f1']['Recombinant']:.3f} | {row.get('params', '-')} | "
            f"{row.get('heads', '-')} | {row.get('forecast', '-')} | {row.get('train_s', '-')} |"
        )
    nopos = r["no_positions"]
    lines += [
        "",
        f"Position table at zero: macro-F1 {nopos['macro_f1']:.4f} (learned: "
        f"{inc['macro_f1']:.4f}); with 10% masked {nopos['macro_f1_masked_10']:.4f} (learned: "
        f"{r['masking']['macro_f1']['INCRT'][2]:.4f}).",
        "",
        "## WHO variant, lineages held out (macro-F1, mean [min, max] over seeds; Rec.: mean "
        "Recombinant F1)",
        "",
        "| split | seeds | held-out lineages | test genomes | "
        + " | ".join(["INCRT", *BASELINES])
        + " |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage, variant in (
        ("held_out", ""),
        ("held_out_recombinants", f", +{RECOMBINANTS} synthetic recombinants"),
    ):
        for split, per_seed in r[stage].items():
            cells = []
            for name in ["INCRT", *BASELINES]:
                values = [s["rows"][name]["macro_f1"] for s in per_seed]
                recombinant = statistics.mean(
                    s["rows"][name]["class_f1"]["Recombinant"] for s in per_seed
                )
                cells.append(
                    f"{statistics.mean(values):.3f} [{min(values):.3f}, {max(values):.3f}] "
                    f"(Rec. {recombinant:.2f})"
                )
            held = statistics.mean(s["held_out_lineages"] for s in per_seed)
            tests = statistics.mean(s["test_examples"] for s in per_seed)
            lines.append(
                f"| {split}{variant} | {len(per_seed)} | {held:.0f} | {tests:.0f} | "
                + " | ".join(cells)
                + " |"
            )
    pango = r["pango"]
    lines += [
        "",
        f"## Pango lineage, top 200 + other ({pango['classes']} classes), split by genotype",
        "",
        "| model | exact accuracy | within one level | macro-F1 | train s |",
        "|---|---|---|---|---|",
    ]
    for name, row in pango["rows"].items():
        lines.append(
            f"| {name} | {row['accuracy']:.4f} | {row['within_one_level']:.4f} | "
            f"{row['macro_f1']:.4f} | {row.get('train_s', '-')} |"
        )
    curve = r["masking"]
    lines += [
        "",
        f"## Amplicon dropout (WHO macro-F1, {curve['test_genomes']} test genomes)",
        "",
        "| model | " + " | ".join(f"{100 * f:.0f}% masked" for f in curve["fractions"]) + " |",
        "|---|" + "---|" * len(curve["fractions"]),
    ]
    for name, values in curve["macro_f1"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    a = r["assign"]
    lines += [
        "",
        "## growformer assign on damaged unaligned genomes",
        "",
        f"{a['genomes']} genomes, {a['genomes_per_s']} genomes/s; {a['called']} called, "
        f"agreement with the tree's label {a['agreement']:.4f} ({a['disagreements']} "
        f"disagree; median masked {100 * a['masked_fraction_median']:.1f}%); QC failed "
        f"{a['qc_failed']}: {a['qc_failed_by_reason']}",
        "",
        f"benchmark wall time {r['wall_s']} s ({torch.get_num_threads()} threads)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
