"""Where the sarscov2 task's files are: a directory, $GROWFORMER_SARSCOV2_DIR, the data beside
the checkout or Debian's."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from growformer.data.shared import beside_checkout
from growformer.errors import DataError

TREE_FILE = "lineageTree.pb"
REFERENCE_FILE = "MN908947.3.fasta"
ALIAS_FILE = "alias_key.json"
DEBIAN_DATA_DIR = Path("/usr/share/python3-pangolearn/data")  # apt-get install python3-pangolearn


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

    The directory is `data_dir`, else $GROWFORMER_SARSCOV2_DIR, else ``shared/data/sarscov2``
    beside the checkout (:mod:`growformer.data.shared`), else `DEBIAN_DATA_DIR`. The Debian
    package ships only the tree, so the reference and alias table may be given as paths of
    their own.

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
    directory = Path(data_dir or env or beside_checkout("sarscov2") or DEBIAN_DATA_DIR)
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
