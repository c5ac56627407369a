"""Training loop: batches -> model -> statistics -> policy -> events -> surgery, logged.

A run directory holds ``events.jsonl`` (one structural change a line), ``metrics.jsonl``
(training loss and evaluations), ``checkpoints/`` and, at the end, ``summary.json``.
A resumed run continues exactly where its last checkpoint stopped: same batches, same
random numbers, same optimizer state, same logs.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import itertools
import json
import math
import random
import signal
import sys
import threading
import time
import types
import typing
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from growformer import checkpoint, statistics, surgery
from growformer.arch import Architecture, layer_from_dict
from growformer.data import BatchStream, TaskData, eval_batches, load_task
from growformer.distributed import DistributedError, Ranks
from growformer.errors import (
    ArchitectureError,
    CheckpointError,
    ConfigError,
    DataError,
    DivergenceError,
    read_json,
)
from growformer.events import Event
from growformer.flops import train_step_flops, without_loops
from growformer.fsutil import atomic_write_text
from growformer.model import ATTN_INITS, ElasticModel, build_model
from growformer.policies import Policy, make_policy
from growformer.report import TensorBoardLog, write_report
from growformer.statistics import InputCapture, LayerStats, capture_inputs, layer_stats

# Settings that may differ between a run and its resumption (they do not change the math,
# or change it only from the resumption on, as the user means to: a fault's handling, a cap).
RESUMABLE_CHANGES = frozenset(
    {
        "steps",
        "eval_every",
        "checkpoint_every",
        "keep_checkpoints",
        "log_every",
        "compile",
        "tensorboard",
        "on_nonfinite",
        "max_nonfinite_skips",
        "max_params",
        "max_heads_per_layer",
    }
)
PRECISIONS = ("fp32", "bf16")
ON_NONFINITE = ("stop", "skip")


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


@dataclass
class TrainConfig:
    """Everything a training run depends on.

    Args:
        task: A task of :func:`growformer.data.load_task` (``sst2``, ``channels``, ...).
        policy: Structure policy name (``static``, ``scheduled``, ``incrt``, ``sgt``, ...;
            ``a+b`` composes policies).
        seed: Seed of model initialisation, data order and dropout.
        steps: Optimizer steps in total.
        batch_size: Sequences per step.
        lr: Peak learning rate (AdamW).
        min_lr_ratio: Final learning rate of the cosine schedule, relative to ``lr``.
        warmup_steps: Linear warm-up length.
        decay_steps: Step at which the cosine decay ends (default: ``steps``); set it to
            train in several sessions along one schedule.
        weight_decay: AdamW weight decay on matrices (not on biases, norms).
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
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``fp32``, or ``bf16``: the training forward pass under bfloat16
            autocast (weights, optimizer and evaluation stay float32).
        compile: Run the training steps that take no statistics through
            ``torch.compile``; compiled again after each structural change.
        tensorboard: Also write the training statistics to ``RUN/tensorboard`` for
            TensorBoard (see :class:`growformer.report.TensorBoardLog`).
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
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 200
    decay_steps: int | None = None
    weight_decay: float = 0.1
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
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    tensorboard: bool = False
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
        if self.on_nonfinite not in ON_NONFINITE:
            raise ConfigError(
                f"on_nonfinite must be one of {', '.join(ON_NONFINITE)}, got {self.on_nonfinite!r}"
            )
        for name in ("warmup_steps", "weight_decay", "grad_clip", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.decay_steps is not None and self.decay_steps <= 0:
            raise ConfigError(f"decay_steps must be positive, got {self.decay_steps}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> TrainConfig:
        """Build from a (possibly partial) dict, naming the first bad key."""
        return _dataclass_from_dict(cls, d, "config")


def read_config(path: str | Path) -> dict[str, Any]:
    """The keys a JSON configuration file sets, validated against :class:`TrainConfig`."""
    p = Path(path)
    d = read_json(p, "config file")
    try:
        TrainConfig.from_dict(d)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
    return d


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
        )
    except (TypeError, ArchitectureError) as e:
        raise ConfigError(f"invalid model configuration: {e}") from None


def make_optimizer(model: ElasticModel, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only; parameter order follows the model."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, (cfg.decay_steps or cfg.steps) - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def task_data(cfg: TrainConfig, ckpt: checkpoint.Checkpoint | None = None) -> TaskData:
    """The task ``cfg`` trains on; with ``ckpt``, checked to be the data it was trained on.

    Raises:
        DataError: The data (hence the tokenizer trained on them) differ from ``ckpt``'s.
    """
    data = load_task(
        cfg.task,
        data_dir=cfg.data_dir,
        data_file=cfg.data_file,
        labels_file=cfg.labels_file,
        seed=cfg.seed,
        max_len=cfg.max_len,
        vocab_size=cfg.vocab_size,
        options=cfg.task_options,
    )
    if ckpt is not None and ckpt.tokenizer_json != data.tokenizer.to_json():
        raise DataError(
            f"the task's data differ from those the checkpoint {ckpt.path} was trained on"
        )
    return data


def evaluate(
    model: ElasticModel, data: Any, *, batch_size: int, pad_id: int, ranks: Ranks | None = None
) -> dict[str, float]:
    """Loss, accuracy and macro-F1 (classification) or perplexity (LM) over all of ``data``.

    Args:
        model: The model (not a DDP wrapper: evaluation makes no collective call of its own).
        data: The examples.
        batch_size: Examples per batch.
        pad_id: Padding id for classification batches.
        ranks: Data-parallel ranks that share the work: each evaluates every
            ``world``-th batch and the sums are added up over the ranks, so that every
            rank returns the metrics of all of ``data``. None: this process does it all.
    """
    ranks = ranks or Ranks()
    device = next(model.parameters()).device
    loss_sum, count, n = 0.0, 0, 0
    # confusion[label, prediction], for accuracy and per-class F1 (empty for language models).
    classes = model.arch.num_labels or 0
    confusion = torch.zeros(classes, classes, dtype=torch.long)
    with eval_mode(model):
        batches = eval_batches(data, batch_size, pad_id)
        for batch in itertools.islice(batches, ranks.rank, None, ranks.world):
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(batch["input_ids"], batch.get("attention_mask")).logits
            labels = batch["labels"]
            n += batch["input_ids"].shape[0]
            loss_sum += F.cross_entropy(
                logits.flatten(0, -2), labels.flatten(), reduction="sum"
            ).item()
            count += labels.numel()
            if model.kind == "classifier":
                confusion += confusion_matrix(labels.cpu(), logits.argmax(-1).cpu(), classes)
    if ranks.active:
        sums = torch.tensor([loss_sum, count, n], dtype=torch.float64, device=device)
        confusion = confusion.to(device)
        ranks.sum_([sums, confusion])
        loss_sum, count, n = sums[0].item(), int(sums[1].item()), int(sums[2].item())
        confusion = confusion.cpu()
    if n == 0:
        raise DataError("evaluation data is empty")
    loss = loss_sum / count
    if model.kind == "classifier":
        return {
            "loss": loss,
            "accuracy": confusion.diag().sum().item() / count,
            "macro_f1": macro_f1(confusion),
            "n": n,
        }
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "n": n, "tokens": count}


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, classes: int) -> torch.Tensor:
    """``confusion[label, prediction]`` counts of (N,) label and prediction indices."""
    pairs = labels * classes + predictions
    return torch.bincount(pairs, minlength=classes * classes).view(classes, classes)


