"""The sarscov2 task: Pango lineage or WHO variant of the pangoLEARN lineage tree's genomes.

Input (option ``input``):

- ``mutations`` (default): a genome is the set of its substitutions against MN908947.3,
  genome-wide, one token per mutation (``C241T``) in genome order; the vocabulary is the
  mutations of at least ``min_count`` training genotypes, rarer or unseen ones are
  ``[UNK]``. Training examples may be repeated with simulated amplicon dropout
  (``augment_copies`` copies each, up to ``augment_mask`` of the genome masked).
- ``spike``: the spike protein alone. It cannot tell a recombinant from its parents: 436 of
  the tree's 555 recombinant samples carry a spike identical to some Omicron sample's.

Labels (option ``label``): ``who`` (Alpha, Beta, Gamma, Delta, Omicron by de-aliased Pango
lineage; Pango's X* recombinants as their own class Recombinant; Other) or ``lineage`` (the
``top_lineages`` most frequent Pango lineages and "other", or all of them with 0).

Split (option ``split``, see :mod:`growformer.data.sarscov2.splits`): ``genotype``,
``lineage`` (whole lineages held out, WHO labels only) or ``future`` (the last-designated
lineages held out, WHO labels only). After encoding, a test example whose ids equal a
training example's (augmented copies included) is dropped and counted: no test input is one
the model was trained on.
"""

from __future__ import annotations

from typing import Any

import torch

from growformer.data import sarscov2
from growformer.data.datasets import ClassificationData
from growformer.data.sarscov2.genotypes import genotype_tokens, mask_amplicons, mutation_tokenizer
from growformer.data.sarscov2.mutations import Mutation
from growformer.data.tasks.common import fraction_option, int_option, path_option
from growformer.data.tasks.proteins import SPIKE_EVAL, SpikeOptions, spike_task
from growformer.data.tasks.spec import TaskData, TaskRequest, TaskSpec
from growformer.errors import ConfigError, DataError

INPUTS = ("mutations", "spike")
LABELS = ("who", "lineage")
SPLITS = ("genotype", "lineage", "future")


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(
            f"task 'sarscov2': {key} must be one of {', '.join(allowed)}, got {value!r}"
        )
    return value


def _load(request: TaskRequest) -> TaskData:
    opts = request.options
    kind = _choice("input", opts["input"], INPUTS)
    rule = _choice("label", opts["label"], LABELS)
    how = _choice("split", opts["split"], SPLITS)
    if rule == "lineage" and how != "genotype":
        raise ConfigError(
            f"task 'sarscov2': split '{how}' holds out whole lineages, which label 'lineage' "
            "cannot predict; use split 'genotype' or label 'who'"
        )
    top = int_option("sarscov2", "top_lineages", opts["top_lineages"], 0)
    spike = SpikeOptions.parse("sarscov2", opts)
    files = sarscov2.locate_files(
        request.data_dir,
        path_option("sarscov2", "reference", opts["reference"]),
        path_option("sarscov2", "alias_key", opts["alias_key"]),
        need_aliases=rule == "who" or how != "genotype",
    )
    leaves = sarscov2.load_tree_leaves(
        files.tree, files.reference, path_option("sarscov2", "cache_dir", opts["cache_dir"])
    )
    reference = sarscov2.read_reference(files.reference)
    info: dict[str, Any] = {
        "source": str(files.tree),
        "tree_sha256": leaves.tree_sha256,
        "reference": str(files.reference),
        "input": kind,
        "label": rule,
        "split": how,
        "samples": len(leaves.names),
        "lineages": len(set(leaves.lineages)),
    }
    aliases = sarscov2.read_aliases(files.alias_key) if files.alias_key is not None else None
    if rule == "who":
        full = {s: sarscov2.dealias(s, aliases) for s in set(leaves.lineages)}
        labels = [sarscov2.who_label(full[s]) for s in leaves.lineages]
        label_names = list(sarscov2.WHO_LABELS)
        info["alias_key"] = str(files.alias_key)
    else:
        labels, label_names = sarscov2.top_lineage_labels(leaves.lineages, top or len(leaves.names))
        info["top_lineages"] = top
    if kind == "spike":
        inputs: list[Any] = _spike_proteins(leaves.genotypes, reference)
    else:
        inputs = leaves.genotypes
    if how == "genotype":
        split = sarscov2.split_by_sequence(
            inputs,
            labels,
            test_fraction=spike.test_fraction,
            seed=request.seed,
            # The mutation input always deduplicates, after encoding (`_mutation_task`).
            dedup=spike.dedup if kind == "spike" else True,
        )
    elif how == "lineage":
        split = sarscov2.split_by_lineage(
            inputs, labels, leaves.lineages, test_fraction=spike.test_fraction, seed=request.seed
        )
    else:
        split = sarscov2.split_future(
            inputs,
            labels,
            leaves.lineages,
            sarscov2.designation_order(aliases),
            test_fraction=spike.test_fraction,
        )
    if kind == "spike":
        return spike_task(
            "sarscov2",
            split,
            label_names,
            spike,
            max_len=request.max_len,
            reference=sarscov2.spike_of_genome(reference),
            source=f"tree file {files.tree}",
            info={**info, "test_fraction": spike.test_fraction},
        )
    return _mutation_task(split, label_names, reference, request, info)


