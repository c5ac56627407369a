"""Named tasks: SST-2, synthetic retrieval and channel tasks, a Python-source LM corpus,
user files."""

from __future__ import annotations

import itertools
import os
import sysconfig
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from growformer.data import sarscov2
from growformer.data.datasets import ClassificationData, LMData
from growformer.data.files import label_vocab, read_labeled, read_utf8
from growformer.data.tokenizer import Tokenizer
from growformer.errors import ConfigError, DataError

# Tasks whose examples are spike proteins (encoded by `encode_spikes`).
SPIKE_TASKS = frozenset({"sarscov2", "fasta"})

# Label rules of the retrieval task.
RETRIEVAL_LABELS = ("sum_mod", "count", "tuple")
# More classes than this cannot be a classifier's output layer (nor listed as label names).
MAX_TUPLE_LABELS = 1 << 20

# Default value of every option each task accepts; anything else is a ConfigError.
TASK_OPTIONS: dict[str, dict[str, Any]] = {
    "sst2": {"train_limit": None},
    "retrieval": {
        "k": 2,
        "seq_len": 32,
        "symbols": 16,
        "label": "sum_mod",
        "num_labels": None,
        "n_train": 20_000,
        "n_val": 2_000,
    },
    "channels": {
        "k": 4,
        "max_count": 4,
        "distractors": 16,
        "seq_len": None,
        "n_train": 20_000,
        "n_val": 2_000,
    },
    "lm": {"max_chars": 4_000_000, "val_fraction": 0.05},
    "file": {"val_fraction": 0.1, "val_file": None},
    "sarscov2": {
        "label": "who",
        "top_lineages": 20,
        "test_fraction": 0.2,
        "dedup": True,
        "kmer": 1,
        "sites": "all",
        "min_site_count": 1,
        "reference": None,
        "alias_key": None,
        "cache_dir": None,
    },
    "fasta": {
        "test_fraction": 0.2,
        "dedup": True,
        "kmer": 1,
        "sites": "all",
        "min_site_count": 1,
        "skip_bad": False,
    },
}

_SST2_HELP = (
    "pass --data-dir DIR with GLUE SST-2 train.tsv and dev.tsv (or set GROWFORMER_SST2_DIR)"
)
# Test suites and installed packages are not representative library code.
_STDLIB_SKIP_DIRS = frozenset({"site-packages", "test", "tests"})


@dataclass
class TaskData:
    """A loaded task: encoded splits plus what a model needs to be built for it.

    Args:
        name: Task name as given to `load_task`.
        kind: "classification" or "lm".
        train: Training split.
        val: Validation split.
        tokenizer: Tokenizer fitted on the training split.
        num_labels: Number of classes (None for LM).
        label_names: Class `i` is `label_names[i]` (None for LM).
        max_len: Longest input sequence of the task (positions a model must support).
        info: Task-specific facts, e.g. the retrieval positions or the LM file split.
    """

    name: str
    kind: str
    train: ClassificationData | LMData
    val: ClassificationData | LMData
    tokenizer: Tokenizer
    num_labels: int | None
    label_names: list[str] | None
    max_len: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        """Vocabulary size of the task's tokenizer."""
        return self.tokenizer.vocab_size


def encode_classification(
    tokenizer: Tokenizer,
    texts: list[str],
    raw_labels: list[str],
    label_names: list[str],
    max_len: int,
    *,
    source: str = "data",
) -> ClassificationData:
    """Encode labelled texts with `[CLS]` first, truncated to `max_len` ids.

    Args:
        tokenizer: Tokenizer to encode with.
        texts: One text per example.
        raw_labels: One label name per example.
        label_names: Known labels; example label index = position in this list.
        max_len: Maximum ids per example, `[CLS]` included.
        source: What error messages call the data, e.g. "data file /x/dev.tsv".

    Returns:
        The encoded data.

    Raises:
        DataError: There are no examples, or a label is not in `label_names`.
    """
    if len(texts) != len(raw_labels):
        raise ValueError(f"{len(texts)} texts but {len(raw_labels)} labels")
    if not texts:
        raise DataError(f"{source} has no examples")
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted(set(raw_labels) - index.keys())
    if unknown:
        raise DataError(
            f"{source} has label(s) {', '.join(repr(u) for u in unknown[:5])} not among the "
            f"known labels ({', '.join(label_names)})"
        )
    ids = tokenizer.encode(texts, add_cls=True, max_len=max_len)
    labels = torch.tensor([index[r] for r in raw_labels], dtype=torch.long)
    return ClassificationData(ids=ids, labels=labels)


