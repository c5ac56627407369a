"""The on-disk cache of decoded tree leaves, keyed by the SHA-256 of the input files."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
import zlib
from pathlib import Path

from growformer.data.sarscov2.genome import read_reference
from growformer.data.sarscov2.tree import TreeLeaves, decode_tree_bytes, read_bytes

_CACHE_FORMAT = 2  # bump when the cached content or its meaning changes


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
    raw = read_bytes(tree, "tree file")
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
    leaves = decode_tree_bytes(tree, raw, genome)
    _write_cache(path, key, leaves)
    return leaves


def _read_cache(path: Path, key: dict[str, object]) -> TreeLeaves | None:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            data = json.load(f)
        if {k: data[k] for k in key} != key:
            return None
        distinct = [
            tuple((int(m[:-1]), m[-1]) for m in g.split(",") if m) for g in data["genotypes"]
        ]
        names, lineages, index = data["names"], data["lineages"], data["genotype_index"]
        genotypes = [distinct[i] for i in index]
        leaves = TreeLeaves(names, lineages, genotypes, data["tree_sha256"], from_cache=True)
        if not len(names) == len(lineages) == len(leaves.genotypes):
            return None
        return leaves
    except (OSError, EOFError, zlib.error, ValueError, KeyError, TypeError, IndexError):
        return None  # missing, cut off, corrupt or foreign: decode again and overwrite it


def _write_cache(path: Path, key: dict[str, object], leaves: TreeLeaves) -> None:
    # Each genotype once, as "241T,3037T,...": samples of one genotype share an index.
    distinct = {g: i for i, g in enumerate(dict.fromkeys(leaves.genotypes))}
    data = {
        **key,
        "names": leaves.names,
        "lineages": leaves.lineages,
        "genotypes": [",".join(f"{p}{b}" for p, b in g) for g in distinct],
        "genotype_index": [distinct[g] for g in leaves.genotypes],
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
