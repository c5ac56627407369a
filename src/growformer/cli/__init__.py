"""Command line: ``growformer train | evaluate | assign | import | info | report | export |
plan | analyze | compress``.

Each module of this package adds its commands to the parser (``add_commands``) and gives
each the function that runs it; a new group of commands is one module and one line in
:data:`COMMANDS`. User errors (bad files, configs, flags, checkpoints) end with one
``growformer: error:`` line on standard error and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from growformer.cli import allocate, checkpoints, evaluate, train
from growformer.cli.inputs import resolve_checkpoint
from growformer.errors import GrowformerError
from growformer.training.runtime import TrainingStopped
from growformer.version import __version__

# In the order of the help text: training, using a model, checkpoints, sizing.
COMMANDS = (train, evaluate, checkpoints, allocate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="growformer", description="Transformers that determine their own architecture."
    )
    parser.add_argument("--version", action="version", version=f"growformer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMANDS:
        group.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "checkpoint_flag"):
        resolve_checkpoint(parser, args)
    try:
        return args.execute(args)
    except (GrowformerError, OSError) as e:
        print(f"growformer: error: {e}", file=sys.stderr)
        return 2
    except TrainingStopped as e:
        print(f"growformer: {e}", file=sys.stderr)
        return 130
