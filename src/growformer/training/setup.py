"""The parts a run is built from: its data, initial architecture and optimizer (the
learning-rate schedule: :mod:`growformer.optim.schedules`)."""

from __future__ import annotations

from typing import Any

import torch

from growformer import checkpoint
from growformer.arch import Architecture, layer_from_dict
from growformer.data import TaskData, Tokenizer, load_task
from growformer.data.records import as_tokenizer
from growformer.errors import ArchitectureError, ConfigError, DataError
from growformer.model import ElasticModel
from growformer.optim import build_optimizer
from growformer.training.config import MODEL_FAMILY_FIELDS, TrainConfig


def build_arch(cfg: TrainConfig, data: TaskData) -> Architecture:
    """The initial architecture for ``cfg`` on ``data``."""
    m = cfg.model
    specs = (
        m.layers or [{"heads": m.heads, "head_dim": m.head_dim, "ffn_dim": m.ffn_dim}] * m.n_layers
    )
    try:
        layers = tuple(layer_from_dict(i, s) for i, s in enumerate(specs))
        return Architecture(
            kind="classifier" if data.kind == "classification" else "causal_lm",
            d_model=m.d_model,
            vocab_size=data.vocab_size,
            max_len=data.max_len,
            layers=layers,
            num_labels=data.num_labels,
            dropout=m.dropout,
            embed_rank=m.embed_rank,
            **{n: getattr(m, n) for n in MODEL_FAMILY_FIELDS if getattr(m, n) is not None},
        )
    except (TypeError, ArchitectureError) as e:
        raise ConfigError(f"invalid model configuration: {e}") from None


def make_optimizer(model: ElasticModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    """``cfg``'s optimizer over ``model`` (see :mod:`growformer.optim`)."""
    return build_optimizer(
        model,
        name=cfg.optimizer,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        options=cfg.optimizer_options,
    )


def initial_model(cfg: TrainConfig, data: TaskData) -> ElasticModel:
    """The model of ``cfg.init``, checked to fit ``data``.

    Raises:
        ConfigError: It is of another kind, has another number of classes, or reads fewer
            positions than the task's inputs.
    """
    init = checkpoint.load(cfg.init)
    arch = init.model.arch
    kind = "classifier" if data.kind == "classification" else "causal_lm"
    if arch.kind != kind:
        raise ConfigError(f"init {cfg.init} is a {arch.kind}, task {cfg.task} needs a {kind}")
    if arch.num_labels != data.num_labels:
        raise ConfigError(
            f"init {cfg.init} classifies into {arch.num_labels} classes, task {cfg.task} has "
            f"{data.num_labels} (import it with --num-labels {data.num_labels})"
        )
    if data.max_len > arch.max_len:
        raise ConfigError(
            f"init {cfg.init} reads at most {arch.max_len} positions; set max_len to at most that"
        )
    return init.model


@torch.no_grad()
def task_data(
    cfg: TrainConfig,
    ckpt: checkpoint.Checkpoint | None = None,
    *,
    train_data: Any = None,
    val_data: Any = None,
    tokenizer: Any = None,
) -> TaskData:
    """The task ``cfg`` trains on (encoded with ``cfg.init``'s tokenizer when it starts
    from a checkpoint, or with ``tokenizer``); with ``ckpt``, checked to be the data it was
    trained on. ``train_data`` and ``val_data``: your records (see :func:`load_task`).

    Raises:
        ConfigError: Both ``cfg.init`` and ``tokenizer`` are given.
        DataError: The data (hence the tokenizer trained on them) differ from ``ckpt``'s.
    """
    if tokenizer is not None:
        if cfg.init is not None:
            raise ConfigError("init brings its model's tokenizer: pass init or tokenizer, not both")
        tokenizer = as_tokenizer(tokenizer)
    if cfg.init is not None:
        tokenizer = Tokenizer.from_json(checkpoint.load(cfg.init).tokenizer_json)
    data = load_task(
        cfg.task,
        data_dir=cfg.data_dir,
        data_file=cfg.data_file,
        labels_file=cfg.labels_file,
        seed=cfg.seed,
        max_len=cfg.max_len,
        vocab_size=cfg.vocab_size,
        options=cfg.task_options,
        tokenizer=tokenizer,
        train_data=train_data,
        val_data=val_data,
    )
    if ckpt is not None and ckpt.tokenizer_json != data.tokenizer.to_json():
        raise DataError(
            f"the task's data differ from those the checkpoint {ckpt.path} was trained on"
        )
    return data
