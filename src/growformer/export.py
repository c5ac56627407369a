"""ONNX export of a frozen model, verified against PyTorch with onnxruntime.

The exported graph maps ``input_ids`` (and, for classifiers, ``attention_mask``), both
int64 of shape (batch, seq), to ``logits``: (batch, num_labels) for classifiers,
(batch, seq, vocab) for language models. Batch and sequence length are dynamic, the
sequence up to the architecture's ``max_len``. The file carries its architecture (and the
class names) as ONNX metadata, so it describes itself.

The exporter is ``torch.onnx.export(dynamo=True)``: ``torch.export`` traces the model,
onnxscript translates and optimises the graph. The TorchScript exporter is deprecated
since torch 2.9. The forward pass has no branch on tensor values; the looped passes'
head subsets are index buffers fixed by the structure, so each becomes a constant gather
of the projection weights, which the export folds into pre-sliced weights.

A loop's soft start (:class:`~growformer.arch.LoopFade`) is refused rather than baked:
its level changes every optimizer step, so a model taken during it is a snapshot of
training, not the model that training converges to.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor, nn

from growformer.checkpoint import Checkpoint
from growformer.data import ClassificationData, LMData, Tokenizer, collate
from growformer.errors import ExportError, GrowformerError
from growformer.evaluation import eval_mode
from growformer.fsutil import atomic_write_bytes
from growformer.model import ElasticModel
from growformer.training.config import TrainConfig
from growformer.training.setup import task_data
from growformer.version import __version__

INPUTS = {"classifier": ("input_ids", "attention_mask"), "causal_lm": ("input_ids",)}
META_ARCHITECTURE = "growformer.architecture"
META_LABEL_NAMES = "growformer.label_names"
META_VERSION = "growformer.version"


class _Logits(nn.Module):
    """The model as a function of its inputs to its logits (what the graph computes)."""

    def __init__(self, model: ElasticModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.model(*inputs).logits


def export_onnx(
    model: ElasticModel,
    path: str | Path,
    *,
    label_names: Sequence[str] | None = None,
    opset: int | None = None,
) -> Path:
    """Export ``model`` (in eval mode) to an ONNX file, written atomically.

    Args:
        model: A classifier or causal language model with no fade in progress.
        path: The ``.onnx`` file to write (replaced if it exists).
        label_names: Class ``i`` is ``label_names[i]`` (classifiers), stored as metadata.
        opset: ONNX opset version; None: the exporter's default.

    Returns:
        ``path``.

    Raises:
        ExportError: onnx/onnxscript missing, a fade in progress, label names that do
            not fit, or a path that cannot be written.
    """
    _require("onnx")
    onnxscript = _require("onnxscript")
    path = Path(path)
    arch = model.arch
    _refuse_fading(model)
    if label_names is not None and len(label_names) != arch.num_labels:
        raise ExportError(
            f"{len(label_names)} label names for a model with num_labels={arch.num_labels}"
        )
    if path.is_dir():
        raise ExportError(f"cannot write {path}: it is a directory")
    if not path.parent.is_dir():
        raise ExportError(f"cannot write {path}: directory {path.parent} does not exist")
    names = INPUTS[arch.kind]
    device = next(model.parameters()).device
    # Two rows of up to 8 tokens: sizes 0 and 1 would be specialised by torch.export.
    example = tuple(
        torch.ones(2, min(8, arch.max_len), dtype=torch.long, device=device) for _ in names
    )
    axes = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", max=arch.max_len)}
    with eval_mode(model), _quiet_exporter():
        program = torch.onnx.export(
            _Logits(model),
            example,
            dynamo=True,
            dynamic_shapes={"inputs": (axes,) * len(names)},
            input_names=names,
            output_names=["logits"],
            opset_version=opset,
            verbose=False,
        )
        # The exporter folds only small constants: fold every transform of the weights
        # too (the query/key/value concatenation, a loop's head rows), so that whatever
        # runs the file gets them pre-computed.
        limit = model.num_params()
        onnxscript.optimizer.optimize(
            program.model, input_size_limit=limit, output_size_limit=limit
        )
    meta = {META_ARCHITECTURE: json.dumps(arch.to_dict()), META_VERSION: __version__}
    if label_names is not None:
        meta[META_LABEL_NAMES] = json.dumps(list(label_names))
    program.model.metadata_props.update(meta)
    try:
        atomic_write_bytes(path, program.model_proto.SerializeToString())
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def verify_onnx(
    model: ElasticModel, path: str | Path, batches: Iterable[dict[str, Tensor]]
) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's logits.

    Args:
        model: The model that was exported (run in eval mode).
        path: Its ONNX file.
        batches: Inputs, each with the graph's inputs (``input_ids``, and
            ``attention_mask`` for classifiers) as (batch, seq) tensors.

    Returns:
        The maximum over every batch and logit (NaN if either side produced one).

    Raises:
        ExportError: onnxruntime missing, or an output shape that differs.
    """
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    device = next(model.parameters()).device
    diffs = []
    with eval_mode(model), torch.no_grad():
        for batch in batches:
            inputs = {name: batch[name].long().cpu() for name in names}
            expected = model(**{k: v.to(device) for k, v in inputs.items()}).logits.cpu()
            (got,) = session.run(["logits"], {k: v.numpy() for k, v in inputs.items()})
            got = torch.from_numpy(got)
            if got.shape != expected.shape:
                raise ExportError(
                    f"{path} gives logits of shape {tuple(got.shape)}, "
                    f"PyTorch {tuple(expected.shape)}"
                )
            diffs.append((got - expected.float()).abs().max())
    if not diffs:
        raise ValueError("verify_onnx needs at least one batch")
    # torch.stack(...).max() propagates NaN, where Python's max() would drop it.
    return torch.stack(diffs).max().item()


