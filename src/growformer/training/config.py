"""What a training run is configured by: :class:`TrainConfig` and :class:`ModelConfig`,
built from dicts with one-line errors naming the bad key, and which settings a resumed run
may change (files and overrides: :mod:`growformer.training.config_files`)."""

from __future__ import annotations

import types
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from growformer.arch import FAMILY_FIELDS
from growformer.errors import ConfigError
from growformer.optim import SCHEDULES, check_optimizer
from growformer.validation import is_finite, is_int, is_number, key_list

# Settings that may differ between a run and its resumption (they do not change the math,
# or change it only from the resumption on, as the user means to: a fault's handling, a cap).
RESUMABLE_CHANGES = frozenset(
    {
        "steps",
        "grad_accum_steps",
        "eval_every",
        "checkpoint_every",
        "keep_checkpoints",
        "log_every",
        "compile",
        "tensorboard",
        "loggers",
        "on_nonfinite",
        "max_nonfinite_skips",
        "max_params",
        "max_heads_per_layer",
        "distributed",
        "checkpoint_format",
    }
)
PRECISIONS = ("fp32", "bf16")
DISTRIBUTED = ("ddp", "fsdp")
CHECKPOINT_FORMATS = ("full", "sharded")
ON_NONFINITE = ("stop", "skip")


MODEL_FAMILY_FIELDS = tuple(f for f in FAMILY_FIELDS if f not in ("type_vocab_size", "pooler"))
"""The block-family fields of :class:`ModelConfig`, passed on to the architecture."""


@dataclass
class ModelConfig:
    """Initial model shape (a policy may change it while training).

    Args:
        d_model: Width of the residual stream.
        n_layers: Number of layers.
        heads: Heads per layer.
        head_dim: Width of each head.
        ffn_dim: Feed-forward hidden width.
        dropout: Dropout probability.
        layers: Explicit per-layer shapes (``heads``, ``head_dim``, ``ffn_dim``, ``loops``,
            ``looped_heads``, ``block_loops``, ``fade``, ``kv_heads``: the fields of
            :meth:`Architecture.to_dict`); when given, it replaces
            n_layers/heads/head_dim/ffn_dim.
        attn_init: Attention initialisation, ``"gpt2"`` or ``"reference"`` (see
            :meth:`ElasticModel.init_weights`); default: the policy's choice.
        embed_rank: Factored token embedding of this width (see :class:`Architecture`);
            None: a full ``vocab x d_model`` table.
        norm, norm_eps, norm_position, mlp, positions, rope_theta, attn_bias, mlp_bias:
            The block family (see :class:`Architecture`); None takes the architecture's
            default, growformer's GPT-2-style block. Llama-style: ``norm: rmsnorm, mlp:
            swiglu, positions: rotary, mlp_bias: false``.
    """

    d_model: int = 128
    n_layers: int = 2
    heads: int = 4
    head_dim: int = 32
    ffn_dim: int = 512
    dropout: float = 0.2
    layers: list[dict[str, Any]] | None = None
    attn_init: str | None = None
    embed_rank: int | None = None
    norm: str | None = None
    norm_eps: float | None = None
    norm_position: str | None = None
    mlp: str | None = None
    positions: str | None = None
    rope_theta: float | None = None
    attn_bias: bool | None = None
    mlp_bias: bool | None = None


