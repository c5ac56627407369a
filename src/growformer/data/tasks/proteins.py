"""Spike protein classification: the pangoLEARN lineage tree (sarscov2), a user's FASTA (fasta)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from growformer.data import sarscov2
from growformer.data.datasets import ClassificationData
from growformer.data.files import label_vocab
from growformer.data.tasks.common import bool_option, fraction_option, int_option, path_option
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
            test_fraction=fraction_option(task, "test_fraction", opts["test_fraction"]),
            kmer=int_option(task, "kmer", opts["kmer"], 1),
            dedup=bool_option(task, "dedup", opts["dedup"]),
            sites=opts["sites"],
            min_site_count=int_option(task, "min_site_count", opts["min_site_count"], 1),
        )


def _load_sarscov2(request: TaskRequest) -> TaskData:
    """The sarscov2 task (see `SARSCOV2`)."""
    data_dir, opts, seed, max_len = request.data_dir, request.options, request.seed, request.max_len
    spike = _SpikeOptions.parse("sarscov2", opts)
    rule = opts["label"]
    if rule not in ("who", "lineage"):
        raise ConfigError(f"task 'sarscov2': label must be 'who' or 'lineage', got {rule!r}")
    top = int_option("sarscov2", "top_lineages", opts["top_lineages"], 1)
    files = sarscov2.locate_files(
        data_dir,
        path_option("sarscov2", "reference", opts["reference"]),
        path_option("sarscov2", "alias_key", opts["alias_key"]),
        need_aliases=rule == "who",
    )
    cache_dir = path_option("sarscov2", "cache_dir", opts["cache_dir"])
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


def _load_fasta(request: TaskRequest) -> TaskData:
    """The fasta task (see `FASTA`)."""
    data_file, labels_file = request.data_file, request.labels_file
    opts, seed, max_len = request.options, request.seed, request.max_len
    if data_file is None or labels_file is None:
        raise ConfigError(
            "task 'fasta' needs a FASTA data file and a labels file (CSV with columns id,label)"
        )
    spike = _SpikeOptions.parse("fasta", opts)
    skip_bad = bool_option("fasta", "skip_bad", opts["skip_bad"])
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


def _encode_fasta(
    tokenizer: Tokenizer, task: Mapping[str, Any], max_len: int, data: str, labels: str
) -> ClassificationData:
    """`growformer evaluate --data FASTA --labels CSV` of a checkpoint of a protein task."""
    records = sarscov2.read_fasta_labels(data, labels)
    return encode_spikes(
        tokenizer,
        records.sequences,
        records.labels,
        task["label_names"],
        task["info"],
        max_len,
        source=f"FASTA file {data}",
    )


_SPIKE_EVAL = EvalFormat(
    encode=_encode_fasta, usage="classifies spike sequences: pass --data FASTA --labels CSV"
)

SARSCOV2 = TaskSpec(
    load=_load_sarscov2,
    options={
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
    files=("data_dir",),
    evaluate=_SPIKE_EVAL,
)
"""The spike proteins of the pangoLEARN lineage tree's leaves in `data_dir`,
$GROWFORMER_SARSCOV2_DIR or the Debian package's directory, labelled by WHO variant
(`label="who"`) or by the `top_lineages` most frequent Pango lineages (`label="lineage"`)."""

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
    evaluate=_SPIKE_EVAL,
)
"""A user's spike proteins or reference-aligned genomes in the FASTA `data_file`, labelled
by the CSV `labels_file` (columns `id,label`)."""
