"""Statistics a structure policy decides from, computed from the model and its batches.

This is the one place that reads model tensors on a policy's behalf: policies receive
the results (plain tensors detached from the model) and never see the model itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from growformer.model import ElasticModel


@dataclass
class LayerStats:
    """What the INCRT gate needs of one layer.

    Args:
        cov: (d, d) second moment ``X^T X / n`` of the layer's attention input (after
            its pre-norm), over real tokens only.
        forms: (heads, d, d) antisymmetric part of each head's query-key form
            ``M^h = W_Q^h (W_K^h)^T``.
        tokens: Number of tokens ``cov`` was taken over.
    """

    cov: Tensor
    forms: Tensor
    tokens: int


class InputCapture:
    """Accumulates every layer's attention-input second moment over forward passes."""

    def __init__(self, n_layers: int) -> None:
        self.sums: list[Tensor | None] = [None] * n_layers
        self.tokens = [0] * n_layers

    def add(self, layer: int, x: Tensor, mask: Tensor | None) -> None:
        x = x.detach().to(torch.float64)
        x = x.reshape(-1, x.shape[-1]) if mask is None else x[mask.bool()]
        s = x.T @ x
        self.sums[layer] = s if self.sums[layer] is None else self.sums[layer] + s
        self.tokens[layer] += x.shape[0]

    def covariances(self) -> list[Tensor]:
        return [s / max(n, 1) for s, n in zip(self.sums, self.tokens, strict=True)]


@contextlib.contextmanager
def capture_inputs(
    model: ElasticModel, attention_mask: Tensor | None, capture: InputCapture | None = None
) -> Iterator[InputCapture]:
    """Record each layer's normalised attention input during the forward passes inside.

    Args:
        model: The model whose layers to watch.
        attention_mask: (batch, seq) True for real tokens (None: all real).
        capture: Accumulate into this capture (several batches); a new one by default.
    """
    layers = model.transformer.layers
    capture = capture or InputCapture(len(layers))
    handles = [
        block.ln_1.register_forward_hook(
            lambda module, args, out, i=i: capture.add(i, out, attention_mask)
        )
        for i, block in enumerate(layers)
    ]
    try:
        yield capture
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def query_key_forms(model: ElasticModel, layer: int) -> Tensor:
    """(heads, d, d) antisymmetric parts of the layer's per-head query-key forms."""
    attn = model.transformer.layers[layer].attn
    h, hd = attn.heads, attn.head_dim
    wq = attn.q_proj.weight.detach().to(torch.float64).view(h, hd, -1)
    wk = attn.k_proj.weight.detach().to(torch.float64).view(h, hd, -1)
    # Scores are z_i^T (W_q^T W_k) z_j with PyTorch's (out, in) weight layout.
    m = wq.transpose(1, 2) @ wk
    return (m - m.transpose(1, 2)) / 2


def layer_stats(model: ElasticModel, capture: InputCapture) -> list[LayerStats]:
    """Combine captured input moments with the model's current query-key forms."""
    covs = capture.covariances()
    return [
        LayerStats(
            cov=covs[i].cpu(), forms=query_key_forms(model, i).cpu(), tokens=capture.tokens[i]
        )
        for i in range(len(covs))
    ]
