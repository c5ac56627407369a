"""Command line: ``growformer train | evaluate | assign | info | plan | analyze | compress |
report | export``.

User errors (bad files, configs, flags, checkpoints) end with one ``growformer: error:``
line on standard error and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

from growformer import allocation, checkpoint, export
from growformer.allocation import STRATEGIES
from growformer.arch import Architecture
from growformer.assign import assign
from growformer.data import (
    TASKS,
    Tokenizer,
    encode_classification,
    encode_lm,
    eval_batches,
    read_labeled,
    read_text,
)
from growformer.distributed import Ranks
from growformer.errors import ConfigError, ExportError, GrowformerError, read_json
from growformer.evaluation import evaluate
from growformer.flops import layer_components
from growformer.fsutil import atomic_write_text
from growformer.hf.convert import import_checkpoint
from growformer.report import write_report
from growformer.training.config import DISTRIBUTED, PRECISIONS, TrainConfig
from growformer.training.config_files import apply_overrides, dump_config, read_config
from growformer.training.loop import train
from growformer.training.runtime import TrainingStopped
from growformer.training.setup import task_data
from growformer.version import __version__

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="growformer", description="Transformers that determine their own architecture."
    )
    parser.add_argument("--version", action="version", version=f"growformer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model; writes DIR/summary.json")
    t.add_argument("--out", help="run directory (required unless --print-config)")
    t.add_argument(
        "--task",
        help="sst2, sarscov2, retrieval, channels, lm, file or fasta (default: sst2; file "
        "with --data, "
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

    m = sub.add_parser(
        "import",
        help="a transformers model -> a checkpoint for train --init",
        description="Turn a transformers model directory (BERT/MiniLM, GPT-2, Llama) into a "
        "growformer checkpoint with its tokenizer, for train --init.",
    )
    m.add_argument("source", help="directory with config.json, model.safetensors, tokenizer.json")
    m.add_argument("--out", required=True, help="run directory to write")
    m.add_argument(
        "--num-labels",
        type=int,
        help="classes of the new classifier of an encoder without one (default 2)",
    )

    e = sub.add_parser("evaluate", help="evaluate a checkpoint on a data file; prints JSON")
    e.add_argument("checkpoint", nargs="?", help="run directory or checkpoint directory")
    e.add_argument(
        "--data",
        required=True,
        help="labelled TSV/CSV or FASTA (with --labels) for a classifier, text file for an LM",
    )
    e.add_argument("--labels", help="CSV id,label for the records of a FASTA --data")
    e.add_argument("--batch-size", type=int, default=64)

    g = sub.add_parser(
        "assign",
        help="call SARS-CoV-2 lineages of genomes into a CSV file",
        description="Call SARS-CoV-2 lineages of genomes (unaligned FASTA, VCF, Nextclade "
        "TSV) into a CSV file, one row per genome.",
    )
    g.add_argument(
        "paths",
        nargs="+",
        metavar="CHECKPOINT GENOMES",
        help="run directory or checkpoint directory; unaligned consensus FASTA (or .gz), VCF "
        "or Nextclade TSV",
    )
    for older in (e, g):  # the checkpoint's older form, still taken
        older.add_argument("--checkpoint", dest="checkpoint_flag", help="the checkpoint")
    g.add_argument("--out", required=True, help="CSV file of calls, one row per genome")
    g.add_argument("--reference", help="MN908947.3 FASTA (default: the one trained with)")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--no-progress", action="store_true", help="no progress bar")

    i = sub.add_parser("info", help="print a checkpoint's architecture")
    i.add_argument("checkpoint", help="run directory or checkpoint directory")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("plan", help="heads and head dimensions per layer for a budget")
    p.add_argument("--budget", type=int, required=True, help="sum over layers of heads x head_dim")
    p.add_argument("--layers", type=int, required=True, help="number of layers")
    p.add_argument("--seq", type=int, required=True, help="sequence length (max_len)")
    p.add_argument("--strategy", default="uniform", choices=STRATEGIES)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--head-dim", type=int, default=32, help="reference head dimension")
    p.add_argument("--ffn-dim", type=int, default=512)
    p.add_argument("--multiple", type=int, default=8, help="head dimensions are multiples of it")
    p.add_argument("--skew", type=float, default=0.5, help="strength of the linear profiles")
    p.add_argument("--curves", help="saturation.json of growformer analyze (strategy measured)")
    p.add_argument("--out", help="write a config file for growformer train --config")

    a = sub.add_parser("analyze", help="held-out loss against head dimension kept")
    a.add_argument("checkpoint", help="run directory or checkpoint directory")
    a.add_argument("--out", required=True, help="directory for saturation.json and .png")
    _add_eval_data_flags(a)
    a.add_argument("--batches", type=int, default=8, help="held-out batches per evaluation")
    a.add_argument("--layers-only", action="store_true", help="skip the single-head curves")

    c = sub.add_parser(
        "compress",
        help="SVD head dims, grouped K/V, factored embedding",
    )
    c.add_argument("checkpoint", help="run directory or checkpoint directory")
    c.add_argument("--out", required=True, help="directory for the compressed checkpoint")
    how = c.add_mutually_exclusive_group()
    how.add_argument("--ranks", help="head dimension per layer, e.g. 16,8")
    how.add_argument("--tolerance", type=float, help="allowed relative loss increase per layer")
    how.add_argument("--budget", type=int, help="attention budget to meet (measured plan)")
    c.add_argument("--curves", help="saturation.json of growformer analyze (else measured)")
    c.add_argument(
        "--kv-heads", help="key/value heads per layer (e.g. 4,2; one number for all layers)"
    )
    c.add_argument("--embed-rank", type=int, help="factor the token embedding to this width")
    _add_eval_data_flags(c)

    r = sub.add_parser("report", help="a run's HTML report (figures and summary)")
    r.add_argument("run", help="run directory (with summary.json)")
    r.add_argument("--out", help="directory for index.html and the figures (default: RUN/report)")

    x = sub.add_parser("export", help="a checkpoint to ONNX, checked with onnxruntime")
    x.add_argument("checkpoint", help="run directory or checkpoint directory")
    x.add_argument("--onnx", required=True, help="ONNX file to write")
    x.add_argument(
        "--check",
        type=int,
        default=100,
        help="inputs on which to compare onnxruntime with PyTorch (0: no check)",
    )
    x.add_argument(
        "--tolerance", type=float, default=1e-3, help="largest logit difference the check allows"
    )
    return parser


def _checkpoint_positional(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Set ``args.checkpoint`` (and ``args.genomes`` of assign) from the positional
    arguments, or from the older ``--checkpoint`` flag, which these commands still take."""
    flag = getattr(args, "checkpoint_flag", None)
    if args.command == "assign":
        if flag is None and len(args.paths) != 2:
            parser.error("assign takes CHECKPOINT GENOMES (or GENOMES --checkpoint CHECKPOINT)")
        if flag is not None and len(args.paths) != 1:
            parser.error("assign takes GENOMES alone when --checkpoint is given")
        args.checkpoint, args.genomes = (flag, *args.paths) if flag else args.paths
        return
    if flag is not None and args.checkpoint is not None:
        parser.error(f"{args.command}: give the checkpoint once, not also as --checkpoint")
    args.checkpoint = args.checkpoint or flag
    if args.checkpoint is None:
        parser.error(f"{args.command} needs a CHECKPOINT (run or checkpoint directory)")


