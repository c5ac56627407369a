"""Command line: ``growformer train | evaluate | info``.

User errors (bad files, configs, flags, checkpoints) end with one ``growformer: error:``
line on standard error and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from growformer import checkpoint
from growformer.data import (
    SPIKE_TASKS,
    Tokenizer,
    encode_classification,
    encode_lm,
    encode_spikes,
    read_fasta_labels,
    read_labeled,
    read_text,
)
from growformer.errors import ConfigError, GrowformerError
from growformer.train import TrainConfig, TrainingStopped, evaluate, read_config, train

# Flags that override configuration keys of the same name.
OVERRIDES = (
    "task",
    "policy",
    "steps",
    "seed",
    "batch_size",
    "lr",
    "device",
    "data_dir",
    "data_file",
    "labels_file",
    "decay_steps",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="growformer", description="Transformers that determine their own architecture."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model; writes DIR/summary.json")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument(
        "--task",
        help="sst2, sarscov2, retrieval, lm, file or fasta (default: sst2; file with --data, "
        "fasta with --data and --labels)",
    )
    t.add_argument(
        "--policy",
        help="structure policy: static, scheduled, incrt, sgt, all_head_loop, low_entropy_loop "
        "or block_loop; A+B runs two together, e.g. incrt+sgt (default: static)",
    )
    t.add_argument("--steps", type=int, help="optimizer steps in total")
    t.add_argument(
        "--decay-steps",
        type=int,
        help="end of the cosine decay (default: --steps); fix it to "
        "split one schedule over several runs with --resume",
    )
    t.add_argument("--seed", type=int, help="random seed")
    t.add_argument("--config", help="JSON configuration file (flags override it)")
    t.add_argument("--resume", action="store_true", help="continue from DIR's newest checkpoint")
    t.add_argument(
        "--data",
        dest="data_file",
        help="TSV/CSV file with a text and a label column, or a FASTA file (with --labels)",
    )
    t.add_argument(
        "--labels", dest="labels_file", help="CSV id,label for the records of a FASTA --data"
    )
    t.add_argument("--data-dir", help="directory of the task's files")
    t.add_argument("--batch-size", type=int, help="sequences per step")
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser("evaluate", help="evaluate a checkpoint on a data file; prints JSON")
    e.add_argument("--checkpoint", required=True, help="run directory or checkpoint directory")
    e.add_argument(
        "--data",
        required=True,
        help="labelled TSV/CSV or FASTA (with --labels) for a classifier, text file for an LM",
    )
    e.add_argument("--labels", help="CSV id,label for the records of a FASTA --data")
    e.add_argument("--batch-size", type=int, default=64)

    i = sub.add_parser("info", help="print a checkpoint's architecture")
    i.add_argument("checkpoint", help="run directory or checkpoint directory")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"train": _train, "evaluate": _evaluate, "info": _info}[args.command](args)
    except (GrowformerError, OSError) as e:
        print(f"growformer: error: {e}", file=sys.stderr)
        return 2
    except TrainingStopped as e:
        print(f"growformer: {e}", file=sys.stderr)
        return 130


def _train(args: argparse.Namespace) -> int:
    base: dict[str, Any] = {}
    if args.resume:
        base = checkpoint.read_config(args.out)
    if args.config:
        base.update(read_config(args.config))
    flags = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None}
    if "data_file" in flags and "task" not in flags and "task" not in base:
        flags["task"] = "fasta" if "labels_file" in flags else "file"
    cfg = TrainConfig.from_dict({**base, **flags})
    summary = train(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    print(json.dumps({k: summary[k] for k in ("task", "policy", "steps", "params", "metrics")}))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    if args.batch_size <= 0:
        raise ConfigError(f"--batch-size must be positive, got {args.batch_size}")
    ckpt = checkpoint.load(args.checkpoint)
    tokenizer = Tokenizer.from_json(ckpt.tokenizer_json)
    max_len = ckpt.model.arch.max_len
    spikes = ckpt.task["name"] in SPIKE_TASKS
    if args.labels is not None and not spikes:
        raise ConfigError(
            f"--labels goes with FASTA data, but {args.checkpoint} was trained on task "
            f"{ckpt.task['name']!r}"
        )
    if spikes:
        if args.labels is None:
            raise ConfigError(
                f"{args.checkpoint} classifies spike sequences: pass --data FASTA --labels CSV"
            )
        records = read_fasta_labels(args.data, args.labels)
        data = encode_spikes(
            tokenizer,
            records.sequences,
            records.labels,
            ckpt.task["label_names"],
            ckpt.task["info"],
            max_len,
            source=f"FASTA file {args.data}",
        )
    elif ckpt.model.arch.kind == "classifier":
        texts, labels = read_labeled(args.data)
        data = encode_classification(
            tokenizer,
            texts,
            labels,
            ckpt.task["label_names"],
            max_len,
            source=f"data file {args.data}",
        )
    else:
        data = encode_lm(tokenizer, read_text(args.data), max_len, source=f"text file {args.data}")
    result = evaluate(ckpt.model, data, batch_size=args.batch_size, pad_id=tokenizer.pad_id)
    print(json.dumps(result))
    return 0


def _info(args: argparse.Namespace) -> int:
    ckpt = checkpoint.load(args.checkpoint)
    arch = ckpt.model.arch
    info = {
        "path": str(ckpt.path),
        "step": ckpt.trainer_state["step"],
        "task": ckpt.task["name"],
        "params": ckpt.model.num_params(),
        "architecture": arch.to_dict(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"checkpoint  {info['path']}  (step {info['step']}, task {info['task']})")
    print(
        f"kind {arch.kind}  d_model {arch.d_model}  vocab {arch.vocab_size}  "
        f"max_len {arch.max_len}  params {info['params']:,}"
    )
    print("layer  heads  head_dim  ffn_dim  loops  looped_heads")
    for n, layer in enumerate(arch.layers):
        looped = ",".join(map(str, layer.looped_heads)) or "-"
        print(
            f"{n:>5}  {layer.heads:>5}  {layer.head_dim:>8}  {layer.ffn_dim:>7}  "
            f"{layer.loops:>5}  {looped}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
