"""Checkpoints: safetensors + JSON only, written atomically, verified on load.

Layout of a run directory::

    RUN/checkpoints/LATEST               name of the newest complete checkpoint
    RUN/checkpoints/step_00000500/
        model.safetensors                weights
        architecture.json  train_config.json  tokenizer.json  task.json
        config.json  tokenizer_config.json   the model and tokenizer for transformers
        optimizer.safetensors  optimizer.json
        rng.safetensors  trainer_state.json
        manifest.json                    size and sha256 of every file above

A sharded checkpoint (``checkpoint_format: sharded``) holds the weights and the optimizer
tensors in ``torch.distributed.checkpoint``'s files instead of the two ``.safetensors``
(one ``__R_0.distcp`` per rank R that wrote, and their index), each rank writing its own
shards (:mod:`growformer.checkpoint_shards`); any number of processes can read it, so a
run resumes on any number of ranks. It is not a transformers model directory.

A checkpoint directory is also a Hugging Face transformers model directory: after
``import growformer``, ``AutoModelForSequenceClassification.from_pretrained`` (or
``AutoModelForCausalLM``) and ``AutoTokenizer.from_pretrained`` read it (see
:mod:`growformer.hf`). Checkpoints of format 1, written before that, hold the training
configuration in ``config.json``; they load and resume as before.

A checkpoint is written into a temporary directory, flushed to disk, renamed into place,
and only then does ``LATEST`` (replaced atomically) point to it: a crash at any moment
leaves the previous checkpoint intact and pointed to. Nothing is ever unpickled (a
sharded checkpoint's index is read from JSON, see :mod:`growformer.checkpoint_shards`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from growformer import fsdp
from growformer.arch import Architecture
from growformer.checkpoint_shards import (
    INDEX,
    MODEL_KEYS,
    OPTIMIZER_KEYS,
    is_sharded,
    load_shards,
    save_shards,
    shard_shapes,
)
from growformer.data.tokenizer import Tokenizer
from growformer.errors import ArchitectureError, CheckpointError, DataError, read_json
from growformer.fsutil import atomic_write_text
from growformer.hf.files import (
    growformer_tokenizer,
    model_config,
    tokenizer_config,
    transformers_tokenizer,
)
from growformer.model import ElasticModel, build_model

FORMAT = 2
# Format 1 had the training configuration in config.json (now transformers' file).
FORMATS = (1, 2)
TRAIN_CONFIG = "train_config.json"
LATEST = "LATEST"
# A run directory's checkpoints are in this directory of it.
CHECKPOINTS = "checkpoints"


def holds_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a run that has written checkpoints: what a new run or an
    import must not start over."""
    return (Path(run_dir) / CHECKPOINTS).exists()