def _add_eval_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        help="held-out data file (as for evaluate); default: the checkpoint task's validation "
        "split",
    )
    p.add_argument("--labels", help="CSV id,label for the records of a FASTA --data")
    p.add_argument("--batch-size", type=int, default=64)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "checkpoint_flag"):
        _checkpoint_positional(parser, args)
    try:
        commands = {
            "train": _train,
            "evaluate": _evaluate,
            "assign": _assign,
            "info": _info,
            "plan": _plan,
            "analyze": _analyze,
            "compress": _compress,
            "report": _report,
            "export": _export,
            "import": _import,
        }
        return commands[args.command](args)
    except (GrowformerError, OSError) as e:
        print(f"growformer: error: {e}", file=sys.stderr)
        return 2
    except TrainingStopped as e:
        print(f"growformer: {e}", file=sys.stderr)
        return 130


def _train(args: argparse.Namespace) -> int:
    if args.out is None and (args.resume or not args.print_config):
        raise ConfigError("train needs --out DIR, the run directory")
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
    summary = train(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    if Ranks.from_env().main:
        print(_outcome(summary, Path(args.out)), file=sys.stderr)
        print(json.dumps({k: summary[k] for k in ("task", "policy", "steps", "params", "metrics")}))
    return 0


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


def _evaluate(args: argparse.Namespace) -> int:
    ckpt = checkpoint.load(args.checkpoint)
    data, facts = _eval_data(ckpt, args)
    pad_id = Tokenizer.from_json(ckpt.tokenizer_json).pad_id
    metrics = evaluate(ckpt.model, data, batch_size=args.batch_size, pad_id=pad_id)
    print(json.dumps({**metrics, **facts}))
    return 0


def _eval_data(ckpt: checkpoint.Checkpoint, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The data of ``--data`` (and ``--labels``), encoded for ``ckpt``, and what the data's
    reader counted (records it could not score); without ``--data``, the validation split of
    the task the checkpoint was trained on."""
    if args.batch_size <= 0:
        raise ConfigError(f"--batch-size must be positive, got {args.batch_size}")
    spec = TASKS.get(ckpt.task["name"])  # None: a task this process has not registered
    labelled = spec.evaluate if spec is not None else None
    if args.labels is not None and labelled is None:
        raise ConfigError(
            f"--labels goes with FASTA data, but {args.checkpoint} was trained on task "
            f"{ckpt.task['name']!r}"
        )
    if args.data is None:
        return task_data(TrainConfig.from_dict(ckpt.config), ckpt).val, {}
    tokenizer = Tokenizer.from_json(ckpt.tokenizer_json)
    max_len = ckpt.model.arch.max_len
    if labelled is not None:
        if args.labels is None:
            raise ConfigError(f"{args.checkpoint} {labelled.usage}")
        return labelled.encode(tokenizer, ckpt.task, max_len, args.data, args.labels)
    if ckpt.model.arch.kind == "classifier":
        texts, labels = read_labeled(args.data)
        encoded = encode_classification(
            tokenizer,
            texts,
            labels,
            ckpt.task["label_names"],
            max_len,
            source=f"data file {args.data}",
        )
        return encoded, {}
    text = read_text(args.data)
    return encode_lm(tokenizer, text, max_len, source=f"text file {args.data}"), {}


def _assign(args: argparse.Namespace) -> int:
    summary = assign(
        checkpoint.load(args.checkpoint),
        args.genomes,
        args.out,
        reference=args.reference,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    ).to_dict()
    failed = ", ".join(f"{n} {why}" for why, n in summary["qc_failed_by_reason"].items())
    print(
        f"called {summary['called']} of {summary['genomes']} genomes in {summary['seconds']:.1f} s"
        f" ({summary['genomes_per_s']} genomes/s); QC failed {summary['qc_failed']}"
        + (f" ({failed})" if failed else "")
        + f"; wrote {args.out}",
        file=sys.stderr,
    )
    print(json.dumps(summary))
    return 0


def _measured_data(ckpt: checkpoint.Checkpoint, args: argparse.Namespace) -> Any:
    """`_eval_data` for the commands that measure a model on it: what the data's reader
    counted is said on standard error."""
    data, facts = _eval_data(ckpt, args)
    if facts:
        print(f"growformer: data {args.data}: {json.dumps(facts)}", file=sys.stderr)
    return data


def _import(args: argparse.Namespace) -> int:
    saved = import_checkpoint(args.source, args.out, num_labels=args.num_labels)
    ckpt = checkpoint.load(saved)
    arch, info = ckpt.model.arch, ckpt.task["info"]
    heads = [layer.heads for layer in arch.layers]
    print(
        f"imported {info['model_type']} from {info['source']}: {arch.kind}, "
        f"{ckpt.model.num_params():,} parameters, heads {heads}; new: "
        f"{', '.join(info['new_parameters']) or 'nothing'}"
    )
    print(f"wrote {saved}; fine-tune it with: growformer train --init {args.out} ...")
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
        + (f"  embed_rank {arch.embed_rank}" if arch.embed_rank else "")
    )
    print("layer  heads  head_dim  kv_heads  ffn_dim  loops  looped_heads")
    for n, layer in enumerate(arch.layers):
        looped = ",".join(map(str, layer.looped_heads)) or "-"
        kv = "-" if layer.kv_heads is None else layer.kv_heads
        print(
            f"{n:>5}  {layer.heads:>5}  {layer.head_dim:>8}  {kv:>8}  {layer.ffn_dim:>7}  "
            f"{layer.loops:>5}  {looped}"
        )
    return 0


def _plan(args: argparse.Namespace) -> int:
    curves = read_json(args.curves, "curves file") if args.curves else None
    base = Architecture.uniform(
        kind="causal_lm",
        d_model=args.d_model,
        vocab_size=1,  # set by the task when training
        max_len=args.seq,
        n_layers=args.layers,
        heads=1,
        head_dim=args.head_dim,
        ffn_dim=args.ffn_dim,
    )
    planned = allocation.plan(
        args.strategy,
        budget=args.budget,
        base=base,
        head_dim=args.head_dim,
        multiple=args.multiple,
        skew=args.skew,
        curves=curves,
    )
    print(f"strategy {args.strategy}  budget {args.budget}  layers {args.layers}  seq {args.seq}")
    print("layer  heads  head_dim  width  attention FLOPs/token")
    for n, layer in enumerate(planned.layers):
        fl = layer_components(planned.d_model, layer, args.seq)["attention"]
        print(f"{n:>5}  {layer.heads:>5}  {layer.head_dim:>8}  {layer.attn_dim:>5}  {fl:>20,}")
    if args.out:
        layers = planned.to_dict()["layers"]
        config = {"max_len": args.seq, "model": {"d_model": args.d_model, "layers": layers}}
        atomic_write_text(args.out, json.dumps(config, indent=2) + "\n")
        print(f"wrote {args.out} (use: growformer train --config {args.out} ...)")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    if args.batches <= 0:
        raise ConfigError(f"--batches must be positive, got {args.batches}")
    ckpt = checkpoint.load(args.checkpoint)
    data = _measured_data(ckpt, args)
    pad_id = Tokenizer.from_json(ckpt.tokenizer_json).pad_id
    batches = list(itertools.islice(eval_batches(data, args.batch_size, pad_id), args.batches))
    curves = allocation.saturation_curves(
        ckpt.model,
        batches,
        per_head=not args.layers_only,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "saturation.json", json.dumps(curves, indent=2))
    allocation.plot_curves(curves, out / "saturation.png")
    print(f"wrote {out / 'saturation.json'} and {out / 'saturation.png'}")
    return 0


def _compress(args: argparse.Namespace) -> int:
    ckpt = checkpoint.load(args.checkpoint)
    n = ckpt.model.arch.n_layers
    ranks = None if args.ranks is None else _int_list("--ranks", args.ranks, n)
    kv_heads = None if args.kv_heads is None else _int_list("--kv-heads", args.kv_heads, n)
    curves = read_json(args.curves, "curves file") if args.curves else None
    report = allocation.compress(
        ckpt,
        _measured_data(ckpt, args),
        args.out,
        ranks=ranks,
        tolerance=args.tolerance,
        budget=args.budget,
        curves=curves,
        kv_heads=kv_heads,
        embed_rank=args.embed_rank,
        batch_size=args.batch_size,
    )
    before, after = report["before"], report["after"]
    dims = [x["head_dim"] for x in before["architecture"]["layers"]]
    print(
        f"head dimensions {dims} -> {report['ranks']}; kv_heads {report['kv_heads']}; "
        f"embed_rank {report['embed_rank']}"
    )
    for key in ("params", "attention_budget", "forward_flops", "latency_s"):
        b, a = before[key], after[key]
        print(f"{key:>16}: {b:,.6g} -> {a:,.6g} ({100 * (a / b - 1):+.1f}%)")
    for key, b in before["metrics"].items():
        print(f"{key:>16}: {b:.6g} -> {after['metrics'][key]:.6g}")
    print(f"wrote {report['checkpoint']} and {Path(args.out) / 'compression.json'}")
    return 0


def _report(args: argparse.Namespace) -> int:
    print(write_report(args.run, args.out))
    return 0


def _export(args: argparse.Namespace) -> int:
    if args.check < 0:
        raise ConfigError(f"--check must be >= 0, got {args.check}")
    ckpt = checkpoint.load(args.checkpoint)
    start = time.perf_counter()
    path = export.export_onnx(ckpt.model, args.onnx, label_names=ckpt.task.get("label_names"))
    seconds = time.perf_counter() - start
    print(f"wrote {path} ({path.stat().st_size / 2**20:.2f} MiB) in {seconds:.1f} s")
    if not args.check:
        return 0
    batches, source = export.checkpoint_inputs(ckpt, args.check)
    diff = export.verify_onnx(ckpt.model, path, batches)
    print(
        f"max |onnxruntime - PyTorch| logit difference {diff:.3g} on {args.check} inputs: {source}"
    )
    if not diff <= args.tolerance:
        raise ExportError(
            f"{path} was written, but its logits differ from PyTorch's by {diff:.3g} "
            f"(--tolerance {args.tolerance:g})"
        )
    return 0


def _int_list(flag: str, text: str, n_layers: int) -> list[int]:
    """Comma-separated integers, one per layer; a single number means every layer."""
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag} must be integers separated by commas, got {text!r}") from None
    return values * n_layers if len(values) == 1 else values


if __name__ == "__main__":
    sys.exit(main())