def encode_spikes(
    tokenizer: Tokenizer,
    sequences: list[str],
    raw_labels: list[str],
    label_names: list[str],
    info: dict[str, Any],
    max_len: int,
    *,
    source: str = "data",
) -> ClassificationData:
    """Encode spike proteins as a `sarscov2` or `fasta` task encoded its training data.

    Args:
        tokenizer: The task's tokenizer.
        sequences: One protein per example.
        raw_labels: One label name per example.
        label_names: Known labels; example label index = position in this list.
        info: The task's `info` (its sites and k-mer size).
        max_len: Maximum ids per example, `[CLS]` included.
        source: What error messages call the data.
    """
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted(set(raw_labels) - index.keys())
    if unknown:
        raise DataError(
            f"{source}: labels {unknown[:5]} were not among the model's labels {label_names}"
        )
    sites = None
    if info.get("variable_sites") is not None:
        sites = [i - 1 for i in info["variable_sites"]]
        short = [len(s) for s in sequences if len(s) <= sites[-1]]
        if short:
            raise DataError(
                f"{source}: a sequence of {short[0]} residues lacks site {sites[-1] + 1}, "
                "which the model reads"
            )
    tokens = [sarscov2.spike_tokens(s, sites, info["kmer"]) for s in sequences]
    ids = tokenizer.encode_words(tokens, add_cls=True)
    longest = max(map(len, ids), default=0)
    if longest > max_len:
        raise DataError(f"{source}: a sequence needs {longest} positions; the model has {max_len}")
    labels = torch.tensor([index[y] for y in raw_labels], dtype=torch.long)
    return ClassificationData(ids=ids, labels=labels)