@dataclass
class Checkpoint:
    """A loaded, verified checkpoint.

    Args:
        path: Its directory.
        model: The model with its weights (on CPU).
        config: The run's training configuration (dict).
        tokenizer_json: The tokenizer, as its JSON text.
        task: Task metadata (name, kind, label names, ...).
        trainer_state: Step, counters, policy state, Python RNG state.
    """

    path: Path
    model: ElasticModel
    config: dict[str, Any]
    tokenizer_json: str
    task: dict[str, Any]
    trainer_state: dict[str, Any]

    def load_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Restore the optimizer state saved with this checkpoint."""
        meta = _read_object(self.path / "optimizer.json")
        if meta.get("type") != type(optimizer).__name__:
            raise CheckpointError(
                f"{self.path}: optimizer is {meta.get('type')!r}, not {type(optimizer).__name__}"
            )
        if is_sharded(self.path):
            tensors = load_shards(self.path, OPTIMIZER_KEYS)
        else:
            tensors = _load_tensors(self.path / "optimizer.safetensors")
        state: dict[int, dict[str, Any]] = {}
        try:
            for key, value in tensors.items():
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value
            for idx, values in meta["state"].items():
                state.setdefault(int(idx), {}).update(values)
            groups = [
                {
                    k: v if k == "params" or not isinstance(v, list) else tuple(v)
                    for k, v in g.items()
                }
                for g in meta["param_groups"]
            ]
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{self.path}: optimizer state is malformed: {e!r}") from None
        try:
            optimizer.load_state_dict({"state": state, "param_groups": groups})
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise CheckpointError(
                f"{self.path}: optimizer state does not fit the model: {e}"
            ) from None

    def restore_rng(self) -> None:
        """Put the torch random generators back where they were at save time."""
        path = self.path / "rng.safetensors"
        tensors = _load_tensors(path)
        current = torch.get_rng_state()
        saved = tensors.get("torch_cpu")
        if saved is None or saved.dtype != current.dtype or saved.shape != current.shape:
            raise CheckpointError(f"{path}: no CPU generator state of the expected shape")
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda.")]
        if any(t.dtype != torch.uint8 for t in cuda):
            raise CheckpointError(f"{path}: a CUDA generator state is not bytes")
        torch.set_rng_state(saved)
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)


def save(
    run_dir: str | Path,
    *,
    step: int,
    model: ElasticModel,
    optimizer: torch.optim.Optimizer,
    config: dict[str, Any],
    tokenizer_json: str,
    task: dict[str, Any],
    trainer_state: dict[str, Any],
    keep: int = 2,
    sharded: bool = False,
) -> Path | None:
    """Write a checkpoint atomically and point ``LATEST`` to it; keep the ``keep`` newest.

    Rank 0 writes, or every rank when ``sharded`` and ``model`` is sharded over the ranks
    (each its own shards; rank 0 the rest). Returns the directory (None on other ranks).
    """
    collective = sharded and fsdp.is_sharded(model)
    main = not collective or dist.get_rank() == 0
    root = Path(run_dir) / CHECKPOINTS
    name = f"step_{step:08d}"
    final = root / name
    # The ranks write into one directory: its name must not depend on the process.
    tmp = root / (f".tmp-{name}" if collective else f".tmp-{name}-{os.getpid()}")
    if main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    optimizer_state = optimizer.state_dict()
    if sharded:
        if collective:
            dist.barrier()  # the directory exists
        save_shards(tmp, model, _optimizer_tensors(optimizer_state), collective)
    if not main:
        dist.barrier()  # rank 0 has put the checkpoint in place
        return None
    if not sharded:
        weights = _contiguous(model.state_dict())
        save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
    _write_json(tmp / "architecture.json", model.arch.to_dict())
    _write_json(tmp / TRAIN_CONFIG, config)
    tokenizer = Tokenizer.from_json(tokenizer_json)
    _write_json(tmp / "config.json", model_config(model.arch, task.get("label_names"), tokenizer))
    (tmp / "tokenizer.json").write_text(transformers_tokenizer(tokenizer, model.arch))
    _write_json(tmp / "tokenizer_config.json", tokenizer_config(model.arch, tokenizer))
    _write_json(tmp / "task.json", task)
    _save_optimizer(tmp, type(optimizer).__name__, optimizer_state, tensors=not sharded)
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, tmp / "rng.safetensors")
    _write_json(tmp / "trainer_state.json", trainer_state)
    files = sorted(p.name for p in tmp.iterdir())
    _write_json(
        tmp / "manifest.json", {"format": FORMAT, "files": {f: _digest(tmp / f) for f in files}}
    )
    for p in tmp.iterdir():
        _fsync(p)
    _fsync(tmp)

    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)
    atomic_write_text(root / LATEST, name + "\n")
    _prune(root, keep, current=name)
    if collective:
        dist.barrier()
    return final


def resolve(path: str | Path) -> Path:
    """The checkpoint directory meant by ``path``: a run directory or a checkpoint itself."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"no checkpoint at {p}: it does not exist")
    if (p / "manifest.json").is_file():
        return p
    latest = p / CHECKPOINTS / LATEST
    if latest.is_file():
        name = _read_text(latest).strip()
        # LATEST is data: it may only name a directory beside it, never lead elsewhere.
        if name in ("", ".", "..") or Path(name).name != name:
            raise CheckpointError(f"{latest} names {name!r}, not a checkpoint directory beside it")
        target = p / CHECKPOINTS / name
        if not (target / "manifest.json").is_file():
            raise CheckpointError(f"{latest} points to {name!r}, which is missing or incomplete")
        return target
    raise CheckpointError(
        f"no checkpoint at {p}: expected a run directory or a checkpoint directory"
    )


