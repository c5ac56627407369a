"""Genotypes as a model's input: one token per mutation, and amplicon dropout.

An example is the set of its substitutions, one token each (``C241T``), in genome order.
The vocabulary is the mutations seen in training; a mutation the model never saw is the
token ``[UNK]`` (one per such mutation, so their number still reaches the model).

Real consensus genomes miss stretches where an amplicon did not amplify: those sites are
read as N and their mutations are unknown. `mask_amplicons` simulates it on a genotype
(whole amplicon-sized runs dropped at random) so that a model can be trained, and measured,
on genomes with dropouts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from growformer.data.sarscov2.genome import GENOME_LENGTH
from growformer.data.sarscov2.mutations import (
    Mutation,
    Span,
    mutation_name,
    outside_spans,
)
from growformer.data.tokenizer import Tokenizer

AMPLICON_LENGTH = 400
"""Nucleotides per simulated amplicon: ARTIC's SARS-CoV-2 schemes tile the genome with
~400-nt amplicons, and one that fails leaves a run of about that length unread."""


def genotype_tokens(genotype: Sequence[Mutation], reference: str) -> list[str]:
    """The genotype's mutations as tokens (``C241T``), in genome order."""
    return [mutation_name(m, reference) for m in sorted(genotype)]


def mutated_span(genotypes: Iterable[Sequence[Mutation]]) -> Span:
    """The first and last positions where any of ``genotypes`` has a mutation.

    Trees mask the genome's ends, where sequencing is unreliable (the pangoLEARN tree has no
    mutation before 269 or after 29,673): a user genome's calls outside this span are
    nothing the model could have learned from, and are left out of its input.
    """
    positions = [p for genotype in genotypes for p, _ in genotype]
    if not positions:
        raise ValueError("no genotype has a mutation")
    return min(positions), max(positions)


def mutation_tokenizer(train_tokens: Iterable[Sequence[str]], min_count: int) -> Tokenizer:
    """Word-level tokenizer of the mutations in at least ``min_count`` training examples.

    Args:
        train_tokens: The training examples' tokens (`genotype_tokens`).
        min_count: Examples a mutation must appear in to get its own token; rarer ones
            encode as ``[UNK]``.

    Returns:
        The tokenizer, its vocabulary in genome order.
    """
    counts = Counter(t for tokens in train_tokens for t in set(tokens))
    kept = [t for t, n in counts.items() if n >= min_count]
    return Tokenizer.word_level(sorted(kept, key=lambda t: (int(t[1:-1]), t)))


def amplicon_spans(count: int, generator: torch.Generator, length: int) -> tuple[Span, ...]:
    """``count`` distinct amplicons of the genome's tiling by ``length``-nt amplicons, at
    random, as sorted spans."""
    tiles = -(-GENOME_LENGTH // length)
    chosen = sorted(torch.randperm(tiles, generator=generator)[: min(count, tiles)].tolist())
    return tuple((1 + i * length, min(GENOME_LENGTH, (i + 1) * length)) for i in chosen)


def mask_amplicons(
    genotype: Sequence[Mutation],
    fraction: float,
    generator: torch.Generator,
    length: int = AMPLICON_LENGTH,
) -> tuple[tuple[Mutation, ...], tuple[Span, ...]]:
    """Drop random whole amplicons covering ``fraction`` of the genome.

    Args:
        genotype: Sorted substitutions.
        fraction: Share of the genome to mask, rounded to whole amplicons.
        generator: Source of randomness.
        length: Amplicon length in nucleotides.

    Returns:
        The substitutions outside the dropped amplicons, and those amplicons' spans.
    """
    spans = amplicon_spans(round(fraction * GENOME_LENGTH / length), generator, length)
    return outside_spans(genotype, spans), spans


def recombine(
    first: Sequence[Mutation], second: Sequence[Mutation], breakpoint: int
) -> tuple[Mutation, ...]:
    """The genome made of ``first`` before ``breakpoint`` and ``second`` from it on."""
    return tuple(m for m in first if m[0] < breakpoint) + tuple(
        m for m in second if m[0] >= breakpoint
    )


def synthetic_recombinants(
    parents: Sequence[Sequence[Mutation]],
    count: int,
    generator: torch.Generator,
    span: Span,
    *,
    min_each: int = 3,
) -> list[tuple[Mutation, ...]]:
    """Recombinants of random pairs of ``parents``, one breakpoint each.

    Pango's X lineages are such genomes: one parent's mutations on one side of a breakpoint,
    the other's on the other side. A model shown only the recombinant lineages designated so
    far learns those lineages, not what makes a genome a recombinant; genomes made the same
    way from other parents teach that. A pair only makes a recombinant when each side of the
    breakpoint tells the parents apart by at least ``min_each`` mutations: two parents of
    one lineage would only make another genome of that lineage.

    Args:
        parents: Genotypes to recombine (sorted substitutions).
        count: Recombinants to make.
        generator: Source of randomness.
        span: Where breakpoints may fall (`mutated_span`).
        min_each: Mutations that must differ between the parents on each side.

    Returns:
        ``count`` genotypes (fewer when the parents are too alike to make them).
    """
    made: list[tuple[Mutation, ...]] = []
    for _ in range(50 * count):
        if len(made) == count:
            break
        i, j = torch.randint(0, len(parents), (2,), generator=generator).tolist()
        breakpoint = int(torch.randint(span[0] + 1, span[1], (), generator=generator))
        a, b = set(parents[i]), set(parents[j])
        left = sum(m[0] < breakpoint for m in a ^ b)
        if left >= min_each and len(a ^ b) - left >= min_each:
            made.append(recombine(parents[i], parents[j], breakpoint))
    return made


@dataclass(frozen=True)
class GenomeEncoder:
    """A genome as a model trained on the tree's genotypes reads it.

    Args:
        tokenizer: The model's tokenizer (`mutation_tokenizer` of its training split).
        reference: MN908947.3, upper case.
        span: `mutated_span` of the training data: substitutions outside it are left out,
            as the tree left them out (a real genome's C241T is not in the tree).
    """

    tokenizer: Tokenizer
    reference: str
    span: Span

    def ids(self, substitutions: Sequence[Mutation]) -> list[int]:
        """``[CLS]`` and one id per substitution inside the span, in genome order."""
        first, last = self.span
        words = genotype_tokens([m for m in substitutions if first <= m[0] <= last], self.reference)
        return self.tokenizer.encode_words([words], add_cls=True)[0]