def encode_lm(
    tokenizer: Tokenizer, text: str | Sequence[str], block: int, *, source: str = "text"
) -> LMData:
    """Encode text as one token stream, each document followed by `[EOS]`.

    Args:
        tokenizer: Tokenizer to encode with.
        text: One document, or a sequence of documents.
        block: Context length of an example.
        source: What error messages call the text, e.g. "text file /x/eval.txt".

    Returns:
        The encoded stream.

    Raises:
        DataError: The text yields fewer than `block + 1` tokens (not a single example).
    """
    docs = [text] if isinstance(text, str) else list(text)
    encoded = tokenizer.encode(docs, add_cls=False, max_len=None)
    stream = list(itertools.chain.from_iterable([*ids, tokenizer.eos_id] for ids in encoded))
    if len(stream) < block + 1:
        raise DataError(
            f"{source} has only {len(stream)} tokens, fewer than one example of {block + 1}"
        )
    return LMData(tokens=torch.tensor(stream, dtype=torch.long), block=block)


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
) -> TaskData:
    """Load, tokenize and split a task.

    Tasks: "sst2" (GLUE SST-2 from `data_dir`, $GROWFORMER_SST2_DIR or Hugging Face
    `datasets`), "retrieval" (synthetic: the label is read off the symbols at k hidden
    positions: their sum modulo `num_labels`; with `label="count"` how many of them
    fall in their position's own random half of the alphabet; with `label="tuple"` the
    ordered k-tuple itself, symbols^k classes, which needs every position read apart),
    "channels" (synthetic, a known head requirement: k channels, each a vote between two
    token kinds repeated 1 to `max_count` times at random places among distractor
    tokens; the label is the k majorities, 2^k classes; see `_channels`),
    "lm" (Python source files: the stdlib, or `data_dir`), "file" (a user TSV/CSV
    `data_file`), "sarscov2" (spike proteins of the pangoLEARN lineage tree in `data_dir`,
    $GROWFORMER_SARSCOV2_DIR or the Debian package's directory, labelled by WHO variant or
    Pango lineage), "fasta" (a user's spike proteins or aligned genomes in `data_file`,
    labels in `labels_file`). See `TASK_OPTIONS` for each task's options and defaults.

    Args:
        name: Task name.
        data_dir: Directory with the task's files (sst2, lm, sarscov2).
        data_file: Labelled table (file) or FASTA file (fasta).
        labels_file: CSV with columns `id,label` for the FASTA records (fasta).
        seed: Seed for generated data and random splits.
        max_len: Longest classification input (`[CLS]` included); the LM block size. The
            protein tasks fail rather than truncate sequences longer than this.
        vocab_size: Target BPE vocabulary size (retrieval, sarscov2 and fasta have residue or
            k-mer vocabularies).
        options: Task options overriding the defaults.

    Returns:
        The task, with its tokenizer trained on the training split only.

    Raises:
        ConfigError: Unknown task or option, bad option value, or inputs the task cannot use.
        DataError: The data is missing or unusable.
    """
    if name not in TASK_OPTIONS:
        raise ConfigError(f"unknown task '{name}' (valid: {', '.join(sorted(TASK_OPTIONS))})")
    valid = TASK_OPTIONS[name]
    opts = dict(valid)
    for key, value in (options or {}).items():
        if key not in valid:
            raise ConfigError(
                f"unknown option '{key}' for task '{name}' "
                f"(valid: {', '.join(sorted(valid)) or 'none'})"
            )
        opts[key] = value
    if data_dir is not None and name not in ("sst2", "lm", "sarscov2"):
        raise ConfigError(f"task '{name}' takes no data directory (got {data_dir})")
    if data_file is not None and name not in ("file", "fasta"):
        raise ConfigError(f"task '{name}' takes no data file (got {data_file}); use task 'file'")
    if labels_file is not None and name != "fasta":
        raise ConfigError(f"task '{name}' takes no labels file (got {labels_file}); use 'fasta'")
    max_len = _int(name, "max_len", max_len, 2)
    if name == "sst2":
        return _sst2(data_dir, opts, max_len, vocab_size)
    if name == "retrieval":
        return _retrieval(opts, seed, max_len)
    if name == "channels":
        return _channels(opts, seed, max_len)
    if name == "lm":
        return _lm(data_dir, opts, max_len, vocab_size)
    if name == "sarscov2":
        return _sarscov2(data_dir, opts, seed, max_len)
    if name == "fasta":
        return _fasta(data_file, labels_file, opts, seed, max_len)
    return _file(data_file, opts, seed, max_len, vocab_size)


def _int(task: str, key: str, value: Any, minimum: int) -> int:
    # Options may arrive as strings from a command line.
    n = None
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        n = int(value)
    if n is None or n < minimum:
        raise ConfigError(f"task '{task}': {key} must be an integer >= {minimum}, got {value!r}")
    return n


