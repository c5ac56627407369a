"""The part of the Hugging Face integration that needs no ``transformers``.

A checkpoint directory is also a transformers model directory: next to growformer's own
files it holds a ``config.json`` (:func:`model_config`) and a ``tokenizer_config.json``
(:func:`tokenizer_config`) in the form transformers reads, and its ``tokenizer.json``
puts ``[CLS]`` first as growformer's classifiers expect (:func:`transformers_tokenizer`).
They are written by :mod:`growformer.checkpoint` whether transformers is installed or not.

How transformers' Auto classes learn of growformer without growformer importing
transformers: :mod:`growformer.hf.auto`.
"""

from __future__ import annotations

from typing import Any

import tokenizers
from tokenizers import processors

from growformer.arch import Architecture
from growformer.data.tokenizer import Tokenizer
from growformer.errors import DataError
from growformer.version import __version__

MODEL_TYPE = "growformer"
# The transformers class of each kind of model (see growformer.hf.model).
HF_CLASSES = {
    "classifier": "GrowformerForSequenceClassification",
    "causal_lm": "GrowformerForCausalLM",
}
MISSING_TRANSFORMERS = (
    "growformer's Hugging Face integration needs transformers: pip install -e '.[hf]'"
)


def model_config(
    arch: Architecture, label_names: list[str] | None, tokenizer: Tokenizer
) -> dict[str, Any]:
    """The transformers ``config.json`` of a model (read by :class:`GrowformerConfig`).

    Args:
        arch: The model's architecture.
        label_names: Class ``i`` is ``label_names[i]`` (classifiers), else None.
        tokenizer: The model's tokenizer (its padding and end-of-sequence ids).

    Returns:
        The JSON-ready configuration.
    """
    config: dict[str, Any] = {
        "model_type": MODEL_TYPE,
        "architectures": [HF_CLASSES[arch.kind]],
        "architecture": arch.to_dict(),
        "pad_token_id": tokenizer.pad_id,
        "growformer_version": __version__,
    }
    if arch.kind == "classifier":
        names = label_names or [str(i) for i in range(arch.num_labels)]
        config["id2label"] = dict(enumerate(names))
        config["label2id"] = {name: i for i, name in enumerate(names)}
    else:
        config["eos_token_id"] = tokenizer.eos_id
    return config


def tokenizer_config(arch: Architecture, tokenizer: Tokenizer) -> dict[str, Any]:
    """The transformers ``tokenizer_config.json`` that encodes text as growformer does.

    With :func:`transformers_tokenizer` it makes ``AutoTokenizer`` give the ids of
    :meth:`growformer.data.Tokenizer.encode`: ``[CLS]`` first for classifiers, at most
    ``arch.max_len`` ids when truncating, and special-token strings in the text encoded
    as ordinary text (growformer inserts special tokens only by id). Language models pad
    on the left, so that a batch of prompts generates as each prompt alone.

    Args:
        arch: The model's architecture.
        tokenizer: The model's tokenizer (the tokens of its roles).

    Returns:
        The JSON-ready tokenizer configuration.
    """
    special = tokenizer.special
    roles = {"cls_token": special.cls, "eos_token": special.eos, "pad_token": special.pad}
    if special.unk is not None:
        roles["unk_token"] = special.unk
    if special.sep is not None:
        roles["sep_token"] = special.sep
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **roles,
        "split_special_tokens": True,
        "model_max_length": arch.max_len,
        # A language model continues after the last token: its prompts pad on the left.
        "padding_side": "left" if arch.kind == "causal_lm" else "right",
        "truncation_side": "right",
        "model_input_names": ["input_ids", "attention_mask"],
        "clean_up_tokenization_spaces": False,
    }


def transformers_tokenizer(tokenizer: Tokenizer, arch: Architecture) -> str:
    """A checkpoint's ``tokenizer.json``: growformer's tokenizer with, for classifiers, the
    template that makes transformers insert what growformer inserts itself, by id:
    ``[CLS]`` first (and ``[SEP]`` last where the vocabulary is BERT's)."""
    if arch.kind != "classifier":
        return tokenizer.to_json()
    tok = tokenizers.Tokenizer.from_str(tokenizer.to_json())
    cls, sep = tokenizer.special.cls, tokenizer.special.sep
    ids = [(cls, tokenizer.cls_id)]
    single, pair = f"{cls} $A", f"{cls} $A $B:1"
    if sep is not None:
        ids.append((sep, tok.token_to_id(sep)))
        single, pair = f"{single} {sep}", f"{cls} $A {sep} $B:1 {sep}:1"
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=ids)
    return tok.to_str()


def growformer_tokenizer(text: str) -> str:
    """growformer's tokenizer JSON from a checkpoint's ``tokenizer.json`` (the inverse of
    :func:`transformers_tokenizer`: the same bytes as ``Tokenizer.to_json``)."""
    try:
        tok = tokenizers.Tokenizer.from_str(text)
    except Exception as e:  # the Rust side raises bare Exception for any parse error
        raise DataError(f"tokenizer JSON is invalid: {str(e).splitlines()[0]}") from None
    tok.post_processor = None
    return tok.to_str()
