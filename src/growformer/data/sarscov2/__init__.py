"""SARS-CoV-2 spike proteins labelled by lineage: the pangoLEARN UShER tree and user FASTA files;
user genomes called against the reference.

The tree file (`lineageTree.pb`, an UShER mutation-annotated tree of the pangoLEARN
designated sequences) stores each representative genome as the nucleotide substitutions on its
path from the root. This package decodes it without a protobuf dependency, rebuilds every
leaf's spike protein, labels leaves by Pango lineage or WHO variant, and provides what a task
needs on top: a split that keeps identical sequences on one side, the variable sites, and a
residue or k-mer tokenizer.

Modules, each importing only those above it:

- `genome`: reference coordinates, the genetic code, translation, the reference FASTA.
- `protobuf`: the wire format, just enough of it to read the tree.
- `lineages`: the Pango alias table, de-aliasing, WHO and top-lineage labels.
- `tree`: decoding the tree into its samples' lineages and spike proteins.
- `cache`: the on-disk cache of decoded trees.
- `location`: where the tree, reference and alias table are.
- `dataset`: the split by distinct sequence, the variable sites, the tokens and tokenizer.
- `fasta`: a user's FASTA file and labels CSV.
- `mutations`: genomes as substitutions against the reference, and a user genome's call.
- `align`: unaligned consensus genomes aligned with minimap2 and called, with QC.
- `variants`: genomes already called: a VCF, Nextclade's results table.
- `calls`: one entry point reading any of these, its format told by its content.
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
from growformer.data.sarscov2.dataset import (
    SequenceSplit,
    spike_tokenizer,
    spike_tokens,
    split_by_sequence,
    variable_sites,
)
from growformer.data.sarscov2.fasta import LabeledSequences, read_fasta_labels
from growformer.data.sarscov2.genome import (
    AMINO_ACIDS,
    GENOME_LENGTH,
    PROTEIN_ALPHABET,
    ROOT_MUTATIONS,
    SPIKE_LENGTH,
    SPIKE_START,
    read_reference,
    spike_nucleotides,
    spike_of_genome,
    translate,
)
from growformer.data.sarscov2.lineages import (
    OTHER,
    UNASSIGNED,
    WHO_LABELS,
    dealias,
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
    mutation_name,
    parse_mutation,
)
from growformer.data.sarscov2.tree import TreeLeaves, decode_tree, parse_newick
from growformer.data.sarscov2.variants import REFERENCE_NAMES, read_nextclade, read_vcf

__all__ = [
    "ALIAS_FILE",
    "AMINO_ACIDS",
    "DEBIAN_DATA_DIR",
    "FORMATS",
    "GENOME_LENGTH",
    "MAX_MASKED_FRACTION",
    "MIN_READ_BASES",
    "OTHER",
    "PROTEIN_ALPHABET",
    "QC_FAIL",
    "QC_PASS",
    "REFERENCE_FILE",
    "REFERENCE_NAMES",
    "ROOT_MUTATIONS",
    "SPIKE_LENGTH",
    "SPIKE_START",
    "TREE_FILE",
    "UNASSIGNED",
    "WHO_LABELS",
    "Aligner",
    "GenomeCall",
    "LabeledSequences",
    "SequenceSplit",
    "TreeFiles",
    "TreeLeaves",
    "call_genome",
    "dealias",
    "decode_tree",
    "default_cache_dir",
    "detect_format",
    "load_tree_leaves",
    "locate_files",
    "mutation_name",
    "parse_mutation",
    "parse_newick",
    "read_aliases",
    "read_calls",
    "read_fasta_labels",
    "read_genomes",
    "read_nextclade",
    "read_reference",
    "read_vcf",
    "spike_nucleotides",
    "spike_of_genome",
    "spike_tokenizer",
    "spike_tokens",
    "split_by_sequence",
    "top_lineage_labels",
    "translate",
    "variable_sites",
    "who_label",
]
