"""The tensors of a sharded checkpoint, through ``torch.distributed.checkpoint`` (DCP).

Keys are ``model.NAME`` (weights) and ``optimizer.state.INDEX.NAME`` (the optimizer's
tensors, by parameter index as in ``optimizer.state_dict()``). Every rank of a sharded
model writes its own shards (``__R_0.distcp``); a reader gets whole tensors, whatever
the number of ranks that wrote them.

DCP pickles its index (``.metadata``, kept for torch's own tools). growformer never reads
it: rank 0 also writes the same index as JSON (``shards.json``: every tensor's dtype,
size and chunks, and where each chunk lies in which file), and the reader builds DCP's
records from that. Nothing is unpickled; the tensors themselves are read by DCP with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)

from growformer import fsdp
from growformer.errors import CheckpointError

INDEX = "shards.json"
MODEL_KEYS, OPTIMIZER_KEYS = "model.", "optimizer."


def _index_json(metadata: Metadata) -> dict[str, Any]:
    """DCP's index of tensors as JSON."""
    tensors = {}
    for key, info in metadata.state_dict_metadata.items():
        if not isinstance(info, TensorStorageMetadata):
            raise CheckpointError(f"sharded checkpoints hold tensors only, {key} is not one")
        tensors[key] = {
            "dtype": str(info.properties.dtype).removeprefix("torch."),
            "size": list(info.size),
            "chunks": [{"offsets": list(c.offsets), "sizes": list(c.sizes)} for c in info.chunks],
        }
    storage = [
        {
            "key": where.fqn,
            "offsets": None if where.offset is None else list(where.offset),
            "chunk": where.index,
            "file": info.relative_path,
            "at": info.offset,
            "length": info.length,
            "transforms": None
            if info.transform_descriptors is None
            else list(info.transform_descriptors),
        }
        for where, info in metadata.storage_data.items()
    ]
    return {"tensors": tensors, "storage": storage}


def _index_metadata(index: dict[str, Any]) -> Metadata:
    """DCP's records from the JSON index (raises KeyError, TypeError or ValueError on a
    malformed one)."""
    tensors = {}
    for key, info in index["tensors"].items():
        dtype = getattr(torch, info["dtype"], None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"{key} has no dtype {info['dtype']!r}")
        chunks = [
            ChunkStorageMetadata(torch.Size(c["offsets"]), torch.Size(c["sizes"]))
            for c in info["chunks"]
        ]
        properties = TensorProperties(dtype=dtype)
        tensors[key] = TensorStorageMetadata(properties, torch.Size(info["size"]), chunks)
    storage = {}
    for entry in index["storage"]:
        name = entry["file"]
        if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
            raise ValueError(f"{name!r} is not a file of the checkpoint")
        where = MetadataIndex(entry["key"], entry["offsets"], entry["chunk"])
        storage[where] = _StorageInfo(
            name, int(entry["at"]), int(entry["length"]), entry["transforms"]
        )
    return Metadata(
        state_dict_metadata=tensors,
        planner_data={key: (key,) for key in tensors},
        storage_data=storage,
        storage_meta=StorageMeta(),
    )


class _Reader(FileSystemReader):
    """DCP's file reader, with the index read from ``shards.json``."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        where = Path(self.path) / INDEX
        try:
            metadata = _index_metadata(json.loads(where.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"cannot read {where}: {e}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{where} is malformed: {e!r}") from None
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
        metadata = dcp.save(tensors, checkpoint_id=directory, no_dist=not collective)
    if not collective or dist.get_rank() == 0:
        (directory / INDEX).write_text(json.dumps(_index_json(metadata)))


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
    index = _Reader(ckpt_dir).read_metadata().state_dict_metadata
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
