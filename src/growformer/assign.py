"""Lineage calls for a lab's genomes: ``growformer assign``.

A model trained on the sarscov2 task (mutation input) calls every genome of a FASTA file of
unaligned consensus genomes (aligned with minimap2), a VCF or a Nextclade table, and writes one
CSV row per genome in the shape lineage tools use: the call and its probability, the
runner-up, the QC status and note, and the model's and data's versions. A genome that fails
QC gets no call but keeps its row and reason; one bad record never stops the file.
"""

from __future__ import annotations

import csv
import hashlib
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm

from growformer.checkpoint import Checkpoint
from growformer.data import Tokenizer
from growformer.data.sarscov2 import QC_FAIL, Aligner, GenomeCall, read_calls
from growformer.data.sarscov2.genotypes import GenomeEncoder
from growformer.data.tasks.sarscov2 import genome_encoder
from growformer.errors import ConfigError
from growformer.evaluation import eval_mode
from growformer.version import __version__

COLUMNS = (
    "taxon",
    "call",
    "probability",
    "runner_up",
    "runner_up_probability",
    "qc_status",
    "qc_note",
    "masked_fraction",
    "mutations",
    "unseen_mutations",
    "model_version",
    "data_version",
)
"""The columns of a calls file, in order (pangolin names its first two taxon and lineage)."""


@dataclass
class AssignSummary:
    """What a call of a file did.

    Args:
        genomes: Records read.
        called: Genomes that passed QC and got a call.
        qc_failed_by_reason: Genomes that failed QC, by `GenomeCall.qc_reason`.
        calls: Genomes per called label.
        seconds: Wall time, reading and aligning included.
    """

    genomes: int = 0
    called: int = 0
    qc_failed_by_reason: Counter[str] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "genomes": self.genomes,
            "called": self.called,
            "qc_failed": sum(self.qc_failed_by_reason.values()),
            "qc_failed_by_reason": dict(sorted(self.qc_failed_by_reason.items())),
            "calls": dict(self.calls.most_common()),
            "seconds": round(self.seconds, 3),
            "genomes_per_s": round(self.genomes / self.seconds, 1) if self.seconds else None,
        }


def model_version(ckpt: Checkpoint) -> str:
    """growformer's version, the checkpoint's step and the first digits of its weights'
    SHA-256: two files of calls with the same version came from the same model."""
    digest = hashlib.sha256((ckpt.path / "model.safetensors").read_bytes()).hexdigest()
    return f"growformer {__version__} step {ckpt.trainer_state['step']} weights {digest[:12]}"


def assign(
    ckpt: Checkpoint,
    genomes: str | Path,
    out: str | Path,
    *,
    reference: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> AssignSummary:
    """Call every genome of a file and write the calls to a CSV file.

    The CSV is written beside ``out`` and renamed into place when complete: an interrupted
    call leaves no half-written file, and an existing ``out`` is replaced only by a
    complete one.

    Args:
        ckpt: A checkpoint of the sarscov2 task with the mutation input.
        genomes: FASTA (plain or gzip), VCF or Nextclade TSV of genomes against MN908947.3;
            FASTA genomes are aligned on one thread per CPU.
        out: The CSV file to write (`COLUMNS`).
        reference: MN908947.3 FASTA; None: the one the model was trained with.
        batch_size: Genomes per forward pass.
        progress: Show a progress bar (genomes and genomes per second) on standard error.

    Returns:
        The counts of the file's genomes, calls and QC failures.

    Raises:
        ConfigError: The checkpoint is not of the sarscov2 task with mutation input, or
            ``batch_size`` is below 1.
        DataError: The genome file is missing or not a genome file, or the reference is not
            the model's.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    tokenizer = Tokenizer.from_json(ckpt.tokenizer_json)
    encoder = genome_encoder(tokenizer, ckpt.task, reference)
    versions = {
        "model_version": model_version(ckpt),
        "data_version": f"lineageTree.pb sha256 {ckpt.task['info']['tree_sha256'][:12]}",
    }
    labels = ckpt.task["label_names"]
    summary = AssignSummary()
    start = time.perf_counter()
    calls = read_calls(genomes, Aligner(encoder.reference))
    bar = tqdm(calls, unit=" genomes", disable=not progress, desc="assign", dynamic_ncols=True)
    out = Path(out)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            for chunk in _chunks(bar, batch_size):
                rows = _call_rows(ckpt, encoder, labels, chunk, tokenizer)
                for call, row in zip(chunk, rows, strict=True):
                    writer.writerow({**row, **versions})
                    summary.genomes += 1
                    if call.qc_status == QC_FAIL:
                        summary.qc_failed_by_reason[call.qc_reason] += 1
                    else:
                        summary.called += 1
                        summary.calls[row["call"]] += 1
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _chunks(calls: Iterable[GenomeCall], size: int) -> Iterator[list[GenomeCall]]:
    chunk: list[GenomeCall] = []
    for call in calls:
        chunk.append(call)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _call_rows(
    ckpt: Checkpoint,
    encoder: GenomeEncoder,
    labels: list[str],
    calls: list[GenomeCall],
    tokenizer: Tokenizer,
) -> list[dict[str, Any]]:
    """One row per call, in order; the genomes that passed QC classified in one batch."""
    passed = [i for i, c in enumerate(calls) if c.qc_status != QC_FAIL]
    ids = {i: encoder.ids(calls[i].substitutions) for i in passed}
    longest = ckpt.model.arch.max_len
    for i in passed:
        if len(ids[i]) > longest:  # said in the row's note, never silent
            note = (
                f"read the first {longest - 1} of {len(ids[i]) - 1} mutations (the model's "
                "longest input)"
            )
            calls[i].qc_note = f"{calls[i].qc_note}; {note}" if calls[i].qc_note else note
            ids[i] = ids[i][:longest]
    probabilities: dict[int, list[float]] = {}
    if passed:
        pad = tokenizer.pad_id
        batch = pad_sequence(
            [torch.tensor(ids[i]) for i in passed], batch_first=True, padding_value=pad
        )
        with eval_mode(ckpt.model), torch.no_grad():
            logits = ckpt.model(batch, (batch != pad).long()).logits
        probabilities = dict(zip(passed, logits.float().softmax(-1).tolist(), strict=True))
    rows = []
    for i, call in enumerate(calls):
        row: dict[str, Any] = {
            "taxon": call.name,
            "qc_status": call.qc_status,
            "qc_note": call.qc_note,
            "masked_fraction": f"{call.masked_fraction:.4f}",
            "mutations": len(call.substitutions),
        }
        if i in probabilities:
            p = probabilities[i]
            best, second = sorted(range(len(p)), key=lambda k: -p[k])[:2]
            row.update(
                call=labels[best],
                probability=f"{p[best]:.4f}",
                runner_up=labels[second],
                runner_up_probability=f"{p[second]:.4f}",
                unseen_mutations=ids[i].count(tokenizer.unk_id),
            )
        rows.append(row)
    return rows