def _spike_proteins(genotypes: list[tuple[Mutation, ...]], reference: str) -> list[str]:
    """The spike protein of every genotype (genotypes sharing spike changes share one)."""
    proteins: dict[tuple[Mutation, ...], str] = {}
    out = []
    for genotype in genotypes:
        key = tuple(m for m in genotype if sarscov2.SPIKE_START <= m[0] < sarscov2.SPIKE_END)
        if key not in proteins:
            proteins[key] = sarscov2.spike_protein(key, reference)
        out.append(proteins[key])
    return out


def _mutation_task(
    split: sarscov2.SequenceSplit,
    label_names: list[str],
    reference: str,
    request: TaskRequest,
    info: dict[str, Any],
) -> TaskData:
    """Tokenize split genotypes, augment the training side, drop test inputs seen in training."""
    opts = request.options
    min_count = int_option("sarscov2", "min_count", opts["min_count"], 1)
    copies = int_option("sarscov2", "augment_copies", opts["augment_copies"], 0)
    most = fraction_option("sarscov2", "augment_mask", opts["augment_mask"])
    tokens = {g: genotype_tokens(g, reference) for g, _ in split.train + split.test}
    tokenizer = mutation_tokenizer((tokens[g] for g, _ in split.train), min_count)
    gen = torch.Generator().manual_seed(request.seed)
    index = {name: i for i, name in enumerate(label_names)}
    train: dict[tuple[tuple[int, ...], int], None] = {}  # deduplicated, in order
    for genotype, label in split.train:
        versions = [genotype]
        for _ in range(copies):
            fraction = most * torch.rand((), generator=gen).item()
            versions.append(mask_amplicons(genotype, fraction, gen)[0])
        for version in versions:
            words = tokens[genotype] if version is genotype else genotype_tokens(version, reference)
            ids = tokenizer.encode_words([words], add_cls=True)[0]
            train.setdefault((tuple(ids), index[label]), None)
    seen = {ids for ids, _ in train}
    test: dict[tuple[tuple[int, ...], int], None] = {}
    dropped = 0
    for genotype, label in split.test:
        ids = tuple(tokenizer.encode_words([tokens[genotype]], add_cls=True)[0])
        if ids in seen:
            dropped += 1
        else:
            test.setdefault((ids, index[label]), None)
    if not test:
        raise DataError(f"tree file {info['source']}: no test example is left after the split")
    unk = tokenizer.encode_words([["[UNK]"]], add_cls=False)[0][0]
    unknown = sum(ids.count(unk) for ids, _ in test)
    longest = max(len(ids) for ids, _ in [*train, *test])
    if longest > request.max_len:
        raise ConfigError(
            f"task 'sarscov2': genomes need max_len {longest} ([CLS] and {longest - 1} "
            f"mutations) but max_len is {request.max_len}; raise max_len"
        )
    info = {
        **info,
        **split.info,
        "test_fraction": fraction_option("sarscov2", "test_fraction", opts["test_fraction"]),
        "min_count": min_count,
        "augment_copies": copies,
        "augment_mask": most,
        "mutations_in_vocabulary": tokenizer.vocab_size - 4,
        "train_examples": len(train),
        "test_examples": len(test),
        "test_examples_seen_in_training": dropped,
        "test_unknown_mutations": unknown,
    }

    def data(examples: dict[tuple[tuple[int, ...], int], None]) -> ClassificationData:
        return ClassificationData(
            ids=[list(ids) for ids, _ in examples],
            labels=torch.tensor([label for _, label in examples], dtype=torch.long),
        )

    return TaskData(
        name="sarscov2",
        kind="classification",
        train=data(train),
        val=data(test),
        tokenizer=tokenizer,
        num_labels=len(label_names),
        label_names=label_names,
        max_len=longest,
        info=info,
    )


SARSCOV2 = TaskSpec(
    load=_load,
    options={
        "input": "mutations",
        "label": "who",
        "top_lineages": 20,
        "split": "genotype",
        "test_fraction": 0.2,
        "min_count": 1,
        "augment_copies": 0,
        "augment_mask": 0.2,
        "dedup": True,
        "kmer": 1,
        "sites": "all",
        "min_site_count": 1,
        "reference": None,
        "alias_key": None,
        "cache_dir": None,
    },
    files=("data_dir",),
    evaluate=SPIKE_EVAL,
)
"""The genomes of the pangoLEARN lineage tree in `data_dir`, $GROWFORMER_SARSCOV2_DIR or the
Debian package's directory (see the module docstring for the options)."""
