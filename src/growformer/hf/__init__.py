"""Hugging Face transformers integration: growformer models as ``PreTrainedModel``s
(:mod:`growformer.hf.model`), their configuration (:mod:`growformer.hf.config`), a
``TrainerCallback`` that runs a structure policy inside ``transformers.Trainer``
(:mod:`growformer.hf.callback`), and the files a checkpoint holds for transformers, which
need no transformers (:mod:`growformer.hf.files`).

After ``import growformer``, a growformer checkpoint directory loads like any
transformers model::

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint_dir)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
    pipeline("text-classification", model=checkpoint_dir, tokenizer=checkpoint_dir)

The names below are imported from their modules when first used, because importing
transformers takes seconds and the checkpoint files are written without it.
"""

from __future__ import annotations

import importlib
from typing import Any

# Each public name and the module that defines it.
_HOMES = {
    "CACHE_FIELD": "model",
    "GrowformerCache": "model",
    "GrowformerForCausalLM": "model",
    "GrowformerForSequenceClassification": "model",
    "GrowformerPreTrainedModel": "model",
    "register": "model",
    "GrowformerConfig": "config",
    "GrowformerCallback": "callback",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