@dataclass
class TrainConfig:
    """Everything a training run depends on.

    Args:
        task: A task of :func:`growformer.data.load_task` (``sst2``, ``channels``, ...);
            ``file`` or ``lm`` for records passed to :func:`growformer.train`.
        policy: Structure policy name (``static``, ``scheduled``, ``incrt``, ``sgt``, ...;
            ``a+b`` composes policies).
        seed: Seed of model initialisation, data order and dropout.
        steps: Optimizer steps in total.
        batch_size: Sequences per optimizer step: the global batch, over every rank and
            micro-batch.
        grad_accum_steps: Micro-batches each rank's share of the batch is cut into, their
            gradients summed before the step (the memory of one micro-batch). The
            statistics are taken over all of them, so structural decisions do not depend
            on the cut; without dropout the run is the one of the whole batch (dropout
            masks are drawn per micro-batch). It may change on resume.
        lr: Peak learning rate.
        min_lr_ratio: Final learning rate of the schedule, relative to ``lr``.
        warmup_steps: Linear warm-up length.
        decay_steps: Step at which the decay ends (default: ``steps``); set it to
            train in several sessions along one schedule.
        weight_decay: Weight decay on matrices (not on biases, norms).
        optimizer: ``adamw``, ``adam``, ``sgd``, ``adafactor`` or ``lion`` (see
            :mod:`growformer.optim`; its state follows every structural change).
        optimizer_options: The optimizer's other settings (``betas``, ``eps``,
            ``momentum``, ...), over its defaults.
        schedule: After the warm-up: ``cosine``, ``linear``, ``constant`` or ``wsd``
            (warm-up, stable, decay; see :mod:`growformer.optim.schedules`).
        cooldown_fraction: ``wsd``: the share of the steps after warm-up spent decaying.
        grad_clip: Maximum global gradient norm (0 disables clipping).
        eval_every: Evaluate every this many steps (and at the end).
        checkpoint_every: Checkpoint every this many steps (and at the end).
        keep_checkpoints: How many checkpoints to keep on disk.
        log_every: Write training loss to metrics.jsonl every this many steps.
        max_len: Longest input sequence, in tokens ([CLS] included).
        vocab_size: Tokenizer vocabulary size (trained on the training split).
        data_dir: Directory of the task's files.
        data_file: User TSV/CSV file (task ``file``) or FASTA file (task ``fasta``).
        labels_file: CSV ``id,label`` for the FASTA records (task ``fasta``).
        init: A checkpoint to start from instead of a new model (run or checkpoint
            directory, e.g. one ``growformer import`` wrote): its weights, structure and
            tokenizer (text tasks encode with it); the policy changes the structure from
            there. ``model`` and ``vocab_size`` are then unused.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        distributed: With several ranks (``torchrun``): ``ddp``, every rank holds the whole
            model (``DistributedDataParallel``), or ``fsdp``, each rank a shard of every
            block and of the rest (FSDP2's ``fully_shard``; a structural change gathers
            the model, see :mod:`growformer.fsdp`). One process ignores it.
        checkpoint_format: ``full``: the model and optimizer state in one file each (a
            transformers model directory; with ``fsdp`` gathered for rank 0 to write), or
            ``sharded``: each rank writes its own shards through
            ``torch.distributed.checkpoint``, and any number of ranks can resume from it.
        precision: ``fp32``, or ``bf16``: the training forward pass under bfloat16
            autocast (weights, optimizer and evaluation stay float32).
        compile: Run the training steps that take no statistics through
            ``torch.compile``; compiled again after each structural change.
        tensorboard: Also write the training statistics to ``RUN/tensorboard`` for
            TensorBoard (see :class:`growformer.report.TensorBoardLog`).
        loggers: Loggers of :data:`growformer.report.LOGGERS` to write to while training
            (``csv``: ``RUN/metrics.csv``; ``tensorboard``, as ``tensorboard: true``).
        on_nonfinite: What a step whose loss or gradient norm is not finite does, before
            its optimizer step: ``"stop"`` the run (:class:`DivergenceError`; the last
            checkpoint stays the newest), or ``"skip"`` the batch (logged in
            metrics.jsonl) and go on.
        max_nonfinite_skips: Most batches skipped in a row; one more non-finite step stops.
        max_params: Parameter budget: a structural change that would exceed it is refused
            (logged in stats.jsonl) and training goes on; None: no budget.
        max_heads_per_layer: Head budget of each layer, enforced the same way; None: none.
        task_options: Task-specific options.
        policy_options: Policy-specific options.
        model: Initial model shape.
    """

    task: str = "sst2"
    policy: str = "static"
    seed: int = 0
    steps: int = 2000
    batch_size: int = 64
    grad_accum_steps: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 200
    decay_steps: int | None = None
    weight_decay: float = 0.1
    optimizer: str = "adamw"
    optimizer_options: dict[str, Any] = field(default_factory=dict)
    schedule: str = "cosine"
    cooldown_fraction: float = 0.2
    grad_clip: float = 1.0
    eval_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 50
    max_len: int = 128
    vocab_size: int = 8000
    data_dir: str | None = None
    data_file: str | None = None
    labels_file: str | None = None
    init: str | None = None
    device: str = "auto"
    distributed: str = "ddp"
    checkpoint_format: str = "full"
    precision: str = "fp32"
    compile: bool = False
    tensorboard: bool = False
    loggers: list[str] = field(default_factory=list)
    on_nonfinite: str = "stop"
    max_nonfinite_skips: int = 10
    max_params: int | None = None
    max_heads_per_layer: int | None = None
    task_options: dict[str, Any] = field(default_factory=dict)
    policy_options: dict[str, Any] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        for name in (
            "steps",
            "batch_size",
            "grad_accum_steps",
            "eval_every",
            "checkpoint_every",
            "keep_checkpoints",
            "log_every",
            "max_len",
            "vocab_size",
            "max_nonfinite_skips",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_params", "max_heads_per_layer"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive or null, got {getattr(self, name)}")
        for name in ("warmup_steps", "weight_decay", "grad_clip", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.decay_steps is not None and self.decay_steps <= 0:
            raise ConfigError(f"decay_steps must be positive, got {self.decay_steps}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        for name, known in (
            ("on_nonfinite", ON_NONFINITE),
            ("precision", PRECISIONS),
            ("distributed", DISTRIBUTED),
            ("checkpoint_format", CHECKPOINT_FORMATS),
        ):
            if getattr(self, name) not in known:
                raise ConfigError(
                    f"{name} must be one of {', '.join(known)}, got {getattr(self, name)!r}"
                )
        check_optimizer(self.optimizer, self.optimizer_options)
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r} (known: {', '.join(SCHEDULES)})")
        if not 0 <= self.cooldown_fraction <= 1:
            raise ConfigError(f"cooldown_fraction must be in [0, 1], got {self.cooldown_fraction}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> TrainConfig:
        """Build from a (possibly partial) dict, naming the first bad key."""
        return _dataclass_from_dict(cls, d, "config")


def check_resumable(saved: dict[str, Any], cfg: TrainConfig) -> None:
    # Through TrainConfig, so that a field added since the checkpoint reads as its default.
    saved = TrainConfig.from_dict(saved).to_dict()
    current = cfg.to_dict()
    for key in sorted(set(saved) | set(current)):
        if key not in RESUMABLE_CHANGES and saved.get(key) != current.get(key):
            raise ConfigError(
                f"cannot resume: {key} is {current.get(key)!r} but the checkpoint was trained "
                f"with {saved.get(key)!r}"
            )


def _dataclass_from_dict(cls: type, d: Any, where: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(d.keys() - known)
    if unknown:
        raise ConfigError(
            f"{where} has unknown key(s) {key_list(unknown)} (known: {key_list(known)})"
        )
    values = {}
    for key, value in d.items():
        hint = hints[key]
        if hint is ModelConfig:
            values[key] = _dataclass_from_dict(ModelConfig, value, f"{where}.{key}")
        else:
            values[key] = _check_type(value, hint, f"{where}.{key}")
    try:
        return cls(**values)
    except ConfigError as e:  # the value checks name the field, not where it was read
        raise ConfigError(f"{where}: {e}") from e


def _check_type(value: Any, hint: Any, where: str) -> Any:
    """Accept ``value`` if it fits the simple type ``hint`` (ints are accepted as floats)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        base = typing.get_origin(option) or option
        if option is type(None) and value is None:
            return value
        if base is float and is_number(value):
            if not is_finite(value):  # NaN, infinities, ints float() refuses
                raise ConfigError(f"{where} must be a finite number, got {value!r}")
            return float(value)
        if base is int and is_int(value):
            return value
        if base in (bool, str, dict, list) and isinstance(value, base):
            return value
    raise ConfigError(f"{where} has the wrong type: {value!r}")
