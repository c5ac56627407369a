"""Decoding an UShER mutation-annotated tree into its samples' lineages and spike proteins.

The tree file (`lineageTree.pb`, an UShER mutation-annotated tree of the pangoLEARN designated
sequences) stores each representative genome as the nucleotide substitutions on its path from
the root; a leaf's spike protein is rebuilt by applying them to the reference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from growformer.data.sarscov2.genome import (
    BASES,
    CODONS,
    ROOT_MUTATIONS,
    SPIKE_END,
    SPIKE_START,
    read_reference,
    spike_nucleotides,
    translate,
)
from growformer.data.sarscov2.lineages import UNASSIGNED
from growformer.data.sarscov2.protobuf import fields, varint
from growformer.errors import DataError

_NEWICK_TOKEN = re.compile(r"[(),;]|[^(),;]+")


def _new_base(buf: bytes, start: int, end: int) -> tuple[int, int]:
    """(position, new base code) of a `mut` message: mut_nuc[0], packed or not."""
    position = base = -1
    for number, wire, a, b in fields(buf, start, end):
        if number == 1 and wire == 0:
            position = a
        elif number == 4 and base < 0:
            # proto3 packs repeated int32 by default, but the unpacked encoding is also valid.
            if wire == 0:
                base = a
            elif b > a:
                base = varint(buf, a)[0]
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
        for number, wire, a, b in fields(raw, 0, len(raw)):
            if wire != 2:
                continue
            if number == 1:
                newick = raw[a:b].decode("utf-8")
            elif number == 2:
                node: list[tuple[int, int]] = []
                for _, _, ma, mb in fields(raw, a, b):
                    position, base = _new_base(raw, ma, mb)
                    if not 0 <= base < 4:
                        raise ValueError(f"mutation at {position} has no valid new base")
                    # Only the spike region matters; skipping the rest keeps the walk cheap.
                    if SPIKE_START <= position < SPIKE_END:
                        node.append((position, base))
                mutations.append(node)
            elif number == 3:
                name, samples = "", []
                for tag, _, x, y in fields(raw, a, b):
                    if tag == 1:
                        name = raw[x:y].decode("utf-8")
                    elif tag == 2:
                        samples.append(raw[x:y].decode("utf-8"))
                condensed[name] = samples
            elif number == 4:
                entries = [raw[x:y].decode("utf-8") for _, _, x, y in fields(raw, a, b)]
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
        if SPIKE_START <= position < SPIKE_END:
            root[position - offset] = base
    # Each node's spike as changes against the reference; a node without spike mutations
    # shares its parent's dict, so only branches that change the spike cost memory.
    states: list[dict[int, str]] = []
    for parent, changes in zip(parents, mutations, strict=True):
        state = states[parent] if parent >= 0 else root
        if changes:
            state = dict(state)
            for position, code in changes:
                base = BASES[code]
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
                residues[codon] = CODONS[nts]
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
    return decode_tree_bytes(tree, read_bytes(tree, "tree file"), read_reference(reference))


def decode_tree_bytes(path: Path, raw: bytes, genome: str) -> TreeLeaves:
    """`decode_tree` of a tree file already read, against a reference genome already read.

    Args:
        path: The tree file, named in error messages.
        raw: Its content.
        genome: The reference genome (`read_reference`).

    Returns:
        The samples, in the tree's pre-order.

    Raises:
        DataError: The tree is malformed or disagrees with itself.
    """
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


def read_bytes(path: Path, what: str) -> bytes:
    """The content of a binary file.

    Args:
        path: The file.
        what: What error messages call it, e.g. "tree file".

    Returns:
        Its bytes.

    Raises:
        DataError: The file is missing, not a file, or unreadable.
    """
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist or is not a file")
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{what} {path} cannot be read: {e.strerror}") from e