def read_config(path: str | Path) -> dict[str, Any]:
    """The training configuration of a checkpoint, without loading its tensors."""
    ckpt_dir = resolve(path)
    return _read_object(ckpt_dir / _train_config_name(_read_object(ckpt_dir / "manifest.json")))


def load(path: str | Path) -> Checkpoint:
    """Load and verify a checkpoint (run directory or checkpoint directory)."""
    ckpt_dir = resolve(path)
    manifest = _read_object(ckpt_dir / "manifest.json")
    if manifest.get("format") not in FORMATS or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{ckpt_dir}: unknown checkpoint format {manifest.get('format')!r}")
    for name, expected in manifest["files"].items():
        if Path(name).name != name or name in (".", ".."):
            raise CheckpointError(
                f"{ckpt_dir}: manifest names {name!r}, not a file of the checkpoint"
            )
        if not isinstance(expected, dict) or not {"bytes", "sha256"} <= expected.keys():
            raise CheckpointError(f"{ckpt_dir}: manifest entry of {name} lacks bytes and sha256")
        f = ckpt_dir / name
        if not f.is_file():
            raise CheckpointError(f"{ckpt_dir}: file {name} is missing")
        found = _digest(f)
        if found["bytes"] != expected["bytes"]:
            raise CheckpointError(
                f"{ckpt_dir}: {name} is truncated or altered "
                f"({found['bytes']} bytes, expected {expected['bytes']})"
            )
        if found["sha256"] != expected["sha256"]:
            raise CheckpointError(f"{ckpt_dir}: {name} is corrupt (checksum mismatch)")
    try:
        arch = Architecture.from_dict(
            read_json(ckpt_dir / "architecture.json", "checkpoint file", CheckpointError)
        )
    except ArchitectureError as e:
        raise CheckpointError(f"{ckpt_dir}: invalid architecture.json: {e}") from None
    # Shapes first, on the meta device: an architecture.json that asks for more weights
    # than the file holds is refused before anything of its size is allocated.
    with torch.device("meta"):
        expected = build_model(arch).state_dict()
    if is_sharded(ckpt_dir):
        # Names and shapes first, from the index: nothing of a wrong size is allocated.
        where = ckpt_dir / INDEX
        _check_weights(where, shard_shapes(ckpt_dir, MODEL_KEYS), expected, values=False)
        tensors = load_shards(ckpt_dir, MODEL_KEYS)
    else:
        where = ckpt_dir / "model.safetensors"
        tensors = _load_tensors(where)
    _check_weights(where, tensors, expected)
    model = build_model(arch)
    model.load_state_dict(tensors)
    try:
        tokenizer_json = growformer_tokenizer(_read_text(ckpt_dir / "tokenizer.json"))
    except DataError as e:
        raise CheckpointError(f"{ckpt_dir}: tokenizer.json: {e}") from None
    task = _read_object(ckpt_dir / "task.json")
    if not isinstance(task.get("name"), str) or not isinstance(task.get("info", {}), dict):
        raise CheckpointError(f"{ckpt_dir}: task.json needs a 'name' string and an 'info' object")
    names = task.get("label_names")
    if names is not None and not (
        isinstance(names, list) and all(isinstance(n, str) for n in names)
    ):
        raise CheckpointError(f"{ckpt_dir}: task.json label_names must be a list of strings")
    trainer_state = _read_object(ckpt_dir / "trainer_state.json")
    step = trainer_state.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{ckpt_dir}: trainer_state.json step must be an integer >= 0")
    return Checkpoint(
        path=ckpt_dir,
        model=model,
        config=_read_object(ckpt_dir / _train_config_name(manifest)),
        tokenizer_json=tokenizer_json,
        task=task,
        trainer_state=trainer_state,
    )


