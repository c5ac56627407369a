"""The training loop: batches -> model -> statistics -> policy -> events -> surgery, logged.

:class:`Trainer` runs one run and delegates: its configuration to
:mod:`growformer.training.config`, its parts to :mod:`growformer.training.setup`, the
structural step to :class:`growformer.structure.StructuralStep`, evaluation to
:mod:`growformer.evaluation`, its logs to :class:`growformer.training.rundir.RunLogs` and
checkpoints to :class:`growformer.training.checkpointer.Checkpointer`. A resumed run
continues exactly where its last checkpoint stopped: same batches, same random numbers,
same optimizer state, same logs.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import math
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from growformer import checkpoint, statistics
from growformer.arch import Architecture
from growformer.data import StreamedData, eval_batches, train_batches
from growformer.distributed import DistributedError, Ranks
from growformer.errors import ConfigError, DivergenceError
from growformer.evaluation import evaluate
from growformer.flops import train_step_flops, without_loops
from growformer.fsdp import Sharding, full
from growformer.fsutil import atomic_write_text
from growformer.model import ATTN_INITS, build_model
from growformer.optim import OPTIMIZERS, lr_at
from growformer.policies import Policy, make_policy
from growformer.report import Logger, check_loggers
from growformer.structure import Budget, StructuralStep, layer_statistics, probe_loss
from growformer.training.callbacks import Callback, stop_requested
from growformer.training.checkpointer import Checkpointer
from growformer.training.config import TrainConfig, check_resumable
from growformer.training.config_files import RUN_CONFIG, dump_config
from growformer.training.rundir import RunLogs
from growformer.training.runtime import (
    TrainingStopped,
    keep_freed_memory,
    resolve_device,
    stop_requests,
)
from growformer.training.setup import (
    build_arch,
    initial_model,
    make_optimizer,
    task_data,
)


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    policy: Policy | None = None,
    train_data: Any = None,
    val_data: Any = None,
    tokenizer: Any = None,
    callbacks: Sequence[Callback] = (),
    loggers: Sequence[Logger] = (),
) -> dict[str, Any]:
    """Train according to ``cfg``, writing logs, checkpoints and ``summary.json`` to ``out``.

    Args:
        cfg: The run's configuration.
        out: Run directory.
        resume: Continue from the newest checkpoint in ``out`` (its configuration must
            match ``cfg`` except for the settings in
            :data:`growformer.training.config.RESUMABLE_CHANGES`).
        progress: Show a progress bar on standard error.
        policy: A structure policy to train with instead of the one ``cfg.policy`` names
            (e.g. an instance of your own :class:`Policy` subclass); ``cfg.policy`` then
            records its ``name``. Pass an equal one again to resume.
        train_data: Your records instead of the task's files, for task ``file`` (mappings
            with ``text`` and ``label``) or ``lm`` (``text``): a sequence of them, a torch
            ``Dataset`` or a ``datasets.Dataset`` (read once and encoded), or any other
            iterable (streamed through a shuffle buffer, never held; see
            :mod:`growformer.data.tasks.records`). Pass the same again to resume.
        val_data: Your validation records (by default a seeded share of held records, or
            a stream's first ``val_records``).
        tokenizer: Your tokenizer (a ``tokenizers.Tokenizer`` or a transformers fast
            tokenizer) instead of a BPE trained on the training texts.
        callbacks: Called at every step, log, evaluation and structural change; any may
            stop the run (see :mod:`growformer.training.callbacks`).
        loggers: Loggers of your own (:class:`growformer.report.Logger`), besides those
            ``cfg.loggers`` names.

    Returns:
        The summary written to ``out/summary.json``.
    """
    trainer = Trainer(
        cfg,
        out,
        resume=resume,
        policy=policy,
        data={"train_data": train_data, "val_data": val_data, "tokenizer": tokenizer},
        callbacks=callbacks,
        loggers=loggers,
    )
    return trainer.run(progress=progress)


class Trainer:
    """One run: its data, model, optimizer, policy, logs and counters.

    Args:
        cfg: The run's configuration.
        out: Run directory.
        resume: Continue from the newest checkpoint in ``out``.
        policy: A policy instance instead of the one ``cfg.policy`` names (see :func:`train`).
        data: ``train_data``, ``val_data`` and ``tokenizer`` (see :func:`train`).
        callbacks: Callbacks (see :func:`train`).
        loggers: Logger instances (see :func:`train`).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        out: str | Path,
        *,
        resume: bool = False,
        policy: Policy | None = None,
        data: dict[str, Any] | None = None,
        callbacks: Sequence[Callback] = (),
        loggers: Sequence[Logger] = (),
    ) -> None:
        check_loggers(cfg.loggers)  # before anything is built or written
        self.callbacks, self.loggers = list(callbacks), list(loggers)
        self.stopped_by: str | None = None
        if policy is not None:
            cfg = replace(cfg, policy=policy.name)
        self.cfg, self.out = cfg, Path(out)
        ckpt = checkpoint.load(self.out) if resume else None
        if ckpt is not None:
            check_resumable(ckpt.config, cfg)
        elif checkpoint.holds_run(self.out):
            raise ConfigError(
                f"{self.out} already holds a run; pass --resume to continue it, or another --out"
            )
        self.out.mkdir(parents=True, exist_ok=True)
        self.ranks = Ranks.from_env()
        sharded = cfg.distributed == "fsdp" and self.ranks.active
        if sharded and not OPTIMIZERS[cfg.optimizer].shardable:
            raise ConfigError(
                f"optimizer {cfg.optimizer} cannot step parameters sharded by FSDP2; "
                "use distributed: ddp or another optimizer"
            )
        parts = self.ranks.world * cfg.grad_accum_steps
        if cfg.batch_size % parts:
            raise ConfigError(
                f"batch_size {cfg.batch_size} (the global batch) does not split evenly over "
                f"{self.ranks.world} rank(s) x {cfg.grad_accum_steps} micro-batch(es)"
            )
        if self.ranks.main:  # what the run was started with, readable and re-runnable
            atomic_write_text(self.out / RUN_CONFIG, dump_config(cfg))
        self.device = self.ranks.device(resolve_device(cfg.device))
        if self.device.type == "cpu":
            keep_freed_memory()
        self.ranks.start(self.device)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)

        self.data = task_data(cfg, ckpt, **(data or {}))
        self.checkpointer = Checkpointer(self.out, cfg, self.ranks, self.data)
        self.policy = policy or make_policy(cfg.policy, cfg.policy_options)
        budget = Budget(cfg.max_params, cfg.max_heads_per_layer)
        self.structure = StructuralStep(self.policy, budget)
        if ckpt is not None:
            self.model = ckpt.model
        elif cfg.init is not None:
            self.model = initial_model(cfg, self.data)
            budget.check_initial(self.model.arch)
        else:
            arch = self.policy.initial_arch(build_arch(cfg, self.data))
            attn_init = cfg.model.attn_init or self.policy.attn_init
            if attn_init not in ATTN_INITS:
                raise ConfigError(f"model.attn_init must be one of {ATTN_INITS}, got {attn_init!r}")
            self.model = build_model(arch, attn_init)
            budget.check_initial(self.model.arch)
        self.model.to(self.device).train()
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
            self.checkpointer.restore(ckpt, self.optimizer, self.state, self.policy)
        self.sharding = (
            Sharding(self.ranks.world, functools.partial(make_optimizer, cfg=cfg))
            if sharded
            else None
        )
        if self.sharding is not None:
            self.model, self.optimizer = self.sharding.scatter(self.model, self.optimizer)
        # What the training step calls: the model (sharded or not), or a data-parallel
        # wrapper around it, and its compiled form (built at the first step that uses it).
        self.trained = self._wrap()
        self.compiled: torch.nn.Module | None = None
        self.logs = RunLogs(self.out, self.state, self.ranks.main)
        self.stream = train_batches(self.data.train, cfg.batch_size, cfg.seed, self.pad_id)
        if ckpt is None:
            self.structure.calibrate(self.model, map(self.stream.batch, itertools.count()))
        self.arch = self.model.arch
        self.metrics: dict[str, float] = {}
        self._started = time.perf_counter()
        self._wall_before = self.state["wall_s"]

    @property
    def pad_id(self) -> int:
        return self.data.tokenizer.pad_id

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
        loggers = self.logs.open_loggers(
            [*cfg.loggers, *(["tensorboard"] if cfg.tensorboard else [])],
            self.loggers,
            self.state["step"],
            self.arch,
            self.model.num_params(),
        )
        with bar, stop_requests() as stop, self._data_parallel(), loggers:
            while self.state["step"] < cfg.steps:
                lr = self.train_step()
                step = self.state["step"]
                self._ask("on_step", step, lr)
                # A signal reaches the ranks at different steps: they stop together.
                stopping = self.ranks.any(bool(stop))
                # Skipped batches leave no loss to log (the same on every rank).
                logging = step % cfg.log_every == 0 or step == cfg.steps
                if logging and self.state["loss_n"]:
                    train_loss = self._log_train_loss(lr)
                    bar.set_postfix(
                        loss=f"{train_loss:.3f}", heads=_heads(self.arch), refresh=False
                    )
                evaluated = step % cfg.eval_every == 0 or step == cfg.steps
                if evaluated:
                    self.evaluate()
                asked = self.ranks.any(self.stopped_by is not None)
                if asked and not evaluated:
                    self.evaluate()  # the run ends here: its summary measures this model
                if step % cfg.checkpoint_every == 0 or step == cfg.steps or stopping or asked:
                    self.save()
                bar.update(1)
                if stopping:
                    raise TrainingStopped(step, self.out)
                if asked:
                    break
            if self.sharding is not None:
                # What follows (the summary, the policy's report) runs on each rank alone.
                self.model, self.optimizer = self.sharding.gather(self.model, self.optimizer)
                self.sharding = None
        if not self.metrics:
            self.evaluate(log=False)
        summary = self.summary()
        if self.stopped_by is not None:
            summary["stopped_by"] = self.stopped_by
        if self.policy.heldout_batches:
            val = eval_batches(self.data.val, cfg.batch_size, self.pad_id)
            heldout = layer_statistics(
                self.model, itertools.islice(val, self.policy.heldout_batches)
            )
            summary.update(self.policy.report(heldout))
        self.logs.finish(summary)
        return summary

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
        whole = {k: v.to(self.device) for k, v in self.stream.batch(self.state["step"]).items()}
        batch = self.ranks.shard(whole)
        lr = lr_at(self.state["step"], self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        needs = self.structure.needs(self.state["step"])
        captured = statistics.Capture(len(self.model.transformer.layers), needs)
        loss = self._forward_backward(batch, needs, captured)
        # An infinite limit measures the norm and scales by exactly 1.0: nothing clipped.
        limit = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = full(torch.nn.utils.clip_grad_norm_(self.model.parameters(), limit))
        # Before the optimizer step, which would carry the non-finite values into the
        # weights; decided on all ranks together (a loss may be non-finite on one only).
        finite = not self.ranks.any(not torch.isfinite(loss.detach() + grad_norm).item())
        if finite:
            self.optimizer.step()
            self.state["nonfinite_skips"] = 0
        else:
            self._nonfinite(loss.item(), grad_norm.item())
        self.optimizer.zero_grad(set_to_none=True)
        shape = whole["input_ids"].shape
        self.state["train_flops"] += train_step_flops(self.arch, *shape)
        self.state["train_flops_no_loops"] += train_step_flops(without_loops(self.arch), *shape)
        self.state["step"] += 1
        step = self.state["step"]
        stats: dict[str, Any] = {}
        probe = functools.partial(probe_loss, batch=whole)
        if finite:
            self.state["loss_sum"] += loss.item()
            self.state["loss_n"] += 1
            captured.reduce(self.ranks.sum_)
            stats = captured.results(self.model, functools.partial(probe, self.model))
        done = self.structure.after_step(
            self.model, self.optimizer, step, stats, probe, self.sharding
        )
        self.model, self.optimizer = done.model, done.optimizer
        for refusal in done.refusals:
            self.logs.refusal(refusal)
        if done.events:
            self.arch = self.model.arch
            self.logs.events(step, done.events, self.arch, self.model.num_params())
            for record in done.events:
                self._ask("on_event", step, record.to_dict())
            self.ranks.check_same_structure(self.model)
            self.trained = self._wrap()
            if self.compiled is not None:
                # The old graphs are of a structure that is gone: drop them rather than
                # let guards pile up towards the recompilation limit.
                torch._dynamo.reset()
                self.compiled = None
        for record in done.stats:
            self.logs.stats(record)
        return lr

    def _forward_backward(
        self, batch: dict[str, torch.Tensor], needs: frozenset[str], captured: statistics.Capture
    ) -> torch.Tensor:
        """Gradients of this rank's batch, in ``cfg.grad_accum_steps`` micro-batches of
        equal size (each loss scaled by their count, so the gradients are the whole
        batch's mean), their statistics recorded into ``captured``; returns the loss."""
        parts = self.cfg.grad_accum_steps
        size = batch["input_ids"].shape[0] // parts
        autocast = torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16"
        )
        losses = []
        for i in range(parts):
            micro = {k: v[i * size : (i + 1) * size] for k, v in batch.items()}
            # The ranks exchange gradients once, after the last micro-batch.
            last = i == parts - 1
            if self.sharding is not None:
                self.model.set_requires_gradient_sync(last)
            no_sync = getattr(self.trained, "no_sync", None)
            with contextlib.nullcontext() if last or no_sync is None else no_sync():
                with captured.watch(self.model, micro.get("attention_mask")), autocast:
                    loss = self._step_module(needs)(**micro).loss
                (loss / parts).backward()
            losses.append(loss.detach())
        return torch.stack(losses).mean() if parts > 1 else losses[0]

    def _wrap(self) -> torch.nn.Module:
        """What the training step calls: a sharded model itself (its hooks exchange the
        shards), or a data-parallel wrapper, built anew after every structural change
        (:meth:`Ranks.wrap`)."""
        return self.model if self.sharding is not None else self.ranks.wrap(self.model)

    def _nonfinite(self, loss: float, grad_norm: float) -> None:
        """Skip the batch of a step whose loss or gradient norm is not finite (logged in
        metrics.jsonl), or stop with :class:`DivergenceError` when ``cfg.on_nonfinite`` is
        ``"stop"`` or ``cfg.max_nonfinite_skips`` batches in a row were skipped."""
        step = self.state["step"] + 1
        what = f"non-finite loss {loss} or gradient norm {grad_norm} at step {step}"
        self.state["nonfinite_skips"] += 1
        skips = self.state["nonfinite_skips"]
        if self.cfg.on_nonfinite == "skip" and skips <= self.cfg.max_nonfinite_skips:
            self.logs.skipped(step, what)
            return
        after = f" after {skips - 1} skipped in a row" if skips > 1 else ""
        raise DivergenceError(
            f"{what}{after}; stopped before the optimizer step, the last checkpoint in "
            f"{self.out} is intact (lower lr, or set on_nonfinite to skip, and --resume)"
        )

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
            lockstep=self.sharding is not None,
        )
        self.metrics = {f"val_{k}": v for k, v in result.items() if k not in ("n", "tokens")}
        if log:
            self.logs.evaluation(self.state["step"], self.metrics)
            self._ask("on_evaluate", self.state["step"], dict(self.metrics))
        return self.metrics

    def save(self) -> Path | None:
        """Checkpoint the run (see :meth:`Checkpointer.save`); returns its directory, or
        None on ranks that write nothing."""
        self.state["wall_s"] = self._wall()
        return self.checkpointer.save(
            self.model, self.optimizer, self.state, self.policy, self.sharding
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
            "events": self.logs.read_events(),
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
            "ranks": self.ranks.world,
            "data": {
                "train": "streamed" if isinstance(data.train, StreamedData) else len(data.train),
                "val": len(data.val),
                "vocab_size": data.vocab_size,
            },
        }

    def _log_train_loss(self, lr: float) -> float:
        train_loss = self.ranks.mean(self.state["loss_sum"] / self.state["loss_n"])
        step, params = self.state["step"], self.model.num_params()
        self.logs.train(step, train_loss, lr, self.arch, params)
        self.state["loss_sum"], self.state["loss_n"] = 0.0, 0
        self._ask("on_log", step, train_loss)
        return train_loss

    def _ask(self, hook: str, step: int, *args: Any) -> None:
        """Call ``hook`` on the callbacks; keep the first request to stop."""
        name = stop_requested(self.callbacks, hook, self, step, *args)
        if name is not None and self.stopped_by is None:
            self.stopped_by = f"{name}.{hook} at step {step}"

    def _wall(self) -> float:
        return self._wall_before + time.perf_counter() - self._started


def _heads(arch: Architecture) -> str:
    return "/".join(str(layer.heads) for layer in arch.layers)