def _fraction(task: str, key: str, value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = float("nan")  # fails the range check below
    if isinstance(value, bool) or not 0.0 < x < 1.0:
        raise ConfigError(f"task '{task}': {key} must be a number in (0, 1), got {value!r}")
    return x


def _path(task: str, key: str, value: Any) -> str | os.PathLike | None:
    if (
        value is None
        or isinstance(value, os.PathLike)
        or (isinstance(value, str) and value.strip())
    ):
        return value
    raise ConfigError(f"task '{task}': {key} must be a file or directory path, got {value!r}")


def _bool(task: str, key: str, value: Any) -> bool:
    # Options may arrive as strings from a command line.
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(f"task '{task}': {key} must be true or false, got {value!r}")


def _classification(
    name: str,
    train: tuple[list[str], list[str]],
    val: tuple[list[str], list[str]],
    label_names: list[str],
    *,
    max_len: int,
    vocab_size: int,
    sources: tuple[str, str],
    info: dict[str, Any],
) -> TaskData:
    if len(label_names) < 2:
        raise DataError(f"{sources[0]} has a single label {label_names!r}; need at least two")
    tokenizer = Tokenizer.train(train[0], vocab_size)
    return TaskData(
        name=name,
        kind="classification",
        train=encode_classification(tokenizer, *train, label_names, max_len, source=sources[0]),
        val=encode_classification(tokenizer, *val, label_names, max_len, source=sources[1]),
        tokenizer=tokenizer,
        num_labels=len(label_names),
        label_names=label_names,
        max_len=max_len,
        info=info,
    )


def _sst2(
    data_dir: str | Path | None, opts: dict[str, Any], max_len: int, vocab_size: int
) -> TaskData:
    limit = opts["train_limit"]
    limit = None if limit is None else _int("sst2", "train_limit", limit, 1)
    data_dir = data_dir if data_dir is not None else os.environ.get("GROWFORMER_SST2_DIR")
    if data_dir is not None:
        train_path, val_path = Path(data_dir) / "train.tsv", Path(data_dir) / "dev.tsv"
        train, val = read_labeled(train_path), read_labeled(val_path)
        sources = (f"data file {train_path}", f"data file {val_path}")
    else:
        train, val = _sst2_from_hub()
        sources = ("SST-2 training split", "SST-2 validation split")
    train = (train[0][:limit], train[1][:limit])
    return _classification(
        "sst2",
        train,
        val,
        label_vocab(train[1] + val[1]),
        max_len=max_len,
        vocab_size=vocab_size,
        sources=sources,
        info={"source": str(data_dir) if data_dir is not None else "huggingface:glue/sst2"},
    )


def _sst2_from_hub() -> tuple[tuple[list[str], list[str]], tuple[list[str], list[str]]]:
    try:
        from datasets import load_dataset
    except ImportError as e:
        raise DataError(f"SST-2 not found and `datasets` is not installed: {_SST2_HELP}") from e
    try:
        ds = load_dataset("glue", "sst2")
    except Exception as e:  # offline, hub errors, cache corruption: all mean "not available"
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise DataError(f"SST-2 could not be downloaded ({reason}): {_SST2_HELP}") from e

    def split(s: str) -> tuple[list[str], list[str]]:
        return [t.strip() for t in ds[s]["sentence"]], [str(y) for y in ds[s]["label"]]

    return split("train"), split("validation")


def _generated(
    name: str,
    make: Callable[[int], ClassificationData],
    n_train: int,
    n_val: int,
    **fields: Any,
) -> TaskData:
    """A generated classification task; ``make(n)`` draws n examples, training split first
    (so a seed gives the same splits)."""
    train = make(n_train)
    return TaskData(name=name, kind="classification", train=train, val=make(n_val), **fields)


def _retrieval(opts: dict[str, Any], seed: int, max_len: int) -> TaskData:
    seq_len = _int("retrieval", "seq_len", opts["seq_len"], 1)
    k = _int("retrieval", "k", opts["k"], 1)
    if k > seq_len:
        raise ConfigError(f"task 'retrieval': k={k} exceeds seq_len={seq_len}")
    if max_len < seq_len + 1:
        raise ConfigError(
            f"task 'retrieval': max_len {max_len} is shorter than seq_len+1 = {seq_len + 1}"
        )
    symbols = _int("retrieval", "symbols", opts["symbols"], 2)
    rule = opts["label"]
    if rule not in RETRIEVAL_LABELS:
        raise ConfigError(
            f"task 'retrieval': label must be one of {', '.join(RETRIEVAL_LABELS)}, got {rule!r}"
        )
    if rule == "tuple" and symbols**k > MAX_TUPLE_LABELS:
        raise ConfigError(
            f"task 'retrieval': label 'tuple' with symbols={symbols}, k={k} has symbols^k "
            f"classes, more than {MAX_TUPLE_LABELS:,}"
        )
    fixed = {"count": (k + 1, "k+1"), "tuple": (symbols**k, "symbols^k")}
    num_labels = fixed[rule][0] if rule in fixed else 2
    if opts["num_labels"] is not None:
        num_labels = _int("retrieval", "num_labels", opts["num_labels"], 2)
        if rule in fixed and num_labels != fixed[rule][0]:
            raise ConfigError(
                f"task 'retrieval': label '{rule}' has {fixed[rule][1]} = {fixed[rule][0]} "
                f"classes, not num_labels={num_labels}"
            )
    n_train = _int("retrieval", "n_train", opts["n_train"], 1)
    n_val = _int("retrieval", "n_val", opts["n_val"], 1)

    gen = torch.Generator().manual_seed(seed)
    positions = torch.randperm(seq_len, generator=gen)[:k].sort().values
    tokenizer = Tokenizer.word_level([f"s{i}" for i in range(symbols)])
    # Each position marks its own random half of the alphabet, so a symbol counts or not
    # depending on where it stands: a head that averages two positions cannot tell.
    marks = torch.stack([torch.randperm(symbols, generator=gen) < symbols // 2 for _ in range(k)])

    def make(n: int) -> ClassificationData:
        seqs = torch.randint(symbols, (n, seq_len), generator=gen)
        texts = [" ".join(f"s{i}" for i in row) for row in seqs.tolist()]
        picked = seqs[:, positions]
        if rule == "count":
            labels = marks[torch.arange(k), picked].sum(dim=1)
        elif rule == "tuple":
            labels = (picked * symbols ** torch.arange(k)).sum(dim=1)
        else:
            labels = picked.sum(dim=1) % num_labels
        return ClassificationData(tokenizer.encode(texts, add_cls=True, max_len=None), labels)

    return _generated(
        "retrieval",
        make,
        n_train,
        n_val,
        tokenizer=tokenizer,
        num_labels=num_labels,
        label_names=[str(i) for i in range(num_labels)],
        # Sequences have a fixed length, so that is all the positions a model needs.
        max_len=seq_len + 1,
        info={
            "positions": positions.tolist(),
            "k": k,
            "seq_len": seq_len,
            "symbols": symbols,
            "label": rule,
            **({"marks": marks.int().tolist()} if rule == "count" else {}),
        },
    )


def _channels(opts: dict[str, Any], seed: int, max_len: int) -> TaskData:
    """k channels: channel c is ``m0`` tokens ``c{c}-`` and ``m1`` tokens ``c{c}+``
    (``m0 != m1``, each uniform in 1..max_count), scattered among distractor tokens; its
    vote is ``m1 > m0`` and the label is the k votes (bit c = channel c).

    A head reads a vote by attending to its channel's two token kinds alike and giving
    them values of opposite sign; the counts vary, so a one-dimensional head that mixes
    two channels cannot tell their votes apart. Measured with ``head_dim`` 1 (1 layer,
    3 seeds, ``benchmarks/known_heads.py``): k-1 heads fail and k heads solve it, so the
    task's head requirement is k.
    """
    k = _int("channels", "k", opts["k"], 1)
    if 2**k > MAX_TUPLE_LABELS:
        raise ConfigError(f"task 'channels': k={k} has 2^k classes, more than {MAX_TUPLE_LABELS:,}")
    most = _int("channels", "max_count", opts["max_count"], 2)
    distractors = _int("channels", "distractors", opts["distractors"], 1)
    room = 2 * most * k  # the most channel tokens a sequence can hold
    seq_len = (
        room + 8 if opts["seq_len"] is None else _int("channels", "seq_len", opts["seq_len"], 1)
    )
    if seq_len < room:
        raise ConfigError(
            f"task 'channels': seq_len {seq_len} cannot hold 2 * max_count * k = {room} "
            "channel tokens"
        )
    if max_len < seq_len + 1:
        raise ConfigError(
            f"task 'channels': max_len {max_len} is shorter than seq_len+1 = {seq_len + 1}"
        )
    n_train = _int("channels", "n_train", opts["n_train"], 1)
    n_val = _int("channels", "n_val", opts["n_val"], 1)
    names = [
        f"{kind}{i}{sign}"
        for kind, n in (("c", k), ("d", distractors))
        for i in range(n)
        for sign in "-+"
    ]
    tokenizer = Tokenizer.word_level(names)
    gen = torch.Generator().manual_seed(seed)

    def make(n: int) -> ClassificationData:
        m0 = torch.randint(1, most + 1, (n, k), generator=gen)
        m1 = torch.randint(1, most, (n, k), generator=gen)
        m1 += (m1 >= m0).long()  # uniform over 1..max_count except m0
        counts = torch.stack([m0, m1], 2)  # (n, k, side)
        # Every channel token a sequence could hold, and which of them it does hold.
        kinds = torch.arange(2 * k).view(k, 2, 1).expand(k, 2, most).reshape(-1)
        held = (torch.arange(most) < counts.unsqueeze(-1)).reshape(n, -1)
        noise = 2 * k + torch.randint(2 * distractors, (n, seq_len), generator=gen)
        pool = torch.cat([kinds.expand(n, -1), noise], 1)
        # Held channel tokens first, then distractors to fill the sequence, then shuffled.
        rank = torch.cat([torch.where(held, 0, 2), torch.ones_like(noise)], 1)
        picked = pool.gather(1, rank.argsort(dim=1, stable=True)[:, :seq_len])
        seqs = picked.gather(1, torch.rand(n, seq_len, generator=gen).argsort(1))
        texts = [" ".join(names[i] for i in row) for row in seqs.tolist()]
        votes = (m1 > m0).long()
        labels = (votes * 2 ** torch.arange(k)).sum(1)
        return ClassificationData(tokenizer.encode(texts, add_cls=True, max_len=None), labels)

    return _generated(
        "channels",
        make,
        n_train,
        n_val,
        tokenizer=tokenizer,
        num_labels=2**k,
        # Channel 0's vote first: "+-" is channel 0 for, channel 1 against.
        label_names=["".join("+" if c >> i & 1 else "-" for i in range(k)) for c in range(2**k)],
        max_len=seq_len + 1,
        info={"k": k, "max_count": most, "distractors": distractors, "seq_len": seq_len},
    )


def _find_files(root: Path, suffixes: tuple[str, ...], skip_dirs: frozenset[str]) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip_dirs]  # prune, don't just filter
        found += [Path(dirpath, f) for f in filenames if f.endswith(suffixes)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _lm_documents(
    data_dir: str | Path | None, max_chars: int
) -> tuple[Path, list[tuple[str, str]]]:
    """(root, [(relative path, text)]) in sorted path order, until max_chars is reached."""
    if data_dir is None:
        root = Path(sysconfig.get_paths()["stdlib"])
        paths = _find_files(root, (".py",), _STDLIB_SKIP_DIRS)
    else:
        root = Path(data_dir)
        if not root.is_dir():
            raise DataError(f"LM data directory {root} does not exist or is not a directory")
        paths = _find_files(root, (".py", ".txt"), frozenset())
    docs: list[tuple[str, str]] = []
    total = 0
    for path in paths:
        if total >= max_chars:
            break
        try:
            text = read_utf8(path, "LM data file")
        except DataError:
            if data_dir is not None:
                raise
            continue  # an unreadable stdlib file is simply left out of the corpus
        if text.strip():
            docs.append((path.relative_to(root).as_posix(), text))
            total += len(text)
    return root, docs


def _lm(data_dir: str | Path | None, opts: dict[str, Any], block: int, vocab_size: int) -> TaskData:
    max_chars = _int("lm", "max_chars", opts["max_chars"], 1)
    val_fraction = _fraction("lm", "val_fraction", opts["val_fraction"])
    root, docs = _lm_documents(data_dir, max_chars)
    # Split by file on a hash of its path: stable across machines and runs, and no held-out
    # text ever appears in training.
    is_val = [zlib.crc32(rel.encode()) % 1000 < val_fraction * 1000 for rel, _ in docs]
    train = [d for d, v in zip(docs, is_val, strict=True) if not v]
    val = [d for d, v in zip(docs, is_val, strict=True) if v]
    for split, split_docs in (("training", train), ("validation", val)):
        if not split_docs:
            raise DataError(
                f"LM corpus {root} has no {split} files ({len(docs)} files read; "
                f"raise max_chars or adjust val_fraction)"
            )
    tokenizer = Tokenizer.train([text for _, text in train], vocab_size)
    return TaskData(
        name="lm",
        kind="lm",
        train=encode_lm(tokenizer, [t for _, t in train], block, source=f"LM corpus {root}"),
        val=encode_lm(
            tokenizer, [t for _, t in val], block, source=f"LM validation files of {root}"
        ),
        tokenizer=tokenizer,
        num_labels=None,
        label_names=None,
        max_len=block,
        info={
            "source": str(root),
            "train_files": [rel for rel, _ in train],
            "val_files": [rel for rel, _ in val],
        },
    )


def _file(
    data_file: str | Path | None, opts: dict[str, Any], seed: int, max_len: int, vocab_size: int
) -> TaskData:
    if data_file is None:
        raise ConfigError("task 'file' needs a data file (--data-file FILE)")
    texts, raw = read_labeled(data_file)
    source = f"data file {data_file}"
    val_file = _path("file", "val_file", opts["val_file"])
    if val_file is not None:
        return _classification(
            "file",
            (texts, raw),
            read_labeled(val_file),
            label_vocab(raw),
            max_len=max_len,
            vocab_size=vocab_size,
            sources=(source, f"data file {val_file}"),
            info={"source": str(data_file), "val_file": str(val_file)},
        )
    val_fraction = _fraction("file", "val_fraction", opts["val_fraction"])
    n = len(texts)
    if n < 2:
        raise DataError(f"{source} has too few rows ({n}) to split off a validation set")
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    # Sorted so both splits keep file order; BatchStream shuffles training anyway.
    val_idx, train_idx = sorted(perm[:n_val]), sorted(perm[n_val:])
    return _classification(
        "file",
        ([texts[i] for i in train_idx], [raw[i] for i in train_idx]),
        ([texts[i] for i in val_idx], [raw[i] for i in val_idx]),
        # Label names come from the whole file: a rare class may land only in validation.
        label_vocab(raw),
        max_len=max_len,
        vocab_size=vocab_size,
        sources=(source, source),
        info={"source": str(data_file), "val_rows": len(val_idx)},
    )


@dataclass(frozen=True)
class _SpikeOptions:
    """The options the protein tasks share, checked before any data is read."""

    test_fraction: float
    kmer: int
    dedup: bool
    sites: str
    min_site_count: int

    @classmethod
    def parse(cls, task: str, opts: dict[str, Any]) -> _SpikeOptions:
        if opts["sites"] not in ("all", "variable"):
            raise ConfigError(
                f"task '{task}': sites must be 'all' or 'variable', got {opts['sites']!r}"
            )
        return cls(
            test_fraction=_fraction(task, "test_fraction", opts["test_fraction"]),
            kmer=_int(task, "kmer", opts["kmer"], 1),
            dedup=_bool(task, "dedup", opts["dedup"]),
            sites=opts["sites"],
            min_site_count=_int(task, "min_site_count", opts["min_site_count"], 1),
        )


def _sarscov2(
    data_dir: str | Path | None, opts: dict[str, Any], seed: int, max_len: int
) -> TaskData:
    spike = _SpikeOptions.parse("sarscov2", opts)
    rule = opts["label"]
    if rule not in ("who", "lineage"):
        raise ConfigError(f"task 'sarscov2': label must be 'who' or 'lineage', got {rule!r}")
    top = _int("sarscov2", "top_lineages", opts["top_lineages"], 1)
    files = sarscov2.locate_files(
        data_dir,
        _path("sarscov2", "reference", opts["reference"]),
        _path("sarscov2", "alias_key", opts["alias_key"]),
        need_aliases=rule == "who",
    )
    cache_dir = _path("sarscov2", "cache_dir", opts["cache_dir"])
    leaves = sarscov2.load_tree_leaves(files.tree, files.reference, cache_dir)
    info: dict[str, Any] = {
        "source": str(files.tree),
        "reference": str(files.reference),
        "label": rule,
        "samples": len(leaves.names),
        "lineages": len(set(leaves.lineages)),
    }
    if rule == "who":
        aliases = sarscov2.read_aliases(files.alias_key)
        full = {s: sarscov2.dealias(s, aliases) for s in set(leaves.lineages)}
        labels = [sarscov2.who_label(full[s]) for s in leaves.lineages]
        label_names = list(sarscov2.WHO_LABELS)
        info["alias_key"] = str(files.alias_key)
    else:
        labels, label_names = sarscov2.top_lineage_labels(leaves.lineages, top)
        info["top_lineages"] = top
    reference = sarscov2.spike_of_genome(sarscov2.read_reference(files.reference))
    return _spike_task(
        "sarscov2",
        leaves.proteins,
        labels,
        label_names,
        spike,
        seed=seed,
        max_len=max_len,
        reference=reference,
        source=f"tree file {files.tree}",
        info=info,
    )


def _fasta(
    data_file: str | Path | None,
    labels_file: str | Path | None,
    opts: dict[str, Any],
    seed: int,
    max_len: int,
) -> TaskData:
    if data_file is None or labels_file is None:
        raise ConfigError(
            "task 'fasta' needs a FASTA data file and a labels file (CSV with columns id,label)"
        )
    spike = _SpikeOptions.parse("fasta", opts)
    skip_bad = _bool("fasta", "skip_bad", opts["skip_bad"])
    records = sarscov2.read_fasta_labels(data_file, labels_file, skip_bad=skip_bad)
    label_names = label_vocab(records.labels)
    if len(label_names) < 2:
        raise DataError(f"labels file {labels_file} has a single label {label_names!r}")
    return _spike_task(
        "fasta",
        records.sequences,
        records.labels,
        label_names,
        spike,
        seed=seed,
        max_len=max_len,
        reference=None,
        source=f"FASTA file {data_file}",
        info={
            "source": str(data_file),
            "labels_file": str(labels_file),
            "record_kind": records.kind,
            "dropped": len(records.dropped),
            # The first few reasons say what went wrong without bloating checkpoints.
            "dropped_examples": records.dropped[:5],
        },
    )


def _spike_task(
    name: str,
    sequences: list[str],
    labels: list[str],
    label_names: list[str],
    opts: _SpikeOptions,
    *,
    seed: int,
    max_len: int,
    reference: str | None,
    source: str,
    info: dict[str, Any],
) -> TaskData:
    """Split protein sequences by identity, pick the sites, tokenize: a classification task."""
    k = opts.kmer
    split = sarscov2.split_by_sequence(
        sequences, labels, test_fraction=opts.test_fraction, seed=seed, dedup=opts.dedup
    )
    if not split.test:
        raise DataError(
            f"{source} has too few distinct sequences ({split.info['train_sequences']}) per "
            "label to split off a test set"
        )
    info = {
        **info,
        **split.info,
        "test_fraction": opts.test_fraction,
        "dedup": opts.dedup,
        "kmer": k,
        "sites": opts.sites,
        "min_site_count": opts.min_site_count,
    }
    train_sequences = sorted({s for s, _ in split.train})
    test_sequences = sorted({s for s, _ in split.test})
    sites = None
    if opts.sites == "variable":
        # Without a reference, a column varies iff some sequence differs from any one of them.
        reference = reference if reference is not None else train_sequences[0]
        lengths = {len(s) for s in sequences} | {len(reference)}
        if len(lengths) > 1:
            raise ConfigError(
                f"task '{name}': sites='variable' needs aligned sequences of one length, but "
                f"{source} has lengths {min(lengths)} to {max(lengths)}; use sites='all'"
            )
        # Chosen on the training split alone; stored so evaluation data uses the same ones.
        sites = sarscov2.variable_sites(train_sequences, reference, opts.min_site_count)
        if not sites:
            raise DataError(f"{source}: no site varies among the training sequences")
        info["variable_sites"] = [i + 1 for i in sites]  # 1-based, as mutations are named
    info["sequence_length"] = len(sites) if sites is not None else max(map(len, sequences))
    tokens = {s: sarscov2.spike_tokens(s, sites, k) for s in train_sequences + test_sequences}
    tokenizer = sarscov2.spike_tokenizer(k, [tokens[s] for s in train_sequences])
    # Copies of a sequence (dedup=False) share one id list: far less memory for 42k samples.
    encoded = tokenizer.encode_words(list(tokens.values()), add_cls=True)
    ids = dict(zip(tokens, encoded, strict=True))
    longest = max(map(len, encoded))
    if longest > max_len:
        raise ConfigError(
            f"task '{name}': sequences need max_len {longest} ([CLS] and {longest - 1} "
            f"tokens) but max_len is {max_len}; raise max_len"
            + ("" if sites is not None else " or use option sites='variable'")
        )
    train_ids = {tuple(ids[s]) for s in train_sequences}
    # Non-zero only with sites='variable': such test sequences differ from a training one only
    # at sites that never vary in training, so the model cannot tell them apart.
    info["test_sequences_matching_train"] = sum(tuple(ids[s]) in train_ids for s in test_sequences)
    index = {label: i for i, label in enumerate(label_names)}

    def encode(examples: list[tuple[str, str]]) -> ClassificationData:
        labels = torch.tensor([index[y] for _, y in examples], dtype=torch.long)
        return ClassificationData(ids=[ids[s] for s, _ in examples], labels=labels)

    return TaskData(
        name=name,
        kind="classification",
        train=encode(split.train),
        val=encode(split.test),
        tokenizer=tokenizer,
        num_labels=len(label_names),
        label_names=label_names,
        max_len=longest,
        info=info,
    )