def load_weights(model: ElasticModel, path: str | Path) -> None:
    """Load safetensors weights, refusing any tensor that disagrees with the architecture."""
    tensors = _load_tensors(Path(path))
    _check_weights(path, tensors, model.state_dict())
    model.load_state_dict(tensors)


def _check_weights(
    path: str | Path, tensors: dict[str, Tensor], expected: dict[str, Tensor], values: bool = True
) -> None:
    """Refuse weights that are missing, extra, of another shape or dtype, or (with
    ``values``) not finite."""
    for name, ref in expected.items():
        if name not in tensors:
            raise CheckpointError(f"{path}: tensor {name} is missing")
        got = tensors[name]
        if tuple(got.shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{path}: tensor {name} has shape {tuple(got.shape)} "
                f"but the architecture needs {tuple(ref.shape)}"
            )
        if got.dtype != ref.dtype:
            raise CheckpointError(
                f"{path}: tensor {name} has dtype {got.dtype}, expected {ref.dtype}"
            )
        if values and got.is_floating_point() and not torch.isfinite(got).all():
            raise CheckpointError(f"{path}: tensor {name} holds NaN or infinite values")
    extra = sorted(tensors.keys() - expected.keys())
    if extra:
        raise CheckpointError(f"{path}: tensor {extra[0]} is not part of the architecture")


def _train_config_name(manifest: dict[str, Any]) -> str:
    return "config.json" if manifest.get("format") == 1 else TRAIN_CONFIG


def _optimizer_tensors(sd: dict[str, Any]) -> dict[str, Tensor]:
    """The tensors of an optimizer's ``state_dict()``, by ``state.INDEX.NAME``."""
    return {
        f"state.{idx}.{name}": value
        for idx, values in sd["state"].items()
        for name, value in values.items()
        if isinstance(value, Tensor)
    }


def _save_optimizer(directory: Path, kind: str, sd: dict[str, Any], tensors: bool) -> None:
    """``optimizer.json`` (the optimizer's class name ``kind``, groups, the state of its
    ``state_dict()`` ``sd`` that is not tensors) and, with ``tensors``,
    ``optimizer.safetensors``."""
    plain: dict[str, dict[str, Any]] = {}
    for idx, values in sd["state"].items():
        for name, value in values.items():
            if not isinstance(value, Tensor):
                plain.setdefault(str(idx), {})[name] = value
    if tensors:
        state = {k: v.contiguous() for k, v in _optimizer_tensors(sd).items()}
        save_file(state, directory / "optimizer.safetensors")
    meta = {"type": kind, "param_groups": sd["param_groups"], "state": plain}
    _write_json(directory / "optimizer.json", meta)


def _load_tensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} is missing") from None
    except UnicodeDecodeError as e:
        raise CheckpointError(f"checkpoint file {path} is not UTF-8 text: {e}") from None


def _read_object(path: Path) -> dict[str, Any]:
    value = read_json(path, "checkpoint file", CheckpointError)
    if not isinstance(value, dict):
        raise CheckpointError(f"checkpoint file {path} must hold a JSON object")
    return value


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2))


def _contiguous(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().contiguous() for k, v in tensors.items()}


def _digest(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(root: Path, keep: int, current: str) -> None:
    steps = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))
    for old in steps[:-keep]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    # A writer killed between creating LATEST's temporary file and renaming it.
    for stale in root.glob(f".{LATEST}.tmp-*"):
        stale.unlink(missing_ok=True)
