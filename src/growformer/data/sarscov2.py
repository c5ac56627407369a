"""SARS-CoV-2 spike proteins labelled by lineage: the pangoLEARN UShER tree and user FASTA files.

The tree file (`lineageTree.pb`, an UShER mutation-annotated tree of the pangoLEARN
designated sequences) stores each representative genome as the nucleotide substitutions on its
path from the root. This module decodes it without a protobuf dependency, rebuilds every
leaf's spike protein, labels leaves by Pango lineage or WHO variant, and provides what a task
needs on top: a split that keeps identical sequences on one side, the variable sites, and a
residue or k-mer tokenizer.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import itertools
import json
import os
import re
import tempfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from growformer.data.files import read_utf8
from growformer.data.tokenizer import Tokenizer
from growformer.errors import DataError

GENOME_LENGTH = 29_903  # Wuhan-Hu-1 (MN908947.3); user genomes must be aligned to it
SPIKE_START = 21_563  # 1-based genome position of the spike gene's first nucleotide
SPIKE_LENGTH = 1_273  # residues; the terminal stop codon is not one
ROOT_MUTATIONS: tuple[tuple[int, str], ...] = ((8_782, "T"), (28_144, "C"))
"""Lineage A, the tree's root, is the reference genome with these (position, base) changes."""

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
PROTEIN_ALPHABET = AMINO_ACIDS + "X*"  # X: unknown residue, *: stop codon
WHO_LABELS: tuple[str, ...] = ("Alpha", "Beta", "Gamma", "Delta", "Omicron", "Recombinant", "Other")
# De-aliased Pango names whose descendants carry the WHO label (P.1 is B.1.1.28.1, AY is
# B.1.617.2, BA is B.1.1.529); recombinants (X*) are recognised by name.
_WHO_ROOTS: tuple[tuple[str, str], ...] = (
    ("B.1.1.7", "Alpha"),
    ("B.1.351", "Beta"),
    ("B.1.1.28.1", "Gamma"),
    ("B.1.617.2", "Delta"),
    ("B.1.1.529", "Omicron"),
)

TREE_FILE = "lineageTree.pb"
REFERENCE_FILE = "MN908947.3.fasta"
ALIAS_FILE = "alias_key.json"
DEBIAN_DATA_DIR = Path("/usr/share/python3-pangolearn/data")  # apt-get install python3-pangolearn
UNASSIGNED = "Unassigned"  # lineage of a leaf with no clade annotation up to the root
OTHER = "other"  # label of lineages outside the most frequent ones

_CACHE_FORMAT = 1  # bump when the cached content or its meaning changes
_SPIKE_END = SPIKE_START + 3 * SPIKE_LENGTH  # 1-based, exclusive: the stop codon is not tracked
_BASES = "ACGT"  # the tree's base codes 0..3
_CODONS = {
    "".join(codon): aa
    for codon, aa in zip(
        itertools.product("TCAG", repeat=3),
        "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG",
        strict=True,
    )
}
# IUPAC ambiguity codes occur in real consensus genomes; codons holding them translate to X.
_NUCLEOTIDES = frozenset("ACGTNRYKMSWBDHV-")
_NEWICK_TOKEN = re.compile(r"[(),;]|[^(),;]+")


def translate(nucleotides: str) -> str:
    """Translate a coding sequence with the standard genetic code.

    Args:
        nucleotides: Upper-case nucleotides, read in frame from the first; a trailing partial
            codon is ignored.

    Returns:
        One residue per codon: stops as "*", codons with N, gaps or ambiguity codes as "X".
    """
    return "".join(
        _CODONS.get(nucleotides[i : i + 3], "X") for i in range(0, len(nucleotides) - 2, 3)
    )


def spike_of_genome(genome: str) -> str:
    """The spike protein of a reference-aligned genome (terminal stop excluded).

    Args:
        genome: Upper-case genome of `GENOME_LENGTH` nucleotides, aligned to MN908947.3.

    Returns:
        The `SPIKE_LENGTH` residues.
    """
    return translate(spike_nucleotides(genome))


def spike_nucleotides(genome: str) -> str:
    """The spike gene's coding nucleotides (stop codon excluded) of an aligned genome.

    Args:
        genome: Genome of `GENOME_LENGTH` nucleotides.

    Returns:
        Its `3 * SPIKE_LENGTH` spike nucleotides.
    """
    return genome[SPIKE_START - 1 : _SPIKE_END - 1]


# --- protobuf wire format ----------------------------------------------------------------------


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, a, b) of each field of the message in buf[start:end].

    Varints give (value, 0); length-delimited fields give their payload span (a, b); the
    fixed-width types, which parsimony.proto does not use, are skipped over.
    """
    i = start
    while i < end:
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
            yield number, wire, value, 0
        elif wire == 2:
            size, i = _varint(buf, i)
            if i + size > end:
                raise IndexError("length-delimited field runs past its message")
            yield number, wire, i, i + size
            i += size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    if i != end:
        raise IndexError("field runs past its message")


def _new_base(buf: bytes, start: int, end: int) -> tuple[int, int]:
    """(position, new base code) of a `mut` message: mut_nuc[0], packed or not."""
    position = base = -1
    for number, wire, a, b in _fields(buf, start, end):
        if number == 1 and wire == 0:
            position = a
        elif number == 4 and base < 0:
            # proto3 packs repeated int32 by default, but the unpacked encoding is also valid.
            if wire == 0:
                base = a
            elif b > a:
                base = _varint(buf, a)[0]
    return position, base


@dataclass
class _Tree:
    newick: str
    spike_mutations: list[list[tuple[int, int]]]  # per node (pre-order): (position, base code)
    annotations: list[str]  # per node: its Pango lineage, or "" where none starts there
    condensed: dict[str, list[str]]  # leaf name -> the identical samples it stands for


def _read_tree(path: Path, raw: bytes) -> _Tree:
    newick = ""
    mutations: list[list[tuple[int, int]]] = []
    annotations: list[str] = []
    condensed: dict[str, list[str]] = {}
    try:
        for number, wire, a, b in _fields(raw, 0, len(raw)):
            if wire != 2:
                continue
            if number == 1:
                newick = raw[a:b].decode("utf-8")
            elif number == 2:
                node: list[tuple[int, int]] = []
                for _, _, ma, mb in _fields(raw, a, b):
                    position, base = _new_base(raw, ma, mb)
                    if not 0 <= base < 4:
                        raise ValueError(f"mutation at {position} has no valid new base")
                    # Only the spike region matters; skipping the rest keeps the walk cheap.
                    if SPIKE_START <= position < _SPIKE_END:
                        node.append((position, base))
                mutations.append(node)
            elif number == 3:
                name, samples = "", []
                for tag, _, x, y in _fields(raw, a, b):
                    if tag == 1:
                        name = raw[x:y].decode("utf-8")
                    elif tag == 2:
                        samples.append(raw[x:y].decode("utf-8"))
                condensed[name] = samples
            elif number == 4:
                entries = [raw[x:y].decode("utf-8") for _, _, x, y in _fields(raw, a, b)]
                # pangoLEARN trees hold only the Pango lineage; matUtils-annotated trees hold
                # [Nextstrain clade, Pango lineage]: the lineage is the last entry either way.
                annotations.append(entries[-1] if entries else "")
    except (IndexError, ValueError) as e:  # truncation, bad UTF-8, unknown wire types
        raise DataError(f"tree file {path} is not a valid UShER tree ({e})") from e
    if not newick:
        raise DataError(f"tree file {path} has no Newick tree; is it an UShER .pb file?")
    return _Tree(newick, mutations, annotations, condensed)


def parse_newick(newick: str) -> tuple[list[int], list[str]]:
    """Parse a Newick tree into its nodes in pre-order, without recursion.

    Branch lengths are dropped; unnamed nodes get the name "".

    Args:
        newick: The tree, e.g. "((a:1,b:2)x:1,c);".

    Returns:
        parents (-1 for the root) and names, indexed by pre-order position.

    Raises:
        ValueError: The parentheses do not balance or a "," is missing.
    """
    parents: list[int] = []
    names: list[str] = []
    open_nodes: list[int] = []
    closed = -1  # the node whose ")" was just read: a label after it names that node
    prev = ""
    for token in _NEWICK_TOKEN.findall(newick):
        if token == "(":
            if prev not in ("(", ",", ""):
                raise ValueError(f"'(' after {prev!r}: a ',' is missing")
            # Numbering a node when it opens, before its children, gives pre-order.
            parents.append(open_nodes[-1] if open_nodes else -1)
            names.append("")
            open_nodes.append(len(names) - 1)
        elif token in ",)":
            if not open_nodes:
                raise ValueError(f"{token!r} outside the parentheses")
            if prev in ("(", ","):  # "(,)": an unnamed leaf
                parents.append(open_nodes[-1])
                names.append("")
            if token == ")":
                closed = open_nodes.pop()
        elif token == ";":
            break
        else:
            label = token.strip()
            if not label:
                continue  # whitespace between tokens
            name = label.split(":", 1)[0].strip()
            if prev == ")":
                names[closed] = name
            else:  # after "(", "," or at the start: a leaf
                parents.append(open_nodes[-1] if open_nodes else -1)
                names.append(name)
        prev = token
    if open_nodes:
        raise ValueError("unbalanced '('")
    return parents, names


def _leaf_spikes(
    parents: list[int], mutations: list[list[tuple[int, int]]], reference_spike: str
) -> list[str]:
    """Spike protein of every node that has no children ('' for internal nodes)."""
    offset = SPIKE_START  # genome position of reference_spike[0]
    root: dict[int, str] = {}
    for position, base in ROOT_MUTATIONS:
        if SPIKE_START <= position < _SPIKE_END:
            root[position - offset] = base
    # Each node's spike as changes against the reference; a node without spike mutations
    # shares its parent's dict, so only branches that change the spike cost memory.
    states: list[dict[int, str]] = []
    for parent, changes in zip(parents, mutations, strict=True):
        state = states[parent] if parent >= 0 else root
        if changes:
            state = dict(state)
            for position, code in changes:
                base = _BASES[code]
                if base == reference_spike[position - offset]:
                    state.pop(position - offset, None)
                else:
                    state[position - offset] = base
        states.append(state)
    has_children = [False] * len(parents)
    for parent in parents:
        if parent >= 0:
            has_children[parent] = True
    reference_protein = translate(reference_spike)
    proteins: dict[int, str] = {}  # id(state) -> protein; states stay alive in `states`
    result = []
    for node, state in enumerate(states):
        if has_children[node]:
            result.append("")
            continue
        key = id(state)
        if key not in proteins:
            # Translation is codon-local: only codons holding a change differ from the
            # reference protein, so retranslate those alone.
            residues = list(reference_protein)
            for codon in {i // 3 for i in state}:
                nts = "".join(
                    state.get(i, reference_spike[i]) for i in range(3 * codon, 3 * codon + 3)
                )
                residues[codon] = _CODONS[nts]
            proteins[key] = "".join(residues)
        result.append(proteins[key])
    return result


@dataclass
class TreeLeaves:
    """The samples of a lineage tree with their lineage and spike protein.

    Args:
        names: Sample names (the tree's leaf names, condensed nodes expanded).
        lineages: Pango lineage of each sample (nearest annotation towards the root).
        proteins: Spike protein of each sample, `SPIKE_LENGTH` residues, reference-aligned.
        from_cache: Whether they were read from the cache rather than decoded.
    """

    names: list[str]
    lineages: list[str]
    proteins: list[str]
    from_cache: bool = False


def decode_tree(tree: str | Path, reference: str | Path) -> TreeLeaves:
    """Decode an UShER mutation-annotated tree into its samples' lineages and spike proteins.

    Args:
        tree: The `.pb` file (e.g. pangoLEARN's lineageTree.pb).
        reference: FASTA file of the reference genome MN908947.3.

    Returns:
        The samples, in the tree's pre-order.

    Raises:
        DataError: A file is missing or malformed, or the tree disagrees with itself.
    """
    tree = Path(tree)
    return _decode(tree, _read_bytes(tree, "tree file"), read_reference(reference))


def _decode(path: Path, raw: bytes, genome: str) -> TreeLeaves:
    parsed = _read_tree(path, raw)
    try:
        parents, names = parse_newick(parsed.newick)
    except ValueError as e:
        raise DataError(f"tree file {path} has a malformed Newick tree ({e})") from e
    # Both lists are indexed by pre-order node; a tree without metadata cannot be labelled.
    for what, items in (
        ("mutation lists", parsed.spike_mutations),
        ("metadata", parsed.annotations),
    ):
        if len(items) != len(parents):
            raise DataError(
                f"tree file {path} has {len(parents)} nodes in its Newick tree but "
                f"{len(items)} {what}"
            )
    lineages: list[str] = []
    for parent, annotation in zip(parents, parsed.annotations, strict=True):
        inherited = lineages[parent] if parent >= 0 else UNASSIGNED
        lineages.append(annotation or inherited)
    spikes = _leaf_spikes(parents, parsed.spike_mutations, spike_nucleotides(genome))
    leaves = TreeLeaves([], [], [])
    for name, lineage, protein in zip(names, lineages, spikes, strict=True):
        if not protein:
            continue
        for sample in parsed.condensed.get(name, [name]):
            leaves.names.append(sample)
            leaves.lineages.append(lineage)
            leaves.proteins.append(protein)
    return leaves


def _read_bytes(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist or is not a file")
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{what} {path} cannot be read: {e.strerror}") from e


def read_reference(path: str | Path) -> str:
    """Read the reference genome MN908947.3 from a single-record FASTA file.

    Args:
        path: The FASTA file.

    Returns:
        The genome, upper case.

    Raises:
        DataError: The file is missing, not FASTA, or not a 29,903-nt ACGT genome.
    """
    path = Path(path)
    lines = read_utf8(path, "reference genome file").splitlines()
    if not lines or not lines[0].startswith(">"):
        raise DataError(f"reference genome file {path} is not FASTA (no '>' header on line 1)")
    genome = "".join(line.strip() for line in lines[1:] if not line.startswith(">")).upper()
    other = sorted(set(genome) - set(_BASES))
    if len(genome) != GENOME_LENGTH or other:
        found = f"{len(genome):,} nucleotides" + (f" with {''.join(other)[:10]}" if other else "")
        raise DataError(
            f"reference genome file {path} is not MN908947.3: expected {GENOME_LENGTH:,} "
            f"nucleotides of ACGT, got {found}"
        )
    return genome


# --- cache ---------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """The leaf cache directory: $GROWFORMER_CACHE/sarscov2, else ~/.cache/growformer/sarscov2."""
    root = os.environ.get("GROWFORMER_CACHE")
    return Path(root) / "sarscov2" if root else Path.home() / ".cache" / "growformer" / "sarscov2"


def load_tree_leaves(
    tree: str | Path, reference: str | Path, cache_dir: str | Path | None = None
) -> TreeLeaves:
    """`decode_tree`, cached on disk by the SHA-256 of the tree file and of the reference.

    A different tree or reference file gets a different cache entry, so a stale one is never
    served; a corrupt entry is rebuilt. A cache directory that cannot be written only costs
    the decoding time of the next load.

    Args:
        tree: The UShER `.pb` file.
        reference: FASTA file of the reference genome MN908947.3.
        cache_dir: Cache directory; None uses `default_cache_dir()`.

    Returns:
        The samples, `from_cache` telling whether the cache served them.

    Raises:
        DataError: As `decode_tree`.
    """
    tree = Path(tree)
    raw = _read_bytes(tree, "tree file")
    genome = read_reference(reference)
    key = {
        "format": _CACHE_FORMAT,
        "tree_sha256": hashlib.sha256(raw).hexdigest(),
        "reference_sha256": hashlib.sha256(genome.encode()).hexdigest(),
    }
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / (
        f"leaves-v{_CACHE_FORMAT}-{key['tree_sha256'][:20]}-{key['reference_sha256'][:12]}.json.gz"
    )
    cached = _read_cache(path, key)
    if cached is not None:
        return cached
    leaves = _decode(tree, raw, genome)
    _write_cache(path, key, leaves)
    return leaves


def _read_cache(path: Path, key: dict[str, object]) -> TreeLeaves | None:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            data = json.load(f)
        if {k: data[k] for k in key} != key:
            return None
        proteins = data["proteins"]
        names, lineages, index = data["names"], data["lineages"], data["protein_index"]
        leaves = TreeLeaves(names, lineages, [proteins[i] for i in index], from_cache=True)
        if not len(names) == len(lineages) == len(leaves.proteins):
            return None
        return leaves
    except (OSError, EOFError, zlib.error, ValueError, KeyError, TypeError, IndexError):
        return None  # missing, cut off, corrupt or foreign: decode again and overwrite it


def _write_cache(path: Path, key: dict[str, object], leaves: TreeLeaves) -> None:
    # 42k leaves share ~5k proteins: store each protein once.
    distinct = {p: i for i, p in enumerate(dict.fromkeys(leaves.proteins))}
    data = {
        **key,
        "names": leaves.names,
        "lineages": leaves.lineages,
        "proteins": list(distinct),
        "protein_index": [distinct[p] for p in leaves.proteins],
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written beside the target and renamed: a reader never sees a half-written file,
        # and concurrent writers each replace it with a complete one.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as z:
                z.write(json.dumps(data, separators=(",", ":")).encode("utf-8"))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        pass  # read-only or full disk: the data were decoded, only the next load is slower


# --- data location -------------------------------------------------------------------------------


@dataclass
class TreeFiles:
    """Where the files of the sarscov2 task are.

    Args:
        tree: The UShER `.pb` file.
        reference: Reference genome FASTA.
        alias_key: Pango alias table (None when not needed).
    """

    tree: Path
    reference: Path
    alias_key: Path | None


def locate_files(
    data_dir: str | Path | None,
    reference: str | Path | None,
    alias_key: str | Path | None,
    *,
    need_aliases: bool,
) -> TreeFiles:
    """Find the tree, the reference genome and the alias table.

    The directory is `data_dir`, else $GROWFORMER_SARSCOV2_DIR, else `DEBIAN_DATA_DIR`. The
    Debian package ships only the tree, so the reference and alias table may be given as
    paths of their own.

    Args:
        data_dir: Directory holding lineageTree.pb (and possibly the other two files).
        reference: MN908947.3 FASTA; None looks for MN908947.3.fasta in the directory.
        alias_key: Pango alias_key.json; None looks for it in the directory.
        need_aliases: Whether the alias table is needed (WHO labels).

    Returns:
        The files.

    Raises:
        DataError: A needed file is missing; the message says how to pass it.
    """
    env = os.environ.get("GROWFORMER_SARSCOV2_DIR")
    directory = Path(data_dir or env or DEBIAN_DATA_DIR)
    tree = directory / TREE_FILE
    if not tree.is_file():
        how = "given" if data_dir else "from GROWFORMER_SARSCOV2_DIR" if env else "default"
        raise DataError(
            f"SARS-CoV-2 tree {tree} not found ({how} directory): pass data_dir (--data-dir "
            f"DIR) holding {TREE_FILE}, set GROWFORMER_SARSCOV2_DIR, or install the Debian "
            "package python3-pangolearn"
        )
    ref = Path(reference) if reference is not None else directory / REFERENCE_FILE
    if not ref.is_file():
        raise DataError(
            f"reference genome {ref} not found: pass option reference=PATH to a FASTA of "
            f"Wuhan-Hu-1 (GenBank MN908947.3) or put {REFERENCE_FILE} in {directory}"
        )
    aliases = None
    if need_aliases:
        aliases = Path(alias_key) if alias_key is not None else directory / ALIAS_FILE
        if not aliases.is_file():
            raise DataError(
                f"Pango alias table {aliases} not found (WHO labels need it): pass option "
                f"alias_key=PATH to {ALIAS_FILE} of the pango-designation repository, put it "
                f"in {directory}, or use label='lineage'"
            )
    return TreeFiles(tree, ref, aliases)


# --- labels --------------------------------------------------------------------------------------


def read_aliases(path: str | Path) -> dict[str, str | list[str]]:
    """Read a Pango alias table (alias_key.json of pango-designation).

    Args:
        path: The JSON file.

    Returns:
        Alias -> full name ("" for the roots A and B, a list of parents for recombinants).

    Raises:
        DataError: The file is not a JSON object of strings or string lists.
    """
    path = Path(path)
    try:
        table = json.loads(read_utf8(path, "alias table"))
    except json.JSONDecodeError as e:
        raise DataError(f"alias table {path} is not valid JSON (line {e.lineno})") from e
    if not isinstance(table, dict) or not all(
        isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v))
        for v in table.values()
    ):
        raise DataError(f"alias table {path} is not an object of names or name lists")
    return table


def dealias(lineage: str, aliases: dict[str, str | list[str]]) -> str:
    """Expand a Pango lineage's alias prefix: "AY.4" -> "B.1.617.2.4", "P.1" -> "B.1.1.28.1".

    Recombinant names (X*) and the roots A and B are already full names.

    Args:
        lineage: A Pango lineage.
        aliases: The alias table (`read_aliases`).

    Returns:
        The de-aliased lineage.

    Raises:
        DataError: The prefix is not in the table (an alias table older than the tree), or
            the table's aliases form a cycle.
    """
    if lineage == UNASSIGNED:
        return lineage
    name = lineage
    for _ in range(len(aliases) + 1):
        head, _, rest = name.partition(".")
        if head.startswith("X"):
            return name
        if head not in aliases:
            raise DataError(
                f"lineage {lineage!r}: alias {head!r} is not in the alias table (is the table "
                "older than the tree?)"
            )
        target = aliases[head]
        if not target or not isinstance(target, str):
            return name  # a root ("" for A and B) or a recombinant's list of parents
        name = f"{target}.{rest}" if rest else target
    raise DataError(f"lineage {lineage!r}: the alias table's aliases form a cycle")


def who_label(full_name: str) -> str:
    """WHO variant label of a de-aliased Pango lineage (one of `WHO_LABELS`).

    Args:
        full_name: A lineage as returned by `dealias`.

    Returns:
        The label; prefixes match whole name components (B.1.1.7 is not B.1.1.70).
    """
    if full_name.startswith("X"):
        return "Recombinant"
    for root, label in _WHO_ROOTS:
        if full_name == root or full_name.startswith(root + "."):
            return label
    return "Other"


def top_lineage_labels(lineages: Sequence[str], n: int) -> tuple[list[str], list[str]]:
    """Keep the `n` most frequent lineages as labels and call the rest `OTHER`.

    Args:
        lineages: Lineage per sample.
        n: How many lineages keep their name (ties broken by name).

    Returns:
        The label per sample and the label names (most frequent first, `OTHER` last if used).
    """
    counts = Counter(lineages)
    kept = sorted(counts, key=lambda s: (-counts[s], s))[:n]
    keep = set(kept)
    labels = [s if s in keep else OTHER for s in lineages]
    return labels, kept + ([OTHER] if len(keep) < len(counts) else [])


# --- split, sites, tokens ------------------------------------------------------------------------


@dataclass
class SequenceSplit:
    """Train/test examples, with identical sequences always on one side.

    Args:
        train: (sequence, label) examples for training.
        test: (sequence, label) examples for testing.
        info: Sizes per side: samples, distinct sequences and examples, and the number of
            sequences whose samples carry different labels.
    """

    train: list[tuple[str, str]]
    test: list[tuple[str, str]]
    info: dict[str, int] = field(default_factory=dict)


def split_by_sequence(
    sequences: Sequence[str],
    labels: Sequence[str],
    *,
    test_fraction: float,
    seed: int,
    dedup: bool,
) -> SequenceSplit:
    """Split samples into train and test by distinct sequence, stratified by label.

    Splitting samples would put copies of one sequence on both sides and score memory, not
    generalisation. Each distinct sequence goes to the class of its most frequent label, and
    each class's sequences are split on their own, so a class with two or more distinct
    sequences is represented on both sides.

    Args:
        sequences: Sequence per sample.
        labels: Label per sample.
        test_fraction: Share of each class's distinct sequences that go to test.
        seed: Seed of the shuffle.
        dedup: One example per distinct (sequence, label) instead of one per sample. Copies of
            a sequence carry no new information, only weight: in the lineage tree 42,213
            samples hold 5,469 distinct spikes, so common lineages would dominate training and
            the test score by sheer repetition.

    Returns:
        The examples, in a deterministic order.
    """
    by_sequence: dict[str, Counter[str]] = defaultdict(Counter)
    for sequence, label in zip(sequences, labels, strict=True):
        by_sequence[sequence][label] += 1
    by_class: dict[str, list[str]] = defaultdict(list)
    for sequence in sorted(by_sequence):
        counts = by_sequence[sequence]
        by_class[min(counts, key=lambda s: (-counts[s], s))].append(sequence)
    gen = torch.Generator().manual_seed(seed)
    test_sequences: set[str] = set()
    for label in sorted(by_class):
        group = by_class[label]
        n = len(group)
        n_test = min(max(1, round(n * test_fraction)), n - 1) if n >= 2 else 0
        test_sequences.update(group[i] for i in torch.randperm(n, generator=gen)[:n_test].tolist())
    split = SequenceSplit([], [])
    samples = {"train": 0, "test": 0}
    for sequence in sorted(by_sequence):
        side = "test" if sequence in test_sequences else "train"
        examples = split.test if side == "test" else split.train
        for label, count in sorted(by_sequence[sequence].items()):
            examples.extend([(sequence, label)] * (1 if dedup else count))
            samples[side] += count
    split.info = {
        "train_samples": samples["train"],
        "test_samples": samples["test"],
        "train_sequences": len(by_sequence) - len(test_sequences),
        "test_sequences": len(test_sequences),
        "train_examples": len(split.train),
        "test_examples": len(split.test),
        "label_conflicting_sequences": sum(len(c) > 1 for c in by_sequence.values()),
    }
    return split


def variable_sites(sequences: Sequence[str], reference: str, min_count: int = 1) -> list[int]:
    """Positions where at least `min_count` of the distinct sequences differ from the reference.

    Args:
        sequences: Aligned sequences, each as long as `reference`.
        reference: The reference sequence.
        min_count: Distinct sequences that must differ at a position for it to be kept
            (more than 1 leaves out sites that a single sequence varies at).

    Returns:
        0-based positions, ascending.
    """
    counts: Counter[int] = Counter()
    for sequence in set(sequences):
        counts.update(i for i, (a, b) in enumerate(zip(sequence, reference, strict=True)) if a != b)
    return sorted(i for i, n in counts.items() if n >= min_count)


def spike_tokens(sequence: str, sites: Sequence[int] | None, k: int) -> list[str]:
    """A protein as tokens: the residues at `sites`, as overlapping k-mers.

    With `sites`, a k-mer joins consecutive kept sites, which need not be neighbours in the
    protein. `" ".join(tokens)` is the text form that `Tokenizer.encode` takes.

    Args:
        sequence: Protein sequence.
        sites: 0-based positions to keep, in order; None keeps all.
        k: Residues per token (1: one token per residue).

    Returns:
        The tokens.
    """
    kept = sequence if sites is None else "".join(sequence[i] for i in sites)
    return [kept[i : i + k] for i in range(len(kept) - k + 1)]


def spike_tokenizer(k: int, train_tokens: Sequence[Sequence[str]]) -> Tokenizer:
    """Word-level tokenizer of residues (k=1) or of the k-mers seen in training (k>1).

    Args:
        k: Residues per token.
        train_tokens: Training sequences as `spike_tokens` returns them (only read for k>1).

    Returns:
        The tokenizer; k-mers absent from training encode as `[UNK]`.
    """
    if k == 1:
        return Tokenizer.word_level(list(PROTEIN_ALPHABET))
    return Tokenizer.word_level(sorted({t for tokens in train_tokens for t in tokens}))


# --- user FASTA ----------------------------------------------------------------------------------


@dataclass
class LabeledSequences:
    """Spike proteins with labels read from a user's FASTA and labels CSV.

    Args:
        ids: Record ids, in FASTA order.
        sequences: Spike protein per record (genomes translated).
        labels: Label per record.
        kind: "protein" or "genome": what the FASTA records were.
        dropped: One message per record or label row left out (only with skip_bad).
    """

    ids: list[str]
    sequences: list[str]
    labels: list[str]
    kind: str
    dropped: list[str] = field(default_factory=list)


@dataclass
class _Record:
    id: str
    line: int  # of the header
    chunks: list[tuple[int, str]]  # (line number, sequence text)


def _fasta_records(path: Path) -> list[_Record]:
    records: list[_Record] = []
    for number, line in enumerate(read_utf8(path, "FASTA file").splitlines(), 1):
        text = line.strip()
        if not text:
            continue
        if text.startswith(">"):
            words = text[1:].split(maxsplit=1)
            records.append(_Record(words[0] if words else "", number, []))
        elif not records:
            raise DataError(
                f"FASTA file {path} line {number}: sequence before the first '>' header "
                "(not a FASTA file?)"
            )
        else:
            records[-1].chunks.append((number, text.upper()))
    if not records:
        raise DataError(f"FASTA file {path} is empty")
    return records


def _check_record(path: Path, record: _Record) -> tuple[str, str]:
    """(kind, spike protein) of a record; DataError if it is neither a genome nor a protein."""
    where = f"FASTA file {path} line {record.line}: record '{record.id}'"
    sequence = "".join(text for _, text in record.chunks)
    if not sequence:
        raise DataError(f"{where} has no sequence")
    # Proteins are ~30% A/C/G/T/N, genomes nearly all: the share tells the two apart even
    # when a record holds a few bad characters.
    nucleotide_share = sum(sequence.count(c) for c in "ACGTN-") / len(sequence)
    kind = "genome" if nucleotide_share > 0.9 else "protein"
    alphabet = _NUCLEOTIDES if kind == "genome" else frozenset(PROTEIN_ALPHABET)
    for number, text in record.chunks:
        bad = next((c for c in text if c not in alphabet), None)
        if bad is not None:
            raise DataError(
                f"FASTA file {path} line {number}: record '{record.id}' ({kind}) has bad "
                f"character {bad!r}"
            )
    if kind == "protein":
        # A terminal stop is notation, not a residue: genome translations leave it out too.
        return kind, sequence[:-1] if sequence.endswith("*") else sequence
    if len(sequence) != GENOME_LENGTH:
        raise DataError(
            f"{where} is a genome of {len(sequence):,} nt; genomes must be aligned to "
            f"MN908947.3 ({GENOME_LENGTH:,} nt)"
        )
    return kind, spike_of_genome(sequence)


def _read_label_rows(path: Path, skip_bad: bool, dropped: list[str]) -> dict[str, tuple[str, int]]:
    """id -> (label, line) of a labels CSV with header `id,label`."""
    content = read_utf8(path, "labels file")
    if not content.strip():
        raise DataError(f"labels file {path} is empty")
    reader = csv.reader(io.StringIO(content, newline=""))
    try:
        header = [h.strip().lower() for h in next(row for row in reader if row)]
        if "id" not in header or "label" not in header:
            raise DataError(
                f"labels file {path} line {reader.line_num}: header must name the columns "
                f"'id' and 'label', got {','.join(header)}"
            )
        ii, li = header.index("id"), header.index("label")
        rows: dict[str, tuple[str, int]] = {}
        end = reader.line_num
        for row in reader:
            line, end = end + 1, reader.line_num
            if not row:
                continue
            problem = None
            if len(row) != len(header):
                problem = f"has {len(row)} field(s), expected {len(header)}"
            elif not row[ii].strip() or not row[li].strip():
                problem = "has an empty id or label"
            elif row[ii].strip() in rows:
                problem = f"repeats id '{row[ii].strip()}' of line {rows[row[ii].strip()][1]}"
            if problem is not None:
                message = f"labels file {path} line {line} {problem}"
                if not skip_bad:
                    raise DataError(message)
                dropped.append(message)
                continue
            rows[row[ii].strip()] = (row[li].strip(), line)
    except csv.Error as e:
        raise DataError(f"labels file {path} near line {reader.line_num} is malformed: {e}") from e
    if not rows:
        raise DataError(f"labels file {path} has a header but no usable rows")
    return rows


def read_fasta_labels(
    fasta: str | Path, labels_csv: str | Path, *, skip_bad: bool = False
) -> LabeledSequences:
    """Read spike sequences and their labels from a FASTA file and a CSV file.

    The FASTA holds either spike proteins (amino acids, X and * allowed) or genomes aligned to
    MN908947.3 (exactly 29,903 nt; IUPAC ambiguity codes, N and - allowed), which are
    translated to their spike protein. The CSV has a header naming `id` and `label`. Record
    ids are the first word of each header line.

    Args:
        fasta: The FASTA file.
        labels_csv: The labels CSV.
        skip_bad: Leave out bad records and rows, listing each in `dropped`, instead of raising.

    Returns:
        The labelled sequences, in FASTA order.

    Raises:
        DataError: Naming the file, the line and the record: a bad character, a genome of the
            wrong length, protein and genome records mixed, a repeated id, a record without a
            label, labels without a record (their count), an empty file or a missing header.
            With skip_bad, only the file-level errors remain.
    """
    fasta, labels_csv = Path(fasta), Path(labels_csv)
    dropped: list[str] = []

    def reject(message: str) -> None:
        if not skip_bad:
            raise DataError(message)
        dropped.append(message)

    rows = _read_label_rows(labels_csv, skip_bad, dropped)
    result = LabeledSequences([], [], [], kind="")
    first: dict[str, _Record] = {}
    first_valid: _Record | None = None  # its kind is the file's kind
    for record in _fasta_records(fasta):
        where = f"FASTA file {fasta} line {record.line}: record '{record.id}'"
        if not record.id:
            reject(f"FASTA file {fasta} line {record.line}: header has no id")
            continue
        if record.id in first:
            reject(f"{where} repeats the id of line {first[record.id].line}")
            continue
        first[record.id] = record
        try:
            kind, protein = _check_record(fasta, record)
        except DataError as e:
            reject(str(e))
            continue
        if first_valid is None:
            first_valid, result.kind = record, kind
        elif kind != result.kind:
            reject(
                f"{where} is a {kind} but record '{first_valid.id}' on line {first_valid.line} "
                f"is a {result.kind}; use one kind per file"
            )
            continue
        if record.id not in rows:
            reject(f"{where} has no label in labels file {labels_csv}")
            continue
        result.ids.append(record.id)
        result.sequences.append(protein)
        result.labels.append(rows[record.id][0])
    orphans = [(line, i) for i, (_, line) in rows.items() if i not in first]
    if orphans:
        orphans.sort()
        reject(
            f"labels file {labels_csv} has {len(orphans)} id(s) with no record in FASTA file "
            f"{fasta} (first: '{orphans[0][1]}' on line {orphans[0][0]})"
        )
    if not result.ids:
        raise DataError(f"FASTA file {fasta} has no usable labelled records")
    result.dropped = dropped
    return result