def class_f1(confusion: torch.Tensor) -> torch.Tensor:
    """F1 per class of ``confusion[label, prediction]`` (0 for a class never seen)."""
    seen = (confusion.sum(0) + confusion.sum(1)).double()
    return 2 * confusion.diag().double() / seen.clamp_min(1)


def macro_f1(confusion: torch.Tensor) -> float:
    """Mean F1 over the classes present in the labels or the predictions of
    ``confusion[label, prediction]`` (a class absent from both has no defined F1)."""
    present = (confusion.sum(0) + confusion.sum(1)) > 0
    return class_f1(confusion)[present].mean().item()


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run the block without dropout, then restore the model's training mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def apply_events(
    model: ElasticModel,
    optimizer: torch.optim.Optimizer | None,
    policy: Policy,
    step: int,
    stats: dict[str, Any],
    probe: Callable[[], float],
    refuse: Callable[[Event], str | None] | None = None,
) -> list[Event]:
    """Apply the structural changes due once ``step`` optimizer steps are done.

    First the fades that are over (:func:`surgery.advance`), then the policy's turns
    (:meth:`Policy.decide_from`); the records of each turn are shown to
    :meth:`Policy.observe` before the next turn is asked for, and the requests refused
    to :meth:`Policy.refused`.

    Args:
        model: The model that surgery changes.
        optimizer: Its optimizer (the state of surviving parameters is carried), or None.
        policy: The structure policy.
        step: Optimizer steps done.
        stats: The statistics captured during the step (name -> per-layer values).
        probe: The loss a change is measured by, called just before and just after it
            (the record's ``loss_before`` and ``loss_after``).
        refuse: Why a request must not be applied (a budget it would exceed), or None to
            apply it; None: every request is applied.

    Returns:
        The records of the changes, in the order applied (``step`` filled in).
    """
    applied: list[Event] = []
    turns = itertools.chain([surgery.advance(model, step)], policy.decide_from(step, stats))
    for requests in turns:
        records, refused = [], []
        for request in requests:
            request.step = step
            if refuse is not None and refuse(request) is not None:
                refused.append(request)
                continue
            loss_before = probe()
            record = surgery.apply(model, optimizer, request)
            record.loss_before, record.loss_after = loss_before, probe()
            records.append(record)
        if refused:
            policy.refused(refused)
        if records:
            policy.observe(records)
            applied += records
    return applied


