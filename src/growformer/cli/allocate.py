"""Commands that size attention: ``plan`` (heads and head dimensions for a budget),
``analyze`` (held-out loss against head dimension kept) and ``compress``."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from growformer import allocation, checkpoint
from growformer.allocation import STRATEGIES
from growformer.arch import Architecture
from growformer.cli.inputs import add_eval_data_flags, int_list, measured_data
from growformer.data import Tokenizer, eval_batches
from growformer.errors import ConfigError, read_json
from growformer.flops import layer_components
from growformer.fsutil import atomic_write_text


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    p.set_defaults(execute=_plan)

    a = sub.add_parser("analyze", help="held-out loss against head dimension kept")
    a.add_argument("checkpoint", help="run directory or checkpoint directory")
    a.add_argument("--out", required=True, help="directory for saturation.json and .png")
    add_eval_data_flags(a)
    a.add_argument("--batches", type=int, default=8, help="held-out batches per evaluation")
    a.add_argument("--layers-only", action="store_true", help="skip the single-head curves")
    a.set_defaults(execute=_analyze)

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
    add_eval_data_flags(c)
    c.set_defaults(execute=_compress)


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
    data = measured_data(ckpt, args)
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
    ranks = None if args.ranks is None else int_list("--ranks", args.ranks, n)
    kv_heads = None if args.kv_heads is None else int_list("--kv-heads", args.kv_heads, n)
    curves = read_json(args.curves, "curves file") if args.curves else None
    report = allocation.compress(
        ckpt,
        measured_data(ckpt, args),
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
