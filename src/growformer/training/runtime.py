"""The process a run lives in: its device, the C library's memory settings, and the
signals that ask it to stop."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

from growformer.errors import ConfigError


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


class TrainingStopped(Exception):
    """Training stopped on a signal after saving a checkpoint at ``step``."""

    def __init__(self, step: int, out: Path) -> None:
        super().__init__(
            f"stopped at step {step}; checkpoint saved in {out} (resume with --resume)"
        )
        self.step = step


@contextlib.contextmanager
def stop_requests() -> Iterator[list[int]]:
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
