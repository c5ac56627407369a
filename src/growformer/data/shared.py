"""The data beside a source checkout: ``shared/data`` next to the repository, with GLUE
SST-2 (``sst2/``) and the SARS-CoV-2 lineage tree (``sarscov2/``). Tasks fall back on it
after their own directory option and environment variable, so that ``growformer train
--task sst2`` runs as it is in a checkout laid out that way."""

from __future__ import annotations

from pathlib import Path

# This file is REPO/src/growformer/data/shared.py; installed elsewhere, the folder named
# here simply does not exist.
_HERE = Path(__file__).resolve().parents
CHECKOUT_DATA: Path | None = _HERE[4] / "shared" / "data" if len(_HERE) > 4 else None


def beside_checkout(name: str) -> Path | None:
    """``shared/data/NAME`` beside the checkout, or None when there is none."""
    if CHECKOUT_DATA is None or not (CHECKOUT_DATA / name).is_dir():
        return None
    return CHECKOUT_DATA / name
