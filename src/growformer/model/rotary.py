"""Rotary position embedding (RoPE), applied to each head's queries and keys.

Pairs of a head's channels ``(i, i + head_dim / 2)`` are rotated by the angle
``position * theta ** (-2i / head_dim)`` (the rotate-half layout of GPT-NeoX and Llama).
The rotation depends only on the position and the channel within a head, so every head is
rotated alike: heads can be added, removed or re-run (loops) without touching the others,
and a cached key keeps the rotation of its position.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rotary_angles(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """Cosines and sines for ``positions``.

    Args:
        positions: (seq,) or (batch, seq) token positions.
        head_dim: Width of each head (even).
        theta: Base of the frequencies.

    Returns:
        (cos, sin), each (1 or batch, 1, seq, head_dim), in float32.
    """
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32)
    inv_freq = 1.0 / (theta ** (exponents / head_dim))
    angles = positions.float()[..., None] * inv_freq  # (..., seq, head_dim / 2)
    angles = torch.cat((angles, angles), -1)
    if angles.dim() == 2:
        angles = angles[None]
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (batch, heads, seq, head_dim) ``x`` by the angles of :func:`rotary_angles`."""
    first, second = x.chunk(2, -1)
    rotated = torch.cat((-second, first), -1)
    return (x * cos + rotated * sin).to(x.dtype)
