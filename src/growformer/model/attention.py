"""Multi-head attention whose head count can change between optimizer steps."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from growformer.model.rotary import apply_rotary


class ElasticAttention(nn.Module):
    """Scaled dot-product attention with ``heads`` heads of width ``head_dim``.

    The head counts are not stored: they are read off the projection shapes, so a
    structural change of the weights (see :mod:`growformer.surgery`) cannot leave them
    stale. With grouped keys and values, query head ``h`` attends with key/value head
    ``h // (heads // kv_heads)``.

    Args:
        d_model: Width of the residual stream.
        heads: Initial number of heads.
        head_dim: Width of each head.
        dropout: Dropout on attention probabilities and on the output.
        kv_heads: Number of key/value heads, a divisor of ``heads``; None gives every
            query head its own.
        bias: Biases on the four projections (the query, key and value biases belong to
            their heads like the weights' rows; the output bias to the layer).
        rope_theta: With rotary positions, the base of their frequencies: each head's
            queries and keys are rotated by their positions (see
            :mod:`growformer.model.rotary`; the angles come with every call). None: no
            rotation.
    """

    def __init__(
        self,
        *,
        d_model: int,
        heads: int,
        head_dim: int,
        dropout: float = 0.0,
        kv_heads: int | None = None,
        bias: bool = False,
        rope_theta: float | None = None,
    ) -> None:
        super().__init__()
        if kv_heads is not None and not (0 < kv_heads <= heads and heads % kv_heads == 0):
            raise ValueError(f"kv_heads={kv_heads} must be a divisor of heads={heads}")
        self.head_dim = head_dim
        self.dropout = dropout
        self.rope_theta = rope_theta
        # Kept apart from the shapes: kv_heads == heads is still a grouped layer, whose
        # structure surgery leaves alone.
        self.grouped = kv_heads is not None
        kv_dim = (heads if kv_heads is None else kv_heads) * head_dim
        with warnings.catch_warnings():
            # A layer pruned to zero heads has empty projections; that is intended.
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            self.q_proj = nn.Linear(d_model, heads * head_dim, bias=bias)
            self.k_proj = nn.Linear(d_model, kv_dim, bias=bias)
            self.v_proj = nn.Linear(d_model, kv_dim, bias=bias)
            self.o_proj = nn.Linear(heads * head_dim, d_model, bias=bias)
        self.resid_drop = nn.Dropout(dropout)

    @property
    def heads(self) -> int:
        return self.q_proj.weight.shape[0] // self.head_dim

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (``heads`` without grouping)."""
        return self.k_proj.weight.shape[0] // self.head_dim

    def subset_rows(self, heads: Sequence[int]) -> tuple[Tensor, Tensor, Tensor | None]:
        """The ``rows``, ``kv_rows`` and ``kv_index`` that make :meth:`forward` compute
        only the query heads ``heads``.

        Args:
            heads: Query head indices, in the order their outputs are wanted.

        Returns:
            The heads' query rows; the rows of the key/value heads they use, each once;
            and for each query head the index of its key/value head among those, or None
            where that is the head's own position (every head in a group of its own).
        """
        group = self.heads // self.kv_heads if self.kv_heads else 1
        # First-appearance order: without grouping, kv heads match the query heads one to one.
        kv = list(dict.fromkeys(h // group for h in heads))
        index = [kv.index(h // group) for h in heads]
        kv_index = None if index == list(range(len(heads))) else torch.tensor(index)
        return head_rows(heads, self.head_dim), head_rows(kv, self.head_dim), kv_index

    def forward(
        self,
        hidden_states: Tensor,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        rows: Tensor | None = None,
        head_weights: Tensor | None = None,
        cache: KVCache | None = None,
        kv_rows: Tensor | None = None,
        kv_index: Tensor | None = None,
        logit_bias: Tensor | None = None,
        angles: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Attend and project back to the residual width.

        Args:
            hidden_states: (batch, seq, d_model) normalised input.
            attn_mask: Boolean (batch, 1, 1, keys), True where a key may be attended (with
                a cache, the cached keys come first).
            is_causal: Apply a causal mask (language modelling).
            rows: Projection rows of a subset of heads to compute (looped passes); None
                computes every head. See :meth:`subset_rows`.
            head_weights: (heads,) factors on each computed head's output (a loop's soft
                start); None weighs every head 1.
            cache: Keys and values of the earlier positions (incremental decoding); this
                call's are appended to it, per key/value head (before they are shared out
                to the query heads).
            kv_rows: With ``rows``, the key/value projection rows those heads use; None
                takes ``rows`` (only right without grouping).
            kv_index: With ``rows``, each computed query head's key/value head among
                ``kv_rows``' heads; None: the head at its own position.
            logit_bias: (batch, heads, seq, seq) added to the attention logits (a
                measurement: a zero bias whose gradient is the loss's gradient on the
                logits); not with a cache.
            angles: With rotary positions, the (cos, sin) of the input's positions (see
                :func:`growformer.model.rotary.rotary_angles`).
        """
        q, k, v = self.project(hidden_states, rows, kv_rows, angles)
        b, t, _ = hidden_states.shape
        if cache is not None:
            k, v = cache.extend(k, v)
            past = k.shape[2] - t
            if past and is_causal:
                # The new queries sit at positions past..past+t-1; the kernel's own causal
                # mask would align them with the first keys instead.
                if t > 1:
                    causal = _causal(t, past + t, k.device)
                    attn_mask = causal if attn_mask is None else attn_mask & causal
                is_causal = False
        if logit_bias is not None:
            if cache is not None:
                raise ValueError("a logit bias cannot be combined with a key/value cache")
            if is_causal:  # the kernel takes a causal flag or a float mask, not both
                causal = _causal(t, t, q.device)
                attn_mask = causal if attn_mask is None else attn_mask & causal
                is_causal = False
            bias = logit_bias.to(q.dtype)
            attn_mask = bias if attn_mask is None else bias.masked_fill(~attn_mask, -math.inf)
        if kv_index is not None:
            # A loop's heads can use their groups unevenly, which the kernel's grouping
            # (equal consecutive groups) cannot express: expand here, after the cache.
            k, v = k.index_select(1, kv_index), v.index_select(1, kv_index)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
            enable_gqa=k.shape[1] != q.shape[1],
        )
        if head_weights is not None:
            y = y * head_weights.view(1, -1, 1, 1)
        y = y.transpose(1, 2).reshape(b, t, -1)
        wo = self.o_proj.weight if rows is None else self.o_proj.weight[:, rows]
        return self.resid_drop(F.linear(y, wo, self.o_proj.bias))

    def project(
        self,
        hidden_states: Tensor,
        rows: Tensor | None = None,
        kv_rows: Tensor | None = None,
        angles: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values, (batch, heads, seq, head_dim) each, rotated by
        ``angles`` with rotary positions (``rows``, ``kv_rows``: see :meth:`forward`)."""
        projs = (self.q_proj, self.k_proj, self.v_proj)
        weights = [p.weight for p in projs]
        biases = [p.bias for p in projs]
        if rows is not None:
            kv_rows = rows if kv_rows is None else kv_rows
            picks = (rows, kv_rows, kv_rows)
            weights = [w[r] for w, r in zip(weights, picks, strict=True)]
            if biases[0] is not None:
                biases = [bias[r] for bias, r in zip(biases, picks, strict=True)]
        # One matrix product for the three projections: fewer, wider products run faster
        # than three narrow ones, which matters most for the narrow loop passes.
        bias = None if biases[0] is None else torch.cat(biases)
        q, k, v = F.linear(hidden_states, torch.cat(weights), bias).split(
            [w.shape[0] for w in weights], dim=-1
        )
        b, t, _ = hidden_states.shape
        q, k, v = (x.view(b, t, -1, self.head_dim).transpose(1, 2) for x in (q, k, v))
        if self.rope_theta is not None:
            if angles is None:
                raise ValueError("rotary attention needs the angles of the input's positions")
            q, k = apply_rotary(q, *angles), apply_rotary(k, *angles)
        return q, k, v


def _causal(queries: int, keys: int, device: torch.device) -> Tensor:
    """(queries, keys) True where a query may attend: the queries are the last positions."""
    return torch.ones(queries, keys, dtype=torch.bool, device=device).tril(keys - queries)


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
        # Positions cached so far: counted, not read off the entries, because a model whose
        # layers all lost their heads makes no attention call, yet its positions go on.
        self.length = 0
        self._cursor = 0

    def start(self) -> None:
        """Rewind to the first attention call (a new forward pass begins)."""
        self._cursor = 0

    def extend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append this call's (batch, kv heads, new, head_dim) keys and values, as projected
        (before any expansion to the query heads); return all."""
        if self._cursor < len(self.entries):
            past_k, past_v = self.entries[self._cursor]
            if past_k.shape[:2] + past_k.shape[3:] != k.shape[:2] + k.shape[3:]:
                raise ValueError(
                    f"attention call {self._cursor} has keys of shape {tuple(k.shape)} but the "
                    f"cache holds {tuple(past_k.shape)}: the structure changed since it was filled"
                )
            k, v = torch.cat([past_k, k], 2), torch.cat([past_v, v], 2)
            self.entries[self._cursor] = (k, v)
        elif self.length:
            # A call beyond those of the earlier passes would attend to the new positions only.
            raise ValueError(
                f"attention call {self._cursor} is not in the cache, which holds "
                f"{len(self.entries)} calls: the structure changed since it was filled"
            )
        else:
            self.entries.append((k, v))
        self._cursor += 1
        return k, v

    def finish(self, positions: int) -> None:
        """Check that the forward pass made as many attention calls as the cache holds, and
        count the ``positions`` it added."""
        if self._cursor != len(self.entries):
            raise ValueError(
                f"the cache holds {len(self.entries)} attention calls but this pass made "
                f"{self._cursor}: the structure changed since the cache was filled"
            )
        self.length += positions


def split_heads(weight: Tensor, head_dim: int, dim: int = 0) -> Tensor:
    """A view of an attention projection weight with one index per head.

    Head ``h`` owns rows ``h * head_dim`` to ``(h + 1) * head_dim - 1`` of the query, key
    and value projections and the same columns of the output projection; this is the one
    statement of that layout (:func:`head_rows` is built on it).

    Args:
        weight: A (heads * head_dim, d_model) query, key or value weight (``dim=0``), or
            the (d_model, heads * head_dim) output weight (``dim=1``).
        head_dim: Width of each head.
        dim: The axis that runs over the heads' rows.

    Returns:
        ``weight`` with ``dim`` split into (heads, head_dim): (heads, head_dim, d_model) or
        (d_model, heads, head_dim). A view: writing to it writes to ``weight``.
    """
    return weight.unflatten(dim, (-1, head_dim))


def head_rows(heads: list[int] | tuple[int, ...], head_dim: int) -> Tensor:
    """Row indices of the given heads in a (heads * head_dim, d_model) projection."""
    if not heads:
        return torch.empty(0, dtype=torch.long)
    rows = split_heads(torch.arange((max(heads) + 1) * head_dim), head_dim)
    return rows[list(heads)].flatten()
