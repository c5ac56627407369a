"""Spike protein classification: a user's FASTA (the fasta task), and the spike input of the
sarscov2 task (`spike_task`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from growformer.data import sarscov2
from growformer.data.datasets import ClassificationData
from growformer.data.files import label_vocab
from growformer.data.tasks.common import bool_option, fraction_option, int_option
from growformer.data.tasks.spec import EvalFormat, TaskData, TaskRequest, TaskSpec
from growformer.data.tokenizer import Tokenizer
from growformer.errors import ConfigError, DataError


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


@dataclass(frozen=True)
class SpikeOptions:
    """The options the protein tasks share, checked before any data is read."""

    test_fraction: float
    kmer: int
    dedup: bool
    sites: str
    min_site_count: int

    @classmethod
    def parse(cls, task: str, opts: dict[str, Any]) -> SpikeOptions:
        if opts["sites"] not in ("all", "variable"):
            raise ConfigError(
                f"task '{task}': sites must be 'all' or 'variable', got {opts['sites']!r}"
            )
        return cls(
            test_fraction=fraction_option(task, "test_fraction", opts["test_fraction"]),
            kmer=int_option(task, "kmer", opts["kmer"], 1),
            dedup=bool_option(task, "dedup", opts["dedup"]),
            sites=opts["sites"],
            min_site_count=int_option(task, "min_site_count", opts["min_site_count"], 1),
        )


def _load_fasta(request: TaskRequest) -> TaskData:
    """The fasta task (see `FASTA`)."""
    data_file, labels_file = request.data_file, request.labels_file
    opts, seed, max_len = request.options, request.seed, request.max_len
    if data_file is None or labels_file is None:
        raise ConfigError(
            "task 'fasta' trains on your sequences: pass --data FASTA and --labels CSV (columns "
            "id,label; data_file and labels_file in a config)"
        )
    spike = SpikeOptions.parse("fasta", opts)
    skip_bad = bool_option("fasta", "skip_bad", opts["skip_bad"])
    records = sarscov2.read_fasta_labels(data_file, labels_file, skip_bad=skip_bad)
    label_names = label_vocab(records.labels)
    if len(label_names) < 2:
        raise DataError(f"labels file {labels_file} has a single label {label_names!r}")
    split = sarscov2.split_by_sequence(
        records.sequences,
        records.labels,
        test_fraction=spike.test_fraction,
        seed=seed,
        dedup=spike.dedup,
    )
    return spike_task(
        "fasta",
        split,
        label_names,
        spike,
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


def spike_task(
    name: str,
    split: sarscov2.SequenceSplit,
    label_names: list[str],
    opts: SpikeOptions,
    *,
    max_len: int,
    reference: str | None,
    source: str,
    info: dict[str, Any],
) -> TaskData:
    """Pick the sites of split protein sequences and tokenize them: a classification task."""
    k = opts.kmer
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
        lengths = {len(s) for s in train_sequences + test_sequences} | {len(reference)}
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
    info["sequence_length"] = (
        len(sites) if sites is not None else max(map(len, train_sequences + test_sequences))
    )
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


def _encode_fasta(
    tokenizer: Tokenizer, task: Mapping[str, Any], max_len: int, data: str, labels: str
) -> tuple[ClassificationData, dict[str, Any]]:
    """`growformer evaluate --data FASTA --labels CSV` of a checkpoint of a protein task."""
    records = sarscov2.read_fasta_labels(data, labels)
    encoded = encode_spikes(
        tokenizer,
        records.sequences,
        records.labels,
        task["label_names"],
        task["info"],
        max_len,
        source=f"FASTA file {data}",
    )
    return encoded, {}


SPIKE_EVAL = EvalFormat(
    encode=_encode_fasta, usage="classifies spike sequences: pass --data FASTA --labels CSV"
)

FASTA = TaskSpec(
    load=_load_fasta,
    options={
        "test_fraction": 0.2,
        "dedup": True,
        "kmer": 1,
        "sites": "all",
        "min_site_count": 1,
        "skip_bad": False,
    },
    files=("data_file", "labels_file"),
    evaluate=SPIKE_EVAL,
)
"""A user's spike proteins or reference-aligned genomes in the FASTA `data_file`, labelled
by the CSV `labels_file` (columns `id,label`)."""
