"""Commands that run a trained model on data: ``evaluate`` (metrics on a labelled file) and
``assign`` (SARS-CoV-2 lineage calls for genomes)."""

from __future__ import annotations

import argparse
import json
import sys

from growformer import checkpoint
from growformer.assign import assign
from growformer.cli.inputs import add_checkpoint_flag, eval_data
from growformer.data import Tokenizer
from growformer.evaluation import evaluate


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    e = sub.add_parser("evaluate", help="evaluate a checkpoint on a data file; prints JSON")
    e.add_argument("checkpoint", nargs="?", help="run directory or checkpoint directory")
    e.add_argument(
        "--data",
        required=True,
        help="labelled TSV/CSV or FASTA (with --labels) for a classifier, text file for an LM",
    )
    e.add_argument("--labels", help="CSV id,label for the records of a FASTA --data")
    e.add_argument("--batch-size", type=int, default=64)
    add_checkpoint_flag(e)
    e.set_defaults(execute=_evaluate)

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
    add_checkpoint_flag(g)
    g.add_argument("--out", required=True, help="CSV file of calls, one row per genome")
    g.add_argument("--reference", help="MN908947.3 FASTA (default: the one trained with)")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.set_defaults(execute=_assign)


def _evaluate(args: argparse.Namespace) -> int:
    ckpt = checkpoint.load(args.checkpoint)
    data, facts = eval_data(ckpt, args)
    pad_id = Tokenizer.from_json(ckpt.tokenizer_json).pad_id
    metrics = evaluate(ckpt.model, data, batch_size=args.batch_size, pad_id=pad_id)
    print(json.dumps({**metrics, **facts}))
    return 0


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
