"""The task registry: `TASKS` by name, `register_task` to add one, `load_task` to load one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from growformer.data.tasks import file, lm, proteins, sarscov2, sst2, synthetic
from growformer.data.tasks.common import int_option
from growformer.data.tasks.spec import FILE_INPUTS, TaskData, TaskRequest, TaskSpec
from growformer.data.tokenizer import Tokenizer
from growformer.errors import ConfigError

TASKS: dict[str, TaskSpec] = {
    "sst2": sst2.SST2,
    "retrieval": synthetic.RETRIEVAL,
    "channels": synthetic.CHANNELS,
    "lm": lm.LM,
    "file": file.FILE,
    "sarscov2": sarscov2.SARSCOV2,
    "fasta": proteins.FASTA,
}
"""Every task `load_task` knows, by name. A plain dict: a test may add a task for its own
duration with `monkeypatch.setitem(TASKS, name, spec)`."""


def register_task(name: str, spec: TaskSpec, *, replace: bool = False) -> None:
    """Make a task loadable by name: by `load_task`, `TrainConfig(task=name)` and `train`.

    The registration lasts as long as the process: a command line run (`growformer
    train --task NAME`) knows only the tasks registered by the code it imports. Evaluating a
    checkpoint of a task that is not registered still works with new data (`--data FILE`).

    Args:
        name: Task name.
        spec: The task: its loader, options and inputs.
        replace: Replace a task already registered under `name` (else that is an error).

    Raises:
        ConfigError: `name` is empty or taken, or `spec` names an input `load_task` lacks.
        TypeError: `spec` is not a `TaskSpec`.
    """
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"task '{name}': spec must be a TaskSpec, got {type(spec).__name__}")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"a task name must be a non-empty string, got {name!r}")
    if name in TASKS and not replace:
        raise ConfigError(f"task '{name}' is already registered; pass replace=True to replace it")
    unknown = sorted(set(spec.files) - set(FILE_INPUTS))
    if unknown:
        raise ConfigError(
            f"task '{name}': files {unknown} are not inputs of load_task "
            f"(valid: {', '.join(FILE_INPUTS)})"
        )
    TASKS[name] = spec


def load_task(
    name: str,
    *,
    data_dir: str | Path | None = None,
    data_file: str | Path | None = None,
    labels_file: str | Path | None = None,
    seed: int = 0,
    max_len: int = 128,
    vocab_size: int = 8000,
    options: dict[str, Any] | None = None,
    tokenizer: Tokenizer | None = None,
    train_data: Any = None,
    val_data: Any = None,
) -> TaskData:
    """Load, tokenize and split a task.

    Tasks (see `TASKS`; each spec documents its task and lists its options and defaults):
    "sst2" (GLUE SST-2), "retrieval" and "channels" (synthetic, with a known answer), "lm"
    (Python source files: the stdlib, or `data_dir`), "file" (a user TSV/CSV `data_file`),
    "sarscov2" (the genomes of the pangoLEARN lineage tree as genome-wide mutations, or
    their spike proteins, labelled by WHO variant or Pango lineage), "fasta" (a user's
    spike proteins or aligned genomes in `data_file`, labels in `labels_file`), and any
    added with `register_task`.

    Args:
        name: Task name.
        data_dir: Directory with the task's files (sst2, lm, sarscov2).
        data_file: Labelled table (file) or FASTA file (fasta).
        labels_file: CSV with columns `id,label` for the FASTA records (fasta).
        seed: Seed for generated data and random splits.
        max_len: Longest classification input (`[CLS]` included); the LM block size. The
            genome and protein tasks fail rather than truncate sequences longer than this.
        vocab_size: Target BPE vocabulary size (retrieval, sarscov2 and fasta have mutation,
            residue or k-mer vocabularies).
        options: Task options overriding the defaults.
        tokenizer: Encode with this tokenizer instead of training one (a pretrained
            model's, or yours); text tasks only (sst2, file, lm).
        train_data: Your records instead of the task's files: labelled (task "file") or
            text (task "lm"); held or streamed (see `growformer.data.tasks.records`).
        val_data: Your validation records (with `train_data`).

    Returns:
        The task, with its tokenizer trained on the training split only.

    Raises:
        ConfigError: Unknown task or option, bad option value, or inputs the task cannot use.
        DataError: The data is missing or unusable.
    """
    if name not in TASKS:
        raise ConfigError(f"unknown task '{name}' (valid: {', '.join(sorted(TASKS))})")
    spec = TASKS[name]
    valid = spec.options
    opts = dict(valid)
    for key, value in (options or {}).items():
        if key not in valid:
            raise ConfigError(
                f"unknown option '{key}' for task '{name}' "
                f"(valid: {', '.join(sorted(valid)) or 'none'})"
            )
        opts[key] = value
    if data_dir is not None and "data_dir" not in spec.files:
        raise ConfigError(f"task '{name}' takes no data directory (got {data_dir})")
    if data_file is not None and "data_file" not in spec.files:
        raise ConfigError(f"task '{name}' takes no data file (got {data_file}); use task 'file'")
    if labels_file is not None and "labels_file" not in spec.files:
        raise ConfigError(f"task '{name}' takes no labels file (got {labels_file}); use 'fasta'")
    if tokenizer is not None and not spec.takes_tokenizer:
        raise ConfigError(
            f"task '{name}' builds a vocabulary of its own: it cannot encode with a "
            "pretrained model's tokenizer (text tasks can: "
            f"{', '.join(sorted(n for n, s in TASKS.items() if s.takes_tokenizer))})"
        )
    if train_data is None and val_data is not None:
        raise ConfigError("val_data needs train_data")
    if train_data is not None:
        if not spec.takes_records:
            raise ConfigError(
                f"task '{name}' reads its own data; your records go to task 'file' (labelled) "
                "or 'lm' (text)"
            )
        if data_dir is not None or data_file is not None:
            raise ConfigError(f"task '{name}': pass train_data or data files, not both")
    max_len = int_option(name, "max_len", max_len, 2)
    request = TaskRequest(
        name=name,
        options=opts,
        seed=seed,
        max_len=max_len,
        vocab_size=vocab_size,
        data_dir=data_dir,
        data_file=data_file,
        labels_file=labels_file,
        tokenizer=tokenizer,
        train_records=train_data,
        val_records=val_data,
    )
    return spec.load(request)
