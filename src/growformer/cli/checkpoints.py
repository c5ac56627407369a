"""Commands on a checkpoint as it stands: ``import`` (a transformers model into one),
``info``, ``report`` and ``export`` (to ONNX)."""

from __future__ import annotations

import argparse
import json
import time

from growformer import checkpoint, export
from growformer.errors import ConfigError, ExportError
from growformer.hf.convert import import_checkpoint
from growformer.report import write_report


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    m.set_defaults(execute=_import)

    i = sub.add_parser("info", help="print a checkpoint's architecture")
    i.add_argument("checkpoint", help="run directory or checkpoint directory")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    i.set_defaults(execute=_info)

    r = sub.add_parser("report", help="a run's HTML report (figures and summary)")
    r.add_argument("run", help="run directory (with summary.json)")
    r.add_argument("--out", help="directory for index.html and the figures (default: RUN/report)")
    r.set_defaults(execute=_report)

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
    x.set_defaults(execute=_export)


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
