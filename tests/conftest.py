"""Fixtures shared by the test modules."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def sst2_dir() -> Path:
    """The GLUE SST-2 files of ../shared/data (tests skip when they are absent)."""
    d = SHARED_DATA / "sst2"
    if not (d / "train.tsv").is_file():
        pytest.skip(f"SST-2 files not found at {d}")
    return d


@pytest.fixture(scope="session")
def sarscov2_dir() -> Path:
    """The pangoLEARN lineage tree, reference genome and alias table of ../shared/data."""
    d = SHARED_DATA / "sarscov2"
    if not (d / "lineageTree.pb").is_file():
        pytest.skip(f"SARS-CoV-2 files not found at {d}")
    return d


@pytest.fixture
def no_checkout_data(monkeypatch):
    """As if growformer were installed away from a checkout with ``shared/data`` beside it."""
    import growformer.data.shared

    monkeypatch.setattr(growformer.data.shared, "CHECKOUT_DATA", None)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine its
    spinning makes their forward passes many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
