"""``growformer train``: a run from a configuration file, flags and ``--set`` keys."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

from growformer import checkpoint
from growformer.distributed import Ranks
from growformer.errors import ConfigError
from growformer.training.config import DISTRIBUTED, PRECISIONS, TrainConfig
from growformer.training.config_files import apply_overrides, dump_config, read_config
from growformer.training.loop import train

# Where runs go without --out.
RUNS = Path("runs")

# Flags that override configuration keys of the same name.
OVERRIDES = (
    "task",
    "policy",
    "steps",
    "seed",
    "batch_size",
    "lr",
    "device",
    "precision",
    "distributed",
    "compile",
    "data_dir",
    "data_file",
    "labels_file",
    "init",
    "decay_steps",
    "tensorboard",
)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    t = sub.add_parser("train", help="train a model; writes DIR/summary.json")
    t.add_argument(
        "--out",
        help="run directory (default: runs/TASK-POLICY, or the first of runs/TASK-POLICY-2, "
        "-3, ... that holds no run; required with --resume)",
    )
    t.add_argument(
        "--task",
        help="sst2, sarscov2, retrieval, channels, lm, file or fasta (default: sst2; file "
        "with --data, fasta with --data and --labels)",
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
    t.add_argument("--config", help="YAML or JSON configuration file (flags override it)")
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any configuration key, dotted into sections (model.d_model=256, "
        "policy_options.growth_ratio=0.2); VALUE is read as JSON, else as text; applied "
        "after --config and the flags; repeatable",
    )
    t.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved configuration as YAML and exit without training",
    )
    t.add_argument("--resume", action="store_true", help="continue from DIR's newest checkpoint")
    t.add_argument(
        "--data",
        dest="data_file",
        help="TSV/CSV file with a text and a label column, or a FASTA file (with --labels)",
    )
    t.add_argument(
        "--labels", dest="labels_file", help="CSV id,label for the records of a FASTA --data"
    )
    t.add_argument(
        "--init",
        help="start from this checkpoint (e.g. written by growformer import): its weights, "
        "structure and tokenizer",
    )
    t.add_argument("--data-dir", help="directory of the task's files")
    t.add_argument("--batch-size", type=int, help="sequences per step")
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    t.add_argument("--precision", choices=PRECISIONS, help="bf16: autocast the training forward")
    t.add_argument("--distributed", choices=DISTRIBUTED, help="under torchrun: ddp or fsdp")
    t.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the steps without statistics (again after structural changes)",
    )
    t.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        help="also log to DIR/tensorboard for TensorBoard (needs the tensorboard extra)",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(execute=_train)


def _train(args: argparse.Namespace) -> int:
    if args.out is None and args.resume:
        raise ConfigError("train --resume needs --out DIR, the run to continue")
    base: dict[str, Any] = {}
    if args.resume:
        base = checkpoint.read_config(args.out)
    if args.config:
        base.update(read_config(args.config))
    flags = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None}
    if "data_file" in flags and "task" not in flags and "task" not in base:
        flags["task"] = "fasta" if "labels_file" in flags else "file"
    cfg = TrainConfig.from_dict(apply_overrides({**base, **flags}, args.overrides))
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    main = Ranks.from_env().main
    out = Path(args.out) if args.out is not None else _free_run_dir(cfg)
    if args.out is None and main:
        print(f"growformer: run directory {out}", file=sys.stderr)
    summary = train(cfg, out, resume=args.resume, progress=not args.no_progress)
    if main:
        print(_outcome(summary, out), file=sys.stderr)
        print(json.dumps({k: summary[k] for k in ("task", "policy", "steps", "params", "metrics")}))
    return 0


def _free_run_dir(cfg: TrainConfig) -> Path:
    """``runs/TASK-POLICY``, or the first of ``runs/TASK-POLICY-2``, ``-3``, ... that holds
    no run (:func:`checkpoint.holds_run`, as the trainer asks before it starts). Every rank of a
    distributed run finds the same one: checkpoints are written only after steps that all
    ranks take together."""
    name = f"{cfg.task}-{cfg.policy}"
    places = (RUNS / (name if n == 1 else f"{name}-{n}") for n in itertools.count(1))
    return next(out for out in places if not checkpoint.holds_run(out))


def _outcome(summary: dict[str, Any], out: Path) -> str:
    """What a run became, for people: its structure, INCRT's certificate and forecast, its
    metrics and where its report is."""
    heads = "/".join(str(layer["heads"]) for layer in summary["architecture"]["layers"])
    lines = [f"heads per layer  {heads}"]
    if "converged_step" in summary:
        step = summary["converged_step"]
        lines.append(
            f"certified        at step {step} of {summary['steps']} (no change since)"
            if step is not None
            else f"certified        no: the structure still changed within the last checks "
            f"of {summary['steps']} steps"
        )
        if summary.get("forecast_heads") is not None:
            lines.append(
                f"forecast         {'/'.join(map(str, summary['forecast_heads']))} "
                f"(at step {summary['forecast_step']})"
            )
    metrics = summary.get("metrics") or {}
    if metrics:
        lines.append(
            "metrics          "
            + "  ".join(f"{k.removeprefix('val_')} {v:.4g}" for k, v in metrics.items())
        )
    report = out / "report" / "index.html"
    if report.exists():
        lines.append(f"report           {report}")
    return "\n".join(lines)
