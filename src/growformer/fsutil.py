"""Atomic file writes: readers see the old file or the new one, never a mix."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: written beside it, flushed to disk, renamed into place.

    Raises:
        OSError: The file cannot be written (the temporary file is removed first).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8), as :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))
