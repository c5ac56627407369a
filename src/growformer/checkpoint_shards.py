"""The tensors of a sharded checkpoint, through ``torch.distributed.checkpoint`` (DCP).

Keys are ``model.NAME`` (weights) and ``optimizer.state.INDEX.NAME`` (the optimizer's
tensors, by parameter index as in ``optimizer.state_dict()``). Every rank of a sharded
model writes its own shards (``__R_0.distcp``) and rank 0 the index (``.metadata``); a
reader gets whole tensors, whatever the number of ranks that wrote them.

DCP pickles its index. It is read here by an unpickler that builds nothing but DCP's own
metadata records, tensor sizes and dtypes, so a forged index cannot run code; the tensors
themselves are read by DCP with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from growformer import fsdp
from growformer.errors import CheckpointError

INDEX = ".metadata"
MODEL_KEYS, OPTIMIZER_KEYS = "model.", "optimizer."

# What DCP's index may hold besides the records of its metadata module.
_INDEX_GLOBALS = {
    ("torch", "Size"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("collections", "OrderedDict"),
}


class _IndexUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "torch.distributed.checkpoint.metadata" or (module, name) in _INDEX_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"the index names {module}.{name}, not a DCP record")


class _Reader(FileSystemReader):
    """DCP's file reader, with the index read by :class:`_IndexUnpickler`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        with open(Path(self.path) / INDEX, "rb") as f:
            metadata = _IndexUnpickler(f).load()
        if not isinstance(metadata, Metadata):
            raise pickle.UnpicklingError(f"the index holds a {type(metadata).__name__}")
        if metadata.storage_meta is not None:
            metadata.storage_meta.load_id = self.load_id
        return metadata


def is_sharded(ckpt_dir: Path) -> bool:
    """Whether the checkpoint in ``ckpt_dir`` holds its tensors in shards."""
    return (ckpt_dir / INDEX).is_file()


def save_shards(
    directory: Path,
    model: nn.Module,
    optimizer_tensors: dict[str, Tensor],
    collective: bool,
) -> None:
    """Write ``model``'s weights and the optimizer's tensors into ``directory`` (with
    ``collective``, every rank its shards of a sharded model, as a collective)."""
    fsdp.settle(model)
    tensors = {MODEL_KEYS + k: v for k, v in model.state_dict().items()}
    tensors |= {OPTIMIZER_KEYS + k: v for k, v in optimizer_tensors.items()}
    with _single_process_is_meant():
        dcp.save(tensors, checkpoint_id=directory, no_dist=not collective)


def shard_shapes(ckpt_dir: Path, prefix: str) -> dict[str, Tensor]:
    """The tensors under ``prefix`` (cut off) as the index describes them: empty tensors
    of their shape and dtype on the ``meta`` device (nothing allocated)."""
    return {
        k: torch.empty(info.size, dtype=info.properties.dtype, device="meta")
        for k, info in _stored(ckpt_dir, prefix).items()
    }


def load_shards(ckpt_dir: Path, prefix: str) -> dict[str, Tensor]:
    """The whole tensors under ``prefix`` (cut off), read by this process alone."""
    stored = _stored(ckpt_dir, prefix)
    template = {
        prefix + k: torch.empty(info.size, dtype=info.properties.dtype)
        for k, info in stored.items()
    }
    try:
        with _single_process_is_meant():
            dcp.load(template, storage_reader=_Reader(ckpt_dir), no_dist=True)
    except (dcp.api.CheckpointException, OSError, RuntimeError, ValueError) as e:
        lines = str(e).strip().splitlines()
        raise CheckpointError(
            f"cannot read the shards in {ckpt_dir}: {lines[-1] if lines else type(e).__name__}"
        ) from None
    return {k[len(prefix) :]: v for k, v in template.items()}


def _stored(ckpt_dir: Path, prefix: str) -> dict[str, TensorStorageMetadata]:
    try:
        index = _Reader(ckpt_dir).read_metadata().state_dict_metadata
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, TypeError) as e:
        raise CheckpointError(f"cannot read {ckpt_dir / INDEX}: {e}") from None
    return {
        key[len(prefix) :]: info
        for key, info in index.items()
        if key.startswith(prefix) and isinstance(info, TensorStorageMetadata)
    }


@contextlib.contextmanager
def _single_process_is_meant() -> Iterator[None]:
    """DCP warns when it reads or writes without a process group; here that is meant."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield
