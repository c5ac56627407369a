"""SARS-CoV-2 genomes labelled by lineage: the pangoLEARN UShER tree, and user genomes called
against the reference.

The tree file (`lineageTree.pb`, an UShER mutation-annotated tree of the pangoLEARN
designated sequences) stores each representative genome as the nucleotide substitutions on its
path from the root. This package decodes it without a protobuf dependency into every leaf's
genome-wide substitutions against MN908947.3, labels leaves by Pango lineage or WHO variant,
splits them three ways, and reads what a surveillance lab has: unaligned consensus FASTA
(aligned with minimap2), a VCF or Nextclade's table, each genome with its unread stretches.

Modules, each importing only those above it:

- `genome`: reference coordinates, the genetic code, translation, the reference FASTA.
- `protobuf`: the wire format, just enough of it to read the tree.
- `lineages`: the Pango alias table, de-aliasing, designation order, WHO and top-lineage
  labels.
- `mutations`: genomes as substitutions (``C241T``), a user genome's call with its masked
  spans, deletions and QC status, the spike protein of a genotype.
- `tree`: decoding the tree into its samples' lineages and genotypes.
- `cache`: the on-disk cache of decoded trees.
- `location`: where the tree, reference and alias table are.
- `splits`: train/test by genotype, by held-out lineage, by designation order.
- `genotypes`: one token per mutation, and simulated amplicon dropout.
- `dataset`: the spike input: variable sites, residue or k-mer tokens.
- `fasta`: a user's protein or genome FASTA file and labels CSV (the spike input).
- `align`: unaligned consensus genomes aligned with minimap2 and called, with QC.
- `variants`: genomes already called: a VCF, Nextclade's results table.
- `calls`: one entry point reading any of these, its format told by its content.
- `simulate`: the tree's genotypes written out as genomes, with a sequencing run's damage.
"""

from growformer.data.sarscov2.align import (
    MAX_MASKED_FRACTION,
    MIN_READ_BASES,
    Aligner,
    call_genome,
    read_genomes,
)
from growformer.data.sarscov2.cache import default_cache_dir, load_tree_leaves
from growformer.data.sarscov2.calls import FORMATS, detect_format, read_calls
from growformer.data.sarscov2.dataset import spike_tokenizer, spike_tokens, variable_sites
from growformer.data.sarscov2.fasta import LabeledSequences, read_fasta_labels, read_label_rows
from growformer.data.sarscov2.genome import (
    AMINO_ACIDS,
    GENOME_LENGTH,
    PROTEIN_ALPHABET,
    ROOT_MUTATIONS,
    SPIKE_END,
    SPIKE_LENGTH,
    SPIKE_START,
    read_reference,
    spike_nucleotides,
    spike_of_genome,
    translate,
)
from growformer.data.sarscov2.genotypes import (
    AMPLICON_LENGTH,
    GenomeEncoder,
    amplicon_spans,
    genotype_tokens,
    mask_amplicons,
    mutated_span,
    mutation_tokenizer,
    recombine,
    synthetic_recombinants,
)
from growformer.data.sarscov2.lineages import (
    OTHER,
    RECOMBINANT,
    UNASSIGNED,
    WHO_LABELS,
    dealias,
    designation_order,
    parent_lineage,
    read_aliases,
    top_lineage_labels,
    who_label,
)
from growformer.data.sarscov2.location import (
    ALIAS_FILE,
    DEBIAN_DATA_DIR,
    REFERENCE_FILE,
    TREE_FILE,
    TreeFiles,
    locate_files,
)
from growformer.data.sarscov2.mutations import (
    QC_FAIL,
    QC_PASS,
    GenomeCall,
    Mutation,
    Span,
    mutation_name,
    parse_mutation,
    spike_protein,
)
from growformer.data.sarscov2.simulate import Damage, damage, genome_sequence
from growformer.data.sarscov2.splits import (
    SequenceSplit,
    split_by_lineage,
    split_by_sequence,
    split_future,
)
from growformer.data.sarscov2.tree import TreeLeaves, decode_tree, parse_newick
from growformer.data.sarscov2.variants import REFERENCE_NAMES, read_nextclade, read_vcf

__all__ = [
    "ALIAS_FILE",
    "AMINO_ACIDS",
    "AMPLICON_LENGTH",
    "DEBIAN_DATA_DIR",
    "FORMATS",
    "GENOME_LENGTH",
    "MAX_MASKED_FRACTION",
    "MIN_READ_BASES",
    "OTHER",
    "PROTEIN_ALPHABET",
    "QC_FAIL",
    "QC_PASS",
    "RECOMBINANT",
    "REFERENCE_FILE",
    "REFERENCE_NAMES",
    "ROOT_MUTATIONS",
    "SPIKE_END",
    "SPIKE_LENGTH",
    "SPIKE_START",
    "TREE_FILE",
    "UNASSIGNED",
    "WHO_LABELS",
    "Aligner",
    "Damage",
    "GenomeCall",
    "GenomeEncoder",
    "LabeledSequences",
    "Mutation",
    "SequenceSplit",
    "Span",
    "TreeFiles",
    "TreeLeaves",
    "amplicon_spans",
    "call_genome",
    "damage",
    "dealias",
    "decode_tree",
    "default_cache_dir",
    "designation_order",
    "detect_format",
    "genome_sequence",
    "genotype_tokens",
    "load_tree_leaves",
    "locate_files",
    "mask_amplicons",
    "mutated_span",
    "mutation_name",
    "mutation_tokenizer",
    "parent_lineage",
    "parse_mutation",
    "parse_newick",
    "read_aliases",
    "read_calls",
    "read_fasta_labels",
    "read_genomes",
    "read_label_rows",
    "read_nextclade",
    "read_reference",
    "read_vcf",
    "recombine",
    "spike_nucleotides",
    "spike_of_genome",
    "spike_protein",
    "spike_tokenizer",
    "spike_tokens",
    "split_by_lineage",
    "split_by_sequence",
    "split_future",
    "synthetic_recombinants",
    "top_lineage_labels",
    "translate",
    "variable_sites",
    "who_label",
]