def sample_inputs(
    model: ElasticModel,
    n: int,
    *,
    data: ClassificationData | LMData | None = None,
    pad_id: int = 0,
    max_batch: int = 8,
    seed: int = 0,
) -> list[dict[str, Tensor]]:
    """``n`` inputs for :func:`verify_onnx`, in batches of random size and length.

    Args:
        model: The model they are for.
        n: Number of sequences in all.
        data: Draw them from this data set (classification examples keep their lengths
            and are padded to the longest of their batch; language-model blocks are cut
            to a random length); None: random token ids, classifier rows of random
            lengths with padding.
        pad_id: Padding token id.
        max_batch: Largest batch size (sizes are drawn from 1 to it).
        seed: Seed of the draws.

    Returns:
        Batches with the model's graph inputs (see :data:`INPUTS`).
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    g = torch.Generator().manual_seed(seed)
    arch = model.arch
    batches = []
    while n > 0:
        b = min(n, _randint(1, max_batch, g))
        n -= b
        if data is None:
            batch = _random_batch(arch.kind, arch.vocab_size, arch.max_len, b, pad_id, g)
        else:
            batch = collate(data, torch.randint(len(data), (b,), generator=g), pad_id)
            if isinstance(data, LMData):
                batch["input_ids"] = batch["input_ids"][:, : _randint(1, data.block, g)]
        batches.append({k: batch[k] for k in INPUTS[arch.kind]})
    return batches


def checkpoint_inputs(
    ckpt: Checkpoint, n: int, *, seed: int = 0
) -> tuple[list[dict[str, Tensor]], str]:
    """``n`` inputs for :func:`verify_onnx` of a checkpoint's model (see
    :func:`sample_inputs`): from its task's validation split, or random token ids where
    those data cannot be loaded.

    Args:
        ckpt: The checkpoint.
        n: Number of sequences in all.
        seed: Seed of the draws.

    Returns:
        The batches, and a phrase saying where they come from (and why, for random ids).
    """
    pad_id = Tokenizer.from_json(ckpt.tokenizer_json).pad_id
    try:
        data = task_data(TrainConfig.from_dict(ckpt.config), ckpt).val
    except (GrowformerError, OSError) as e:
        data, source = None, f"random token ids (the task's data are unavailable: {e})"
    else:
        source = f"the validation split of task {ckpt.task['name']!r}"
        if not len(data):
            data, source = None, "random token ids (the task's validation split is empty)"
    return sample_inputs(ckpt.model, n, data=data, pad_id=pad_id, seed=seed), source


def _random_batch(
    kind: str, vocab_size: int, max_len: int, b: int, pad_id: int, g: torch.Generator
) -> dict[str, Tensor]:
    if kind == "causal_lm":
        return {"input_ids": torch.randint(vocab_size, (b, _randint(1, max_len, g)), generator=g)}
    lengths = torch.randint(1, max_len + 1, (b,), generator=g)
    t = int(lengths.max())
    mask = torch.arange(t) < lengths[:, None]
    ids = torch.randint(vocab_size, (b, t), generator=g).masked_fill(~mask, pad_id)
    return {"input_ids": ids, "attention_mask": mask}


def _randint(low: int, high: int, g: torch.Generator) -> int:
    """A uniform integer in [low, high]."""
    return int(torch.randint(low, high + 1, (), generator=g))


def _refuse_fading(model: ElasticModel) -> None:
    layers = model.arch.layers
    fading = [(i, layer.fade) for i, layer in enumerate(layers) if layer.fade is not None]
    if fading:
        where = ", ".join(f"layer {i} until step {fade.end}" for i, fade in fading)
        raise ExportError(
            f"the model is in a loop's soft start ({where}): its function changes every "
            "step, so there is no frozen model to export; train past the fade or end it "
            "with growformer.surgery.end_fade first"
        )
    heads = [(i, layer.head_fade) for i, layer in enumerate(layers) if layer.head_fade]
    if heads:
        where = ", ".join(f"layer {i} head {f.head} until step {f.end}" for i, f in heads)
        raise ExportError(
            f"a head is fading out before its removal ({where}): its function changes "
            "every step, so there is no frozen model to export; train past the fade first"
        )


def _require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(
            f'ONNX export needs {module}, which is not installed: pip install -e ".[onnx]"'
        ) from None


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's notes about its own internals (optional torchvision ops,
    renamed axes, deprecated pytree classes): :func:`verify_onnx` is the check that counts."""
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry.level
    registry.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        registry.setLevel(level)
