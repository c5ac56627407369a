"""Decoding an UShER mutation-annotated tree into its samples' lineages and genotypes.

The tree file (`lineageTree.pb`, an UShER mutation-annotated tree of the pangoLEARN designated
sequences) stores each representative genome as the nucleotide substitutions on its path from
the root; a leaf's genotype, its substitutions against MN908947.3 genome-wide, is what those
changes leave after the root's own (lineage A is the reference plus `ROOT_MUTATIONS`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from growformer.data.sarscov2.genome import BASES, GENOME_LENGTH, ROOT_MUTATIONS, read_reference
from growformer.data.sarscov2.lineages import UNASSIGNED
from growformer.data.sarscov2.mutations import Mutation
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
    mutations: list[list[tuple[int, int]]]  # per node (pre-order): (position, base code)
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
                    if not 1 <= position <= GENOME_LENGTH:
                        raise ValueError(f"mutation at {position} is outside the genome")
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


def _leaf_genotypes(
    parents: list[int], mutations: list[list[tuple[int, int]]], reference: str
) -> list[tuple[Mutation, ...] | None]:
    """Substitutions against ``reference`` of every node without children (None for the
    others), sorted by position."""
    root = dict(ROOT_MUTATIONS)
    # Each node's changes against the reference; a node without mutations shares its
    # parent's dict, so only branches that change something cost memory.
    states: list[dict[int, str]] = []
    for parent, changes in zip(parents, mutations, strict=True):
        state = states[parent] if parent >= 0 else root
        if changes:
            state = dict(state)
            for position, code in changes:
                base = BASES[code]
                if base == reference[position - 1]:
                    state.pop(position, None)  # back to the reference base
                else:
                    state[position] = base
        states.append(state)
    has_children = [False] * len(parents)
    for parent in parents:
        if parent >= 0:
            has_children[parent] = True
    genotypes: dict[int, tuple[Mutation, ...]] = {}  # id(state) -> genotype; states stay alive
    result: list[tuple[Mutation, ...] | None] = []
    for node, state in enumerate(states):
        if has_children[node]:
            result.append(None)
            continue
        key = id(state)
        if key not in genotypes:
            genotypes[key] = tuple(sorted(state.items()))
        result.append(genotypes[key])
    return result


@dataclass
class TreeLeaves:
    """The samples of a lineage tree with their lineage and genotype.

    Args:
        names: Sample names (the tree's leaf names, condensed nodes expanded).
        lineages: Pango lineage of each sample (nearest annotation towards the root).
        genotypes: Substitutions of each sample against MN908947.3, genome-wide, sorted by
            position (samples of one genotype share one tuple).
        tree_sha256: SHA-256 of the tree file (the data's version).
        from_cache: Whether they were read from the cache rather than decoded.
    """

    names: list[str]
    lineages: list[str]
    genotypes: list[tuple[Mutation, ...]]
    tree_sha256: str = ""
    from_cache: bool = False


def decode_tree(tree: str | Path, reference: str | Path) -> TreeLeaves:
    """Decode an UShER mutation-annotated tree into its samples' lineages and genotypes.

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
        ("mutation lists", parsed.mutations),
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
    genotypes = _leaf_genotypes(parents, parsed.mutations, genome)
    leaves = TreeLeaves([], [], [], hashlib.sha256(raw).hexdigest())
    for name, lineage, genotype in zip(names, lineages, genotypes, strict=True):
        if genotype is None:
            continue
        for sample in parsed.condensed.get(name, [name]):
            leaves.names.append(sample)
            leaves.lineages.append(lineage)
            leaves.genotypes.append(genotype)
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
