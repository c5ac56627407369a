"""Shared builders for the tests: small architectures of every variant, batches, a task
of a user's own (``load_toy``), and SST-2 sentences for transformers' Trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from growformer import checkpoint
from growformer.arch import Architecture, HeadFade, LayerSpec, LoopFade
from growformer.data import ClassificationData, TaskData, TaskRequest, Tokenizer
from growformer.data.tasks.common import int_option
from growformer.training.config import TrainConfig

VOCAB = 61
MAX_LEN = 24


def arch(kind: str, variant: str, dropout: float = 0.0) -> Architecture:
    """A small architecture: ``uniform``, ``nonuniform`` (per-layer heads and widths),
    ``looped`` (SGT loops), ``empty_layer`` (one layer without heads), ``fading`` (a
    block loop with a head fading out before its removal, and SGT loops in their soft
    start), ``compressed`` (what the compression passes leave: keys and values shared by
    groups of heads, one layer looped over heads that use their groups unevenly, and a
    factored token embedding); and the other block families: ``bert`` (post-norm, exact
    GELU, biases, token types, a pooler on classifiers), ``gpt2`` (pre-norm, tanh GELU,
    biases) and ``llama`` (RMSNorm, SwiGLU, rotary positions, a looped layer)."""
    layers = {
        "uniform": (LayerSpec(2, 8, 48),) * 2,
        "nonuniform": (LayerSpec(1, 16, 64), LayerSpec(3, 8, 32), LayerSpec(2, 4, 48)),
        "looped": (LayerSpec(3, 8, 48), LayerSpec(2, 8, 48, loops=2, looped_heads=(1,))),
        "empty_layer": (LayerSpec(2, 8, 48), LayerSpec(0, 8, 48)),
        "fading": (
            LayerSpec(2, 8, 48, block_loops=1, head_fade=HeadFade(0, 8, "linear", head=1)),
            LayerSpec(3, 8, 48, loops=2, looped_heads=(0, 2), fade=LoopFade(0, 8, "cosine")),
        ),
        "compressed": (
            LayerSpec(4, 8, 48, kv_heads=2),
            LayerSpec(4, 8, 48, loops=2, looped_heads=(3, 0, 1), kv_heads=2),
            LayerSpec(2, 8, 32, kv_heads=1),
        ),
        "bert": (LayerSpec(2, 8, 48), LayerSpec(3, 8, 32)),
        "gpt2": (LayerSpec(2, 8, 48), LayerSpec(1, 16, 32)),
        "llama": (LayerSpec(3, 8, 48), LayerSpec(2, 8, 48, loops=1, looped_heads=(0,))),
    }[variant]
    family = {
        "bert": dict(
            norm_position="post",
            attn_bias=True,
            norm_eps=1e-12,
            type_vocab_size=2,
            pooler=kind == "classifier",
        ),
        "gpt2": dict(mlp="gelu_tanh", attn_bias=True),
        "llama": dict(
            norm="rmsnorm", norm_eps=1e-6, mlp="swiglu", mlp_bias=False, positions="rotary"
        ),
    }.get(variant, {})
    return Architecture(
        kind=kind,
        d_model=32,
        vocab_size=VOCAB,
        max_len=MAX_LEN,
        layers=layers,
        num_labels=3 if kind == "classifier" else None,
        dropout=dropout,
        embed_rank=8 if variant == "compressed" else None,
        **family,
    )


KINDS = ("classifier", "causal_lm")
VARIANTS = (
    "uniform",
    "nonuniform",
    "looped",
    "empty_layer",
    "fading",
    "compressed",
    "bert",
    "gpt2",
    "llama",
)
# Surgery adds and removes heads only where keys and values are not grouped.
GROWABLE = tuple(v for v in VARIANTS if v != "compressed")


def batch(kind: str, b: int = 4, t: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch for ``kind``; classifier batches carry padding on some rows."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (b, t), generator=g)
    if kind == "classifier":
        mask = torch.ones(b, t, dtype=torch.bool)
        mask[0, t // 2 :] = False
        mask[1, t - 2 :] = False
        ids[~mask] = 0
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": torch.randint(0, 3, (b,), generator=g),
        }
    return {"input_ids": ids, "labels": torch.randint(4, VOCAB, (b, t), generator=g)}


def load_toy(request: TaskRequest) -> TaskData:
    """Label: whether the first word is "b"; the rest is noise."""
    n = int_option(request.name, "n_train", request.options["n_train"], 1)
    tokenizer = Tokenizer.word_level(["a", "b", "c"])
    gen = torch.Generator().manual_seed(request.seed)

    def make(count: int) -> ClassificationData:
        words = torch.randint(3, (count, 6), generator=gen)
        texts = [" ".join("abc"[i] for i in row) for row in words.tolist()]
        ids = tokenizer.encode(texts, add_cls=True, max_len=None)
        return ClassificationData(ids, (words[:, 0] == 1).long())

    return TaskData("toy", "classification", make(n), make(64), tokenizer, 2, ["no", "yes"], 7)


def save_checkpoint(directory: Path, model: torch.nn.Module, label_names: list[str]) -> Path:
    """A growformer checkpoint of ``model`` as the trainer writes it, with a word-level
    tokenizer of the shared vocabulary (``label_names``: a classifier's classes)."""
    words = Tokenizer.word_level([f"w{i}" for i in range(VOCAB - 4)])
    classifier = model.kind == "classifier"
    return checkpoint.save(
        directory,
        step=0,
        model=model,
        optimizer=torch.optim.AdamW(model.parameters()),
        config=TrainConfig().to_dict(),
        tokenizer_json=words.to_json(),
        task={
            "name": "file" if classifier else "lm",
            "kind": "classification" if classifier else "lm",
            "label_names": label_names if classifier else None,
            "max_len": MAX_LEN,
            "info": {},
        },
        trainer_state={"step": 0},
    )


def sst2_config(sst2_dir: Path, dropout: float = 0.2) -> TrainConfig:
    """A small SST-2 run (one head per layer) whose first checkpoint the transformers
    tests start from."""
    model = {"d_model": 32, "n_layers": 2, "heads": 1, "head_dim": 8, "ffn_dim": 64}
    return TrainConfig.from_dict(
        {
            "task": "sst2",
            "data_dir": str(sst2_dir),
            "task_options": {"train_limit": 1000},
            "vocab_size": 1000,
            "max_len": 48,
            "model": {**model, "dropout": dropout},
            "device": "cpu",
        }
    )


def sst2_sentences(sst2_dir: Path, split: str, n: int) -> list[tuple[str, int]]:
    """The first ``n`` (sentence, label) rows of an SST-2 split."""
    lines = (sst2_dir / f"{split}.tsv").read_text().splitlines()[1 : n + 1]
    return [(text, int(label)) for text, label in (line.split("\t") for line in lines)]


def encoded(tokenizer: Any, rows: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """``rows`` as transformers' Trainer takes them: token ids, attention mask, label."""
    batch = tokenizer([text for text, _ in rows], truncation=True)
    return [
        {"input_ids": ids, "attention_mask": mask, "labels": label}
        for ids, mask, (_, label) in zip(
            batch["input_ids"], batch["attention_mask"], rows, strict=True
        )
    ]
