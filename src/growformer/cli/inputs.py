"""What several commands take alike: a checkpoint (positional, or the older
``--checkpoint`` flag), held-out data for a checkpoint, and per-layer integer lists."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from growformer import checkpoint
from growformer.data import (
    TASKS,
    Tokenizer,
    encode_classification,
    encode_lm,
    read_labeled,
    read_text,
)
from growformer.errors import ConfigError
from growformer.training.config import TrainConfig
from growformer.training.setup import task_data


def add_checkpoint_flag(parser: argparse.ArgumentParser) -> None:
    """The checkpoint's older form, ``--checkpoint``, which some commands still take."""
    parser.add_argument("--checkpoint", dest="checkpoint_flag", help="the checkpoint")


def resolve_checkpoint(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Set ``args.checkpoint`` (and ``args.genomes`` of assign) from the positional
    arguments, or from the older ``--checkpoint`` flag."""
    flag = args.checkpoint_flag
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


def add_eval_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        help="held-out data file (as for evaluate); default: the checkpoint task's validation "
        "split",
    )
    parser.add_argument("--labels", help="CSV id,label for the records of a FASTA --data")
    parser.add_argument("--batch-size", type=int, default=64)


def eval_data(ckpt: checkpoint.Checkpoint, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
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


def measured_data(ckpt: checkpoint.Checkpoint, args: argparse.Namespace) -> Any:
    """:func:`eval_data` for the commands that measure a model on it: what the data's reader
    counted is said on standard error."""
    data, facts = eval_data(ckpt, args)
    if facts:
        print(f"growformer: data {args.data}: {json.dumps(facts)}", file=sys.stderr)
    return data


def int_list(flag: str, text: str, n_layers: int) -> list[int]:
    """Comma-separated integers, one per layer; a single number means every layer."""
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag} must be integers separated by commas, got {text!r}") from None
    return values * n_layers if len(values) == 1 else values