def param_count(arch: Architecture) -> int:
    """Parameters of a model of ``arch``, counted without allocating its weights."""
    with torch.device("meta"):
        return build_model(arch).num_params()


@torch.no_grad()
def probe_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """The loss of ``model`` on ``batch`` without dropout (a structural change's jump)."""
    with eval_mode(model):
        return model(**batch).loss.item()


@torch.no_grad()
def layer_statistics(
    model: ElasticModel, batches: Iterable[dict[str, torch.Tensor]]
) -> list[LayerStats]:
    """Layer statistics of ``model`` over ``batches`` (eval mode, no dropout)."""
    device = next(model.parameters()).device
    capture = InputCapture(len(model.transformer.layers))
    with eval_mode(model):
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            with capture_inputs(model, batch.get("attention_mask"), capture):
                model(batch["input_ids"], batch.get("attention_mask"))
    return layer_stats(model, capture)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return device


# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64 bits.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep the memory that CPU tensors free, for the next ones.

    By default glibc returns large freed blocks and the free top of its heap to the
    system, so a training step may fault in fresh pages for its activations and gradients
    each time it allocates them. Which tensors are hit depends on the order of earlier
    allocations: of two identical models, one may step a few percent slower than the
    other, and a model with a few more tensors a quarter slower (the loss's log-softmax
    and the gradients' zero fills took 4-6x longer in such a process). Raising the mmap
    threshold to glibc's maximum (32 MiB) and the trim threshold to 1 GiB keeps freed
    memory in the process for reuse. The setting is process-wide; the trainer applies it
    for CPU runs.

    Returns:
        Whether it was applied (False where the C library has no such settings).
    """
    if sys.platform != "linux":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, 2**30)) and bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    )


def train(
    cfg: TrainConfig, out: str | Path, *, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train according to ``cfg``, writing logs, checkpoints and ``summary.json`` to ``out``.

    Args:
        cfg: The run's configuration.
        out: Run directory.
        resume: Continue from the newest checkpoint in ``out`` (its configuration must
            match ``cfg`` except for the settings in :data:`RESUMABLE_CHANGES`).
        progress: Show a progress bar on standard error.

    Returns:
        The summary written to ``out/summary.json``.
    """
    return Trainer(cfg, out, resume=resume).run(progress=progress)


class Trainer:
    """One run: its data, model, optimizer, policy, logs and counters.

    Args:
        cfg: The run's configuration.
        out: Run directory.
        resume: Continue from the newest checkpoint in ``out``.
    """

    def __init__(self, cfg: TrainConfig, out: str | Path, *, resume: bool = False) -> None:
        self.cfg, self.out = cfg, Path(out)
        ckpt = checkpoint.load(self.out) if resume else None
        if ckpt is not None:
            _check_resumable(ckpt.config, cfg)
        elif (self.out / "checkpoints").exists():
            raise ConfigError(
                f"{self.out} already holds a run; pass --resume to continue it, or another --out"
            )
        self.out.mkdir(parents=True, exist_ok=True)
        self.ranks = Ranks.from_env()
        if cfg.batch_size % self.ranks.world:
            raise ConfigError(
                f"batch_size {cfg.batch_size} (the global batch) does not split evenly over "
                f"{self.ranks.world} ranks"
            )
        self.device = self.ranks.device(resolve_device(cfg.device))
        if self.device.type == "cpu":
            keep_freed_memory()
        self.ranks.start(self.device)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)

        self.data = task_data(cfg, ckpt)
        self.tokenizer_json = self.data.tokenizer.to_json()
        self.policy = make_policy(cfg.policy, cfg.policy_options)
        if ckpt is not None:
            self.model = ckpt.model
        else:
            arch = self.policy.initial_arch(build_arch(cfg, self.data))
            attn_init = cfg.model.attn_init or self.policy.attn_init
            if attn_init not in ATTN_INITS:
                raise ConfigError(f"model.attn_init must be one of {ATTN_INITS}, got {attn_init!r}")
            self.model = build_model(arch, attn_init)
            _check_budget(self.model.arch, cfg)
        self.model.to(self.device).train()
        # What the training step calls: the model, or a data-parallel wrapper around it,
        # and its compiled form (built at the first step that uses it).
        self.trained = self.ranks.wrap(self.model)
        self.compiled: torch.nn.Module | None = None
        self.optimizer = make_optimizer(self.model, cfg)
        self.state: dict[str, Any] = {
            "step": 0,
            "train_flops": 0,
            # The same steps without any loops: the baseline of flops_overhead_pct.
            "train_flops_no_loops": 0,
            "wall_s": 0.0,
            "events": 0,
            "metrics": 0,
            "loss_sum": 0.0,
            "loss_n": 0,
            "stats": 0,
            # Non-finite steps skipped in a row (on_nonfinite="skip").
            "nonfinite_skips": 0,
        }
        if ckpt is not None:
            self._restore(ckpt)
        main = self.ranks.main
        self.events_log = _Log(self.out / "events.jsonl", self.state["events"], main)
        self.metrics_log = _Log(self.out / "metrics.jsonl", self.state["metrics"], main)
        self.stats_log = _Log(self.out / "stats.jsonl", self.state["stats"], main)
        self.stream = BatchStream(self.data.train, cfg.batch_size, cfg.seed, self.pad_id)
        if ckpt is None and self.policy.calibration_batches:
            batches = (self.stream.batch(i) for i in range(self.policy.calibration_batches))
            self.policy.calibrate([layer_statistics(self.model, [b]) for b in batches])
        self.arch = self.model.arch
        self.metrics: dict[str, float] = {}
        # TensorBoard's writer while run() trains (rank 0, cfg.tensorboard).
        self.board: TensorBoardLog | None = None
        self._started = time.perf_counter()
        self._wall_before = self.state["wall_s"]

    @property
    def pad_id(self) -> int:
        return self.data.tokenizer.pad_id

    def _restore(self, ckpt: checkpoint.Checkpoint) -> None:
        """Continue from ``ckpt``: optimizer, counters, policy and random states, each
        checked, so that a damaged ``trainer_state.json`` is named rather than crashing
        the run later."""
        ckpt.load_optimizer(self.optimizer)
        saved = dict(ckpt.trainer_state)
        where = ckpt.path / "trainer_state.json"
        # Checkpoints from before the baseline was kept start it at train_flops (exact for
        # runs without loops).
        saved.setdefault("train_flops_no_loops", saved.get("train_flops"))
        saved.setdefault("nonfinite_skips", 0)
        for key, fresh in self.state.items():
            value = saved.get(key)
            kinds = (int, float) if isinstance(fresh, float) else (int,)
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise CheckpointError(f"{where}: '{key}' must be a number, got {value!r:.60}")
            if not (math.isfinite(value) and value >= 0):
                raise CheckpointError(f"{where}: '{key}' must be finite and >= 0, got {value}")
            self.state[key] = type(fresh)(value)
        try:
            self.policy.load_state_dict(saved["policy"])
            random.setstate(_tuple_state(saved["python_rng"]))
        except (
            KeyError,
            TypeError,
            ValueError,
            OverflowError,
            IndexError,
            AttributeError,
            RecursionError,
        ) as e:
            reason = str(e).splitlines()[0] if str(e) else ""
            raise CheckpointError(
                f"{where}: the policy or random state cannot be restored "
                f"({type(e).__name__}: {reason:.100})"
            ) from None
        ckpt.restore_rng()

    def run(self, progress: bool = True) -> dict[str, Any]:
        """Train to ``cfg.steps``; return the summary (also written to summary.json)."""
        cfg = self.cfg
        bar = tqdm(
            total=cfg.steps,
            initial=self.state["step"],
            desc=f"{cfg.task}/{cfg.policy}",
            disable=not progress or not self.ranks.main,
            file=sys.stderr,
            mininterval=0.5 if sys.stderr.isatty() else 30.0,
            dynamic_ncols=True,
        )
        with bar, _stop_requests() as stop, self._data_parallel(), self._tensorboard():
            while self.state["step"] < cfg.steps:
                lr = self.train_step()
                step = self.state["step"]
                # A signal reaches the ranks at different steps: they stop together.
                stopping = self.ranks.any(bool(stop))
                # Skipped batches leave no loss to log (the same on every rank).
                logging = step % cfg.log_every == 0 or step == cfg.steps
                if logging and self.state["loss_n"]:
                    train_loss = self._log_train_loss(lr)
                    bar.set_postfix(
                        loss=f"{train_loss:.3f}", heads=_heads(self.arch), refresh=False
                    )
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    self.evaluate()
                if step % cfg.checkpoint_every == 0 or step == cfg.steps or stopping:
                    self.save()
                bar.update(1)
                if stopping:
                    raise TrainingStopped(step, self.out)
        if not self.metrics:
            self.evaluate(log=False)
        summary = self.summary()
        if self.policy.heldout_batches:
            val = eval_batches(self.data.val, cfg.batch_size, self.pad_id)
            heldout = layer_statistics(
                self.model, itertools.islice(val, self.policy.heldout_batches)
            )
            summary.update(self.policy.report(heldout))
        if self.ranks.main:
            atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2))
            self._write_report()
        return summary

    def _write_report(self) -> None:
        """RUN/report (see :func:`growformer.report.write_report`); the run is saved
        whatever happens here, so a report that fails is a warning."""
        try:
            write_report(self.out)
        except Exception as e:
            warnings.warn(
                f"could not write the report of {self.out} ({type(e).__name__}: {e}); "
                f"retry with: growformer report {self.out}",
                RuntimeWarning,
                stacklevel=2,
            )

    @contextlib.contextmanager
    def _tensorboard(self) -> Iterator[None]:
        """Around the training loop: TensorBoard's writer on rank 0 if ``cfg.tensorboard``,
        starting with the structure trained from."""
        if not (self.cfg.tensorboard and self.ranks.main):
            yield
            return
        step = self.state["step"]
        self.board = TensorBoardLog(self.out / "tensorboard", step)
        self.board.structure(step, self.arch, self.model.num_params())
        try:
            yield
        finally:
            self.board.close()
            self.board = None

    @contextlib.contextmanager
    def _data_parallel(self) -> Iterator[None]:
        """Around the training loop: a collective that failed (another rank died or hung)
        becomes one clear error; the process group is left at the end (the loop is the
        last part of a run that talks to the other ranks)."""
        try:
            yield
        except RuntimeError as e:
            # Gloo reports a dead peer inside DDP's backward as a plain RuntimeError.
            lost = isinstance(e, dist.DistError) or any(
                word in str(e) for word in ("gloo", "NCCL", "Connection reset", "closed by peer")
            )
            if not (self.ranks.active and lost):
                raise
            raise DistributedError(
                f"rank {self.ranks.rank} lost contact with the other ranks at step "
                f"{self.state['step']} ({str(e).splitlines()[0]}); the last checkpoint in "
                f"{self.out} is intact: resume with --resume"
            ) from None
        finally:
            # DDP goes first, collected now (it holds reference cycles). Freed after the
            # group is destroyed, its reducer would hold the group's last reference and
            # destroy it with the GIL held, joining gloo threads that may need the GIL to
            # free a finished collective's tensors: a deadlock at the end of CPU torchrun
            # runs (3 of 3 trials of 300 teardowns under load; none in 900 in this order),
            # or an abort when that happens at interpreter exit.
            self.trained, self.compiled = self.model, None
            gc.collect()
            self.ranks.stop()

    def train_step(self) -> float:
        """One optimizer step, then the structural events; returns the step's lr.

        Events come from two places, in this order: fades that are over (the schedule a
        ``set_loops`` event started, see :func:`surgery.advance`), then the policy.
        """
        full = {k: v.to(self.device) for k, v in self.stream.batch(self.state["step"]).items()}
        batch = self.ranks.shard(full)
        lr = lr_at(self.state["step"], self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        needs = self.policy.needs(self.state["step"] + 1)
        autocast = torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16"
        )
        with (
            statistics.capture(self.model, batch.get("attention_mask"), needs) as captured,
            autocast,
        ):
            loss = self._step_module(needs)(**batch).loss
        loss.backward()
        # An infinite limit measures the norm and scales by exactly 1.0: nothing clipped.
        limit = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), limit)
        # Before the optimizer step, which would carry the non-finite values into the
        # weights; decided on all ranks together (a loss may be non-finite on one only).
        finite = not self.ranks.any(not torch.isfinite(loss.detach() + grad_norm).item())
        if finite:
            self.optimizer.step()
            self.state["nonfinite_skips"] = 0
        else:
            self._nonfinite(loss.item(), grad_norm.item())
        self.optimizer.zero_grad(set_to_none=True)
        shape = full["input_ids"].shape
        self.state["train_flops"] += train_step_flops(self.arch, *shape)
        self.state["train_flops_no_loops"] += train_step_flops(without_loops(self.arch), *shape)
        self.state["step"] += 1
        step = self.state["step"]
        stats: dict[str, Any] = {}
        probe = functools.partial(probe_loss, self.model, full)
        if finite:
            self.state["loss_sum"] += loss.item()
            self.state["loss_n"] += 1
            captured.reduce(self.ranks.sum_)
            stats = captured.results(self.model, probe)
        applied = apply_events(
            self.model, self.optimizer, self.policy, step, stats, probe, self._refuse
        )
        for record in applied:
            self.events_log.write(record.to_dict())
        self.state["events"] += len(applied)
        if applied:
            self.arch = self.model.arch
            if self.board is not None:
                self.board.events(step, applied)
                self.board.structure(step, self.arch, self.model.num_params())
            self.ranks.check_same_structure(self.model)
            self.trained = self.ranks.wrap(self.model)
            if self.compiled is not None:
                # The old graphs are of a structure that is gone: drop them rather than
                # let guards pile up towards the recompilation limit.
                torch._dynamo.reset()
                self.compiled = None
        for record in self.policy.drain_log():
            self.stats_log.write(record)
            if self.board is not None:
                self.board.stats(record)
            self.state["stats"] += 1
        return lr

    def _nonfinite(self, loss: float, grad_norm: float) -> None:
        """Skip the batch of a step whose loss or gradient norm is not finite (logged in
        metrics.jsonl), or stop with :class:`DivergenceError` when ``cfg.on_nonfinite`` is
        ``"stop"`` or ``cfg.max_nonfinite_skips`` batches in a row were skipped."""
        step = self.state["step"] + 1
        what = f"non-finite loss {loss} or gradient norm {grad_norm} at step {step}"
        self.state["nonfinite_skips"] += 1
        skips = self.state["nonfinite_skips"]
        if self.cfg.on_nonfinite == "skip" and skips <= self.cfg.max_nonfinite_skips:
            self.metrics_log.write({"step": step, "skipped": what})
            self.state["metrics"] += 1
            return
        after = f" after {skips - 1} skipped in a row" if skips > 1 else ""
        raise DivergenceError(
            f"{what}{after}; stopped before the optimizer step, the last checkpoint in "
            f"{self.out} is intact (lower lr, or set on_nonfinite to skip, and --resume)"
        )

    def _refuse(self, request: Event) -> str | None:
        """Why ``request`` must not be applied (it would exceed ``cfg.max_params`` or
        ``cfg.max_heads_per_layer``), logged in stats.jsonl; None to apply it."""
        arch, cfg = self.model.arch, self.cfg
        if cfg.max_params is None and cfg.max_heads_per_layer is None:
            return None
        # Only a new head grows the model; surgery rejects a bad layer or a grouped one.
        if request.op != "add_head" or not 0 <= request.layer < arch.n_layers:
            return None
        if arch.layers[request.layer].kv_heads is not None:
            return None
        heads = arch.layers[request.layer].heads + 1
        reason = _over_budget(arch.with_layer(request.layer, heads=heads), cfg)
        if reason is not None:
            record = {"step": request.step, "op": request.op, "layer": request.layer}
            self.stats_log.write({**record, "refused": reason})
            self.state["stats"] += 1
        return reason

    def _step_module(self, needs: frozenset[str]) -> torch.nn.Module:
        """What computes this step's loss: the compiled module when ``cfg.compile`` and the
        step takes no statistics (their hooks would break the graph), else the eager one."""
        if not self.cfg.compile or needs:
            return self.trained
        if self.compiled is None:
            self.compiled = torch.compile(self.trained)
        return self.compiled

    def evaluate(self, log: bool = True) -> dict[str, float]:
        """Validation metrics: val_loss, then val_accuracy and val_macro_f1, or val_ppl."""
        result = evaluate(
            self.model,
            self.data.val,
            batch_size=self.cfg.batch_size,
            pad_id=self.pad_id,
            ranks=self.ranks,
        )
        self.metrics = {f"val_{k}": v for k, v in result.items() if k not in ("n", "tokens")}
        if log:
            self.metrics_log.write({"step": self.state["step"], **self.metrics})
            if self.board is not None:
                self.board.evaluation(self.state["step"], self.metrics)
            self.state["metrics"] += 1
        return self.metrics

    def save(self) -> Path | None:
        """Checkpoint everything a resumed run needs (rank 0 writes; None on the others)."""
        self.state["wall_s"] = self._wall()
        if not self.ranks.main:
            return None
        return checkpoint.save(
            self.out,
            step=self.state["step"],
            model=self.model,
            optimizer=self.optimizer,
            config=self.cfg.to_dict(),
            tokenizer_json=self.tokenizer_json,
            task={
                "name": self.data.name,
                "kind": self.data.kind,
                "label_names": self.data.label_names,
                "max_len": self.data.max_len,
                "info": self.data.info,
            },
            trainer_state={
                **self.state,
                "policy": self.policy.state_dict(),
                "python_rng": random.getstate(),
            },
            keep=self.cfg.keep_checkpoints,
        )

    def summary(self) -> dict[str, Any]:
        cfg, data = self.cfg, self.data
        flops, base = self.state["train_flops"], self.state["train_flops_no_loops"]
        return {
            "task": cfg.task,
            "policy": cfg.policy,
            "seed": cfg.seed,
            "steps": self.state["step"],
            "architecture": self.arch.to_dict(),
            "params": self.model.num_params(),
            "metrics": self.metrics,
            "events": self.events_log.read(),
            "train_flops": self.state["train_flops"],
            "flops_overhead_pct": 100 * (flops / base - 1) if base else 0.0,
            "loop_structure": [
                {
                    "loops": layer.loops,
                    "looped_heads": list(layer.looped_heads),
                    "block_loops": layer.block_loops,
                }
                for layer in self.arch.layers
            ],
            "wall_s": round(self._wall(), 3),
            "device": str(self.device),
            "data": {"train": len(data.train), "val": len(data.val), "vocab_size": data.vocab_size},
        }

    def _log_train_loss(self, lr: float) -> float:
        train_loss = self.ranks.mean(self.state["loss_sum"] / self.state["loss_n"])
        self.metrics_log.write({"step": self.state["step"], "train_loss": train_loss, "lr": lr})
        if self.board is not None:
            self.board.train(self.state["step"], train_loss, lr)
            self.board.structure(self.state["step"], self.arch, self.model.num_params())
        self.state["metrics"] += 1
        self.state["loss_sum"], self.state["loss_n"] = 0.0, 0
        return train_loss

    def _wall(self) -> float:
        return self._wall_before + time.perf_counter() - self._started


class TrainingStopped(Exception):
    """Training stopped on a signal after saving a checkpoint at ``step``."""

    def __init__(self, step: int, out: Path) -> None:
        super().__init__(
            f"stopped at step {step}; checkpoint saved in {out} (resume with --resume)"
        )
        self.step = step


@contextlib.contextmanager
def _stop_requests() -> Iterator[list[int]]:
    """Turn SIGINT/SIGTERM into a request to stop after the current step."""
    requested: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: requested.append(signum))
    try:
        yield requested
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Log:
    """A JSON-lines file that, on resume, drops lines written after the checkpoint; only
    the ``writer`` (rank 0) touches the file."""

    def __init__(self, path: Path, keep: int, writer: bool = True) -> None:
        self.path = path
        self.writer = writer
        lines = path.read_text().splitlines(keepends=True) if path.exists() else []
        if writer and len(lines) != keep:
            atomic_write_text(path, "".join(lines[:keep]))

    def write(self, record: dict[str, Any]) -> None:
        if not self.writer:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


def _heads(arch: Architecture) -> str:
    return "/".join(str(layer.heads) for layer in arch.layers)


def _tuple_state(state: Any) -> Any:
    """JSON turns Python's RNG state tuples into lists; turn them back."""
    return tuple(_tuple_state(s) for s in state) if isinstance(state, list) else state


def _over_budget(arch: Architecture, cfg: TrainConfig) -> str | None:
    """Which of ``cfg``'s budgets ``arch`` exceeds, as a sentence; None if none."""
    cap = cfg.max_heads_per_layer
    if cap is not None:
        for i, layer in enumerate(arch.layers):
            if layer.heads > cap:
                return f"layer {i} heads {layer.heads} > max_heads_per_layer {cap}"
    if cfg.max_params is not None:
        n = param_count(arch)
        if n > cfg.max_params:
            return f"params {n} > max_params {cfg.max_params}"
    return None


def _check_budget(arch: Architecture, cfg: TrainConfig) -> None:
    reason = _over_budget(arch, cfg)
    if reason is not None:
        raise ConfigError(f"the initial model is over budget: {reason}")


def _check_resumable(saved: dict[str, Any], cfg: TrainConfig) -> None:
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
            f"{where} has unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    values = {}
    for key, value in d.items():
        hint = hints[key]
        if hint is ModelConfig:
            values[key] = _dataclass_from_dict(ModelConfig, value, f"{where}.{key}")
        else:
            values[key] = _check_type(value, hint, f"{where}.{key}")
    return cls(**values)


def _check_type(value: Any, hint: Any, where: str) -> Any:
    """Accept ``value`` if it fits the simple type ``hint`` (ints are accepted as floats)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        base = typing.get_origin(option) or option
        if option is type(None) and value is None:
            return value
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not abs(value) <= sys.float_info.max:  # NaN, infinities, ints float() refuses
                raise ConfigError(f"{where} must be a finite number, got {value!r}")
            return float(value)
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if base in (bool, str, dict, list) and isinstance(value, base):
            return value
    raise ConfigError(f"{where} has the wrong type: {value!r}")
