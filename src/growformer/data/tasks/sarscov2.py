"""The sarscov2 task: Pango lineage or WHO variant of the pangoLEARN lineage tree's genomes.

Input (option ``input``):

- ``mutations`` (default): a genome is the set of its substitutions against MN908947.3,
  genome-wide, one token per mutation (``C241T``) in genome order; the vocabulary is the
  mutations of at least ``min_count`` training genotypes, rarer or unseen ones are
  ``[UNK]``. The model's positions are those of the mutations in this list, which the
  mutation tokens already say; the benchmark trained the WHO model with its position table
  held at zero to measure what they add. Training genomes are repeated with simulated
  amplicon dropout (``augment_copies`` copies each, default 1, up to ``augment_mask`` of
  the genome masked, default 0.2) so that genomes with dropouts are called right.
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

import hashlib
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from growformer.data import sarscov2
from growformer.data.datasets import ClassificationData
from growformer.data.sarscov2.align import Aligner
from growformer.data.sarscov2.genotypes import (
    GenomeEncoder,
    genotype_tokens,
    mask_amplicons,
    mutated_span,
    mutation_tokenizer,
    synthetic_recombinants,
)
from growformer.data.sarscov2.location import REFERENCE_FILE
from growformer.data.sarscov2.mutations import Mutation
from growformer.data.shared import beside_checkout
from growformer.data.tasks.common import fraction_option, int_option, path_option
from growformer.data.tasks.proteins import SPIKE_EVAL, SpikeOptions, spike_task
from growformer.data.tasks.spec import EvalFormat, TaskData, TaskRequest, TaskSpec
from growformer.data.tokenizer import Tokenizer
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
        # Where calling a user's genomes finds the reference again (and checks it is the same).
        "reference": str(Path(files.reference).resolve()),
        "reference_sha256": hashlib.sha256(reference.encode()).hexdigest(),
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
    span = mutated_span(leaves.genotypes)
    return _mutation_task(split, label_names, reference, span, request, {**info, "span": span})


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
    span: sarscov2.Span,
    request: TaskRequest,
    info: dict[str, Any],
) -> TaskData:
    """Tokenize split genotypes, augment the training side, drop test inputs seen in training."""
    opts = request.options
    min_count = int_option("sarscov2", "min_count", opts["min_count"], 1)
    copies = int_option("sarscov2", "augment_copies", opts["augment_copies"], 0)
    most = fraction_option("sarscov2", "augment_mask", opts["augment_mask"])
    recombinants = int_option("sarscov2", "recombinants", opts["recombinants"], 0)
    if recombinants and sarscov2.RECOMBINANT not in label_names:
        raise ConfigError(
            f"task 'sarscov2': option recombinants makes genomes of class "
            f"{sarscov2.RECOMBINANT!r}, which label {info['label']!r} does not have; use "
            "label 'who'"
        )
    tokenizer = mutation_tokenizer(
        (genotype_tokens(g, reference) for g, _ in split.train), min_count
    )
    encoder = GenomeEncoder(tokenizer, reference, span)
    gen = torch.Generator().manual_seed(request.seed)
    index = {name: i for i, name in enumerate(label_names)}
    train: dict[tuple[tuple[int, ...], int], None] = {}  # deduplicated, in order
    for genotype, label in split.train:
        versions = [genotype]
        for _ in range(copies):
            fraction = most * torch.rand((), generator=gen).item()
            versions.append(mask_amplicons(genotype, fraction, gen)[0])
        for version in versions:
            train.setdefault((tuple(encoder.ids(version)), index[label]), None)
    if recombinants:
        parents = [g for g, label in split.train if label != sarscov2.RECOMBINANT]
        for genotype in synthetic_recombinants(parents, recombinants, gen, span):
            train.setdefault((tuple(encoder.ids(genotype)), index[sarscov2.RECOMBINANT]), None)
    seen = {ids for ids, _ in train}
    test: dict[tuple[tuple[int, ...], int], None] = {}
    dropped = 0
    for genotype, label in split.test:
        ids = tuple(encoder.ids(genotype))
        if ids in seen:
            dropped += 1
        else:
            test.setdefault((ids, index[label]), None)
    if not test:
        raise DataError(f"tree file {info['source']}: no test example is left after the split")
    unknown = sum(ids.count(tokenizer.unk_id) for ids, _ in test)
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
        "recombinants": recombinants,
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


def genome_encoder(
    tokenizer: Tokenizer, task: Mapping[str, Any], reference: str | Path | None = None
) -> GenomeEncoder:
    """How a checkpoint of the task (mutation input) reads a user's genomes.

    Args:
        tokenizer: The checkpoint's tokenizer.
        task: The checkpoint's task record.
        reference: MN908947.3 FASTA; None: the file the task was trained with, else
            MN908947.3.fasta in $GROWFORMER_SARSCOV2_DIR or beside the checkout.

    Raises:
        ConfigError: The checkpoint is not one of this task with the mutation input.
        DataError: No reference is found, or it is not the genome the model was trained
            against.
    """
    info = task["info"]
    if task["name"] != "sarscov2" or info.get("input") != "mutations":
        raise ConfigError(
            f"calling genomes needs a model of task 'sarscov2' with input 'mutations'; this "
            f"one is of task {task['name']!r} with input {info.get('input')!r}"
        )
    missing = [k for k in ("reference", "reference_sha256", "span") if k not in info]
    if missing:
        raise ConfigError(
            f"the checkpoint's task record lacks {', '.join(missing)} (trained before "
            "growformer could call genomes): train it again"
        )
    if reference is None:
        dirs = (os.environ.get("GROWFORMER_SARSCOV2_DIR"), beside_checkout("sarscov2"))
        candidates = [Path(info["reference"]), *(Path(d) / REFERENCE_FILE for d in dirs if d)]
        reference = next((c for c in candidates if c.is_file()), None)
        if reference is None:
            raise DataError(
                f"the reference genome the model was trained with ({candidates[0]}) is not "
                f"here: pass --reference FASTA of MN908947.3 or set GROWFORMER_SARSCOV2_DIR"
            )
    genome = sarscov2.read_reference(reference)
    if hashlib.sha256(genome.encode()).hexdigest() != info["reference_sha256"]:
        raise DataError(
            f"reference {reference} is not the genome the model was trained against "
            "(MN908947.3 as in the training data; its SHA-256 differs)"
        )
    first, last = info["span"]
    return GenomeEncoder(tokenizer, genome, (first, last))


def _encode_genomes(
    tokenizer: Tokenizer, task: Mapping[str, Any], max_len: int, data: str, labels: str
) -> tuple[ClassificationData, dict[str, Any]]:
    """`growformer evaluate --data GENOMES --labels CSV`: FASTA, VCF or Nextclade genomes.

    Genomes that fail QC, and genomes without a label, are not scored: they are counted, by
    reason, in the facts returned; so are labels without a genome, and genomes with more
    mutations than the model reads (scored on their first ones).
    """
    if task["info"].get("input") == "spike":
        return SPIKE_EVAL.encode(tokenizer, task, max_len, data, labels)
    encoder = genome_encoder(tokenizer, task)
    rows = sarscov2.read_label_rows(Path(labels), False, [])
    index = {name: i for i, name in enumerate(task["label_names"])}
    unknown = sorted({label for label, _ in rows.values()} - index.keys())
    if unknown:
        raise DataError(
            f"labels file {labels}: labels {unknown[:5]} are not among the model's labels "
            f"{task['label_names']}"
        )
    ids: list[list[int]] = []
    targets: list[int] = []
    failed: Counter[str] = Counter()
    names: set[str] = set()
    total = unlabelled = truncated = 0
    for call in sarscov2.read_calls(data, Aligner(encoder.reference)):
        total += 1
        names.add(call.name)
        if call.qc_status == sarscov2.QC_FAIL:
            failed[call.qc_reason] += 1
        elif call.name not in rows:
            unlabelled += 1
        else:
            encoded = encoder.ids(call.substitutions)
            truncated += len(encoded) > max_len
            ids.append(encoded[:max_len])
            targets.append(index[rows[call.name][0]])
    facts = {
        "genomes": total,
        "qc_failed": sum(failed.values()),
        "qc_failed_by_reason": dict(sorted(failed.items())),
        "genomes_without_label": unlabelled,
        "labels_without_genome": len(rows.keys() - names),
        "genomes_truncated": truncated,  # more mutations than the model's longest input
    }
    return ClassificationData(ids=ids, labels=torch.tensor(targets, dtype=torch.long)), facts


GENOME_EVAL = EvalFormat(
    encode=_encode_genomes,
    usage=(
        "classifies SARS-CoV-2 genomes: pass --data GENOMES (FASTA, VCF or Nextclade TSV) "
        "--labels CSV (id,label), or call them with growformer assign"
    ),
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
        "augment_copies": 1,
        "augment_mask": 0.2,
        "recombinants": 0,
        "dedup": True,
        "kmer": 1,
        "sites": "all",
        "min_site_count": 1,
        "reference": None,
        "alias_key": None,
        "cache_dir": None,
    },
    files=("data_dir",),
    evaluate=GENOME_EVAL,
)
"""The genomes of the pangoLEARN lineage tree in `data_dir`, $GROWFORMER_SARSCOV2_DIR,
``shared/data/sarscov2`` beside the checkout or the Debian package's directory (see the
module docstring for the options)."""
