"""Pretrained transformers models as elastic models, and back.

`from_hf` turns a transformers model, or a local model directory (``config.json`` and
``model.safetensors``), into a growformer model with the same function: BERT-family
encoders (BERT, MiniLM) as classifiers, GPT-2 and Llama-family decoders (grouped keys and
values included) as language models. Each family is one module of this package with one
line in :data:`FAMILIES`; a model type without one is refused with the types that exist.
The conversion reads tensors and the configuration only, so it needs no transformers for a
local directory.

`to_hf` writes an elastic model back as a transformers model of its family where its
structure is one that family's configuration can state (see each family's ``export``),
and says why not otherwise; a growformer checkpoint holds any structure.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from growformer import checkpoint
from growformer.data.tokenizer import Tokenizer
from growformer.errors import ConfigError, read_json
from growformer.hf.convert import bert, gpt2, llama
from growformer.hf.convert.common import Family
from growformer.model import ElasticModel, build_model
from growformer.training.config import TrainConfig

FAMILIES: dict[str, Family] = {
    "bert": bert.FAMILY,
    "gpt2": gpt2.FAMILY,
    "llama": llama.FAMILY,
}
"""The transformers ``model_type`` of each supported family."""


@dataclass
class Imported:
    """A converted model.

    Args:
        model: The elastic model, with the source's weights.
        family: The source's ``model_type``.
        source_config: The source's transformers configuration (dict).
        new_parameters: Names of parameters the source did not have (a new classifier on
            an encoder without one), initialised as growformer initialises them.
    """

    model: ElasticModel
    family: str
    source_config: dict[str, Any]
    new_parameters: list[str]


def from_hf(source: Any, *, num_labels: int | None = None) -> Imported:
    """Convert a transformers model or a local model directory.

    Args:
        source: A transformers ``PreTrainedModel``, or the path of a directory holding its
            ``config.json`` and ``model.safetensors``.
        num_labels: Classes of an encoder's new classifier when the source has none
            (default 2); with a source classifier, its own count (a different number is
            refused).

    Returns:
        The elastic model and what it came from.

    Raises:
        ConfigError: An unsupported model type or configuration, or missing or misshapen
            tensors, named.
    """
    config, read_tensors = _read(source)
    model_type = config.get("model_type")
    family = FAMILIES.get(model_type)
    if family is None:
        raise ConfigError(
            f"cannot import a {model_type!r} model: growformer converts "
            f"{', '.join(sorted(FAMILIES))} (model_type in config.json)"
        )
    tensors = read_tensors()
    arch, state = family.to_growformer(config, tensors, num_labels=num_labels)
    model = build_model(arch)
    expected = model.state_dict()
    unknown = sorted(state.keys() - expected.keys())
    if unknown:
        raise ConfigError(f"{model_type} conversion made unknown tensors {unknown[:3]}")
    # Parameters the source may lack keep the initialisation build_model gave them.
    new = [n for n in sorted(expected.keys() - state.keys()) if n in family.may_be_new]
    state.update({n: expected[n] for n in new})
    missing = sorted(expected.keys() - state.keys())
    if missing:
        raise ConfigError(f"{model_type} conversion left out {missing[:3]}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ConfigError(
                f"{model_type} tensor for {name} has shape {tuple(tensor.shape)}, the "
                f"configuration asks for {tuple(expected[name].shape)}"
            )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return Imported(model.eval(), model_type, config, new)


def to_hf(model: ElasticModel, family: str, out: str | Path) -> Path:
    """Write ``model`` as a transformers model of ``family`` (``config.json`` and
    ``model.safetensors``) in ``out``.

    Raises:
        ConfigError: The family is unknown, or the model's structure is one its
            configuration cannot state (the reason named).
    """
    if family not in FAMILIES:
        raise ConfigError(f"unknown family {family!r} (known: {', '.join(sorted(FAMILIES))})")
    config, tensors = FAMILIES[family].from_growformer(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def _read(source: Any) -> tuple[dict[str, Any], Callable[[], dict[str, Tensor]]]:
    """The source's configuration, and how to read its tensors (after the configuration
    has been checked)."""
    if isinstance(source, (str, Path)):
        directory = Path(source)
        if not (directory / "config.json").is_file():
            raise ConfigError(f"no config.json in {directory}: not a transformers model directory")
        config = read_json(directory / "config.json", "model config", ConfigError)
        if not isinstance(config, dict):
            raise ConfigError(f"{directory / 'config.json'} is not a JSON object")
        weights = directory / "model.safetensors"

        def tensors() -> dict[str, Tensor]:
            if not weights.is_file():
                raise ConfigError(
                    f"no model.safetensors in {directory}: growformer reads weights from "
                    "safetensors only (never pickles)"
                )
            return load_file(weights)

        return config, tensors
    if isinstance(source, torch.nn.Module) and hasattr(source, "config"):
        return source.config.to_dict(), lambda: {
            k: v.detach().cpu() for k, v in source.state_dict().items()
        }
    raise ConfigError(
        f"cannot import a {type(source).__name__}: pass a transformers model or a directory"
    )


def import_checkpoint(
    source: str | Path, out: str | Path, *, num_labels: int | None = None
) -> Path:
    """Convert the transformers model directory ``source`` into a growformer run directory
    ``out`` holding one checkpoint (step 0) with the source's tokenizer, ready for
    ``growformer train --init OUT`` (and for ``info``, ``evaluate``, ``export``).

    Raises:
        ConfigError: What `from_hf` refuses, a source without ``tokenizer.json``, or an
            ``out`` that already holds a run.
    """
    source, out = Path(source), Path(out)
    if checkpoint.holds_run(out):
        raise ConfigError(f"{out} already holds a run: choose another --out")
    imported = from_hf(source, num_labels=num_labels)
    tokenizer_file = source / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ConfigError(
            f"no tokenizer.json in {source}: growformer keeps the source model's tokenizer "
            "(a fast tokenizer's file)"
        )
    tokenizer = Tokenizer.from_json(tokenizer_file.read_text(encoding="utf-8"))
    model, arch = imported.model, imported.model.arch
    if tokenizer.vocab_size > arch.vocab_size:
        raise ConfigError(
            f"{source}: the tokenizer has {tokenizer.vocab_size} tokens, the model's table "
            f"{arch.vocab_size}"
        )
    classifier = arch.kind == "classifier"
    labels = imported.source_config.get("id2label") or {}
    names = [str(labels.get(str(i), labels.get(i, i))) for i in range(arch.num_labels or 0)]
    return checkpoint.save(
        out,
        step=0,
        model=model,
        optimizer=torch.optim.AdamW(model.parameters()),
        config=TrainConfig().to_dict(),
        tokenizer_json=tokenizer.to_json(),
        task={
            "name": "imported",
            "kind": "classification" if classifier else "lm",
            "label_names": names if classifier else None,
            "max_len": arch.max_len,
            "info": {
                "source": str(source.resolve()),
                "model_type": imported.family,
                "new_parameters": imported.new_parameters,
            },
        },
        trainer_state={"step": 0},
    )
