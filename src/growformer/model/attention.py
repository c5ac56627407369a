"""Multi-head attention whose head count can change between optimizer steps."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ElasticAttention(nn.Module):
    """Scaled dot-product attention with ``heads`` heads of width ``head_dim``.

    The head count is not stored: it is read off the projection shapes, so a structural
    change of the weights (see :mod:`growformer.surgery`) cannot leave it stale.

    Args:
        d_model: Width of the residual stream.
        heads: Initial number of heads.
        head_dim: Width of each head.
        dropout: Dropout on attention probabilities and on the output.
    """

    def __init__(self, *, d_model: int, heads: int, head_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.dropout = dropout
        with warnings.catch_warnings():
            # A layer pruned to zero heads has empty projections; that is intended.
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            self.q_proj = nn.Linear(d_model, heads * head_dim, bias=False)
            self.k_proj = nn.Linear(d_model, heads * head_dim, bias=False)
            self.v_proj = nn.Linear(d_model, heads * head_dim, bias=False)
            self.o_proj = nn.Linear(heads * head_dim, d_model, bias=False)
        self.resid_drop = nn.Dropout(dropout)

    @property
    def heads(self) -> int:
        return self.q_proj.weight.shape[0] // self.head_dim

    def forward(
        self,
        hidden_states: Tensor,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        rows: Tensor | None = None,
    ) -> Tensor:
        """Attend and project back to the residual width.

        Args:
            hidden_states: (batch, seq, d_model) normalised input.
            attn_mask: Boolean (batch, 1, 1, seq), True where a key may be attended.
            is_causal: Apply a causal mask (language modelling).
            rows: Projection rows of a subset of heads to compute (looped passes); None
                computes every head.
        """
        if rows is None:
            q, k, v = (
                self.q_proj(hidden_states),
                self.k_proj(hidden_states),
                self.v_proj(hidden_states),
            )
            wo = self.o_proj.weight
        else:
            q = F.linear(hidden_states, self.q_proj.weight[rows])
            k = F.linear(hidden_states, self.k_proj.weight[rows])
            v = F.linear(hidden_states, self.v_proj.weight[rows])
            wo = self.o_proj.weight[:, rows]
        b, t, _ = hidden_states.shape
        q, k, v = (x.view(b, t, -1, self.head_dim).transpose(1, 2) for x in (q, k, v))
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )
        y = y.transpose(1, 2).reshape(b, t, -1)
        return self.resid_drop(F.linear(y, wo))


def head_rows(heads: list[int] | tuple[int, ...], head_dim: int) -> Tensor:
    """Row indices of the given heads in a (heads * head_dim, d_model) projection."""
    if not heads:
        return torch.empty(0, dtype=torch.long)
    return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads])
