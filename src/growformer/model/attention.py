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
        head_weights: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """Attend and project back to the residual width.

        Args:
            hidden_states: (batch, seq, d_model) normalised input.
            attn_mask: Boolean (batch, 1, 1, seq), True where a key may be attended.
            is_causal: Apply a causal mask (language modelling).
            rows: Projection rows of a subset of heads to compute (looped passes); None
                computes every head.
            head_weights: (heads,) factors on each computed head's output (a loop's soft
                start); None weighs every head 1.
            cache: Keys and values of the earlier positions (incremental decoding); this
                call's are appended to it.
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
        if cache is not None:
            k, v = cache.extend(k, v)
            past = k.shape[2] - t
            if past and is_causal:
                # The new queries sit at positions past..past+t-1; the kernel's own causal
                # mask would align them with the first keys instead.
                if t > 1:
                    attn_mask = torch.ones(t, past + t, dtype=torch.bool, device=k.device)
                    attn_mask = attn_mask.tril(past)
                is_causal = False
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )
        if head_weights is not None:
            y = y * head_weights.view(1, -1, 1, 1)
        y = y.transpose(1, 2).reshape(b, t, -1)
        return self.resid_drop(F.linear(y, wo))


class KVCache:
    """Keys and values of every attention call of a forward pass, one entry per call.

    A looped layer makes several attention calls per forward pass, each on a different
    residual stream: every pass needs its own keys and values. The calls come in the same
    order at every pass over the same structure, so entries are matched by position;
    :meth:`start` rewinds at the beginning of a pass and :meth:`finish` checks that the
    pass made exactly the calls the cache holds.
    """

    def __init__(self) -> None:
        self.entries: list[tuple[Tensor, Tensor]] = []
        self._cursor = 0

    @property
    def length(self) -> int:
        """Positions cached so far."""
        return self.entries[0][0].shape[2] if self.entries else 0

    def start(self) -> None:
        """Rewind to the first attention call (a new forward pass begins)."""
        self._cursor = 0

    def extend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append this call's (batch, heads, new, head_dim) keys and values; return all."""
        if self._cursor < len(self.entries):
            past_k, past_v = self.entries[self._cursor]
            if past_k.shape[:2] + past_k.shape[3:] != k.shape[:2] + k.shape[3:]:
                raise ValueError(
                    f"attention call {self._cursor} has keys of shape {tuple(k.shape)} but the "
                    f"cache holds {tuple(past_k.shape)}: the structure changed since it was filled"
                )
            k, v = torch.cat([past_k, k], 2), torch.cat([past_v, v], 2)
            self.entries[self._cursor] = (k, v)
        else:
            self.entries.append((k, v))
        self._cursor += 1
        return k, v

    def finish(self) -> None:
        """Check that the forward pass made as many attention calls as the cache holds."""
        if self._cursor != len(self.entries):
            raise ValueError(
                f"the cache holds {len(self.entries)} attention calls but this pass made "
                f"{self._cursor}: the structure changed since the cache was filled"
            )


def head_rows(heads: list[int] | tuple[int, ...], head_dim: int) -> Tensor:
    """Row indices of the given heads in a (heads * head_dim, d_model) projection."""
    if not heads:
        return torch.empty(0, dtype=torch.long)
    return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads])
