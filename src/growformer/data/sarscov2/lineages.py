"""Labels of Pango lineages: the alias table, de-aliasing, WHO variants, top lineages,
designation order and parents."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from growformer.errors import DataError, read_utf8

RECOMBINANT = "Recombinant"
WHO_LABELS: tuple[str, ...] = ("Alpha", "Beta", "Gamma", "Delta", "Omicron", RECOMBINANT, "Other")
# De-aliased Pango names whose descendants carry the WHO label (P.1 is B.1.1.28.1, AY is
# B.1.617.2, BA is B.1.1.529); recombinants (X*) are recognised by name.
_WHO_ROOTS: tuple[tuple[str, str], ...] = (
    ("B.1.1.7", "Alpha"),
    ("B.1.351", "Beta"),
    ("B.1.1.28.1", "Gamma"),
    ("B.1.617.2", "Delta"),
    ("B.1.1.529", "Omicron"),
)


UNASSIGNED = "Unassigned"  # lineage of a leaf with no clade annotation up to the root
OTHER = "other"  # label of lineages outside the most frequent ones


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
        return RECOMBINANT
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


def designation_order(aliases: dict[str, str | list[str]]) -> Callable[[str], tuple[int, ...]]:
    """A lineage's place in designation order, for sorting (larger: designated later).

    The alias table lists its aliases in the order they were designated (A, B, C, ..., BA,
    ..., XA, ..., XAH, ...); below one alias, a larger number was designated later (BA.5
    after BA.4). A lineage's place is its alias's index in the table, then the numbers of
    its name: BA.5.2 sorts after BA.4 and before BE.1 (BE aliases BA.5.3.1, designated
    later than BA.5.2). Sublineages designated much later under an old alias (BA.2.75)
    sort early: the table does not record that.

    Args:
        aliases: The alias table (`read_aliases`), in its file's order.

    Returns:
        A function of a lineage name; `UNASSIGNED` sorts first.

    Raises:
        DataError: (from the returned function) the lineage's alias is not in the table or
            its name is not an alias followed by numbers.
    """
    index = {alias: i for i, alias in enumerate(aliases)}

    def order(lineage: str) -> tuple[int, ...]:
        if lineage == UNASSIGNED:
            return (-1,)
        head, *numbers = lineage.split(".")
        if head not in index or not all(n.isdigit() for n in numbers):
            raise DataError(
                f"lineage {lineage!r} is not an alias of the alias table followed by numbers"
            )
        return (index[head], *map(int, numbers))

    return order


def parent_lineage(full_name: str) -> str:
    """The de-aliased lineage one level up (``B.1.1.529.5.2`` -> ``B.1.1.529.5``); a root, a
    recombinant without a number (``XE``) or `UNASSIGNED` is its own parent."""
    head, dot, _ = full_name.rpartition(".")
    return head if dot else full_name
