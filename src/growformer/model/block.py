"""Transformer block: attention (with optional looped passes) and feed-forward, pre- or
post-norm."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from growformer.arch import Architecture, HeadFade, LayerSpec, LoopFade
from growformer.model.attention import ElasticAttention, KVCache
from growformer.model.feedforward import feed_forward, norm


class Block(nn.Module):
    """One layer: ``h + attn(ln(h))``, then ``loops`` extra passes of the looped heads
    through the same projections (SGT), then ``h + mlp(ln(h))``; all of it run
    ``1 + block_loops`` times. Post-norm (``arch.norm_position``) moves each norm after
    its residual sum: ``ln(h + attn(h))``.

    During a loop's soft start (``fade``) the loop passes run every head, the heads outside
    ``looped_heads`` weighted by ``loop_fade_level``; afterwards they compute only the
    looped heads' projection rows (and, with grouped keys and values, those of the
    key/value heads they use), so their cost follows the looped head count.

    While a head fades out before its removal (``head_fade``), its output in the first
    attention pass is weighted by ``head_fade_level``. ``ablated`` (a head index, or None)
    switches one head's output off there: a measurement of what the head contributes.
    ``logit_probe`` (None, or set by :mod:`growformer.statistics` for a measurement) is
    given the first attention pass's normalised input and returns a bias added to its
    logits.

    Args:
        arch: The model's architecture: width, dropout and block family.
        spec: The layer's shape.
    """

    def __init__(self, *, arch: Architecture, spec: LayerSpec) -> None:
        super().__init__()
        d_model, dropout = arch.d_model, arch.dropout
        self.post_norm = arch.norm_position == "post"
        self.ln_1 = norm(arch.norm, d_model, arch.norm_eps)
        self.attn = ElasticAttention(
            d_model=d_model,
            heads=spec.heads,
            head_dim=spec.head_dim,
            dropout=dropout,
            kv_heads=spec.kv_heads,
            bias=arch.attn_bias,
            rope_theta=arch.rope_theta if arch.positions == "rotary" else None,
        )
        self.ln_2 = norm(arch.norm, d_model, arch.norm_eps)
        self.mlp = feed_forward(
            arch.mlp, d_model=d_model, ffn_dim=spec.ffn_dim, dropout=dropout, bias=arch.mlp_bias
        )
        self.block_loops = spec.block_loops
        self.fade: LoopFade | None = None
        self.set_loops(spec.loops, spec.looped_heads, spec.fade)
        self.head_fade: HeadFade | None = None
        self.set_head_fade(spec.head_fade)
        self.ablated: int | None = None
        self.logit_probe: Callable[[Tensor], Tensor] | None = None

    def set_loops(
        self, loops: int, looped_heads: tuple[int, ...], fade: LoopFade | None = None
    ) -> None:
        """Set the looped passes; called by construction and by surgery only.

        A new ``fade`` starts at level 1; the same fade as before keeps its level (the
        head count or loop depth changed during it). The level is a persistent buffer, so
        a checkpoint taken during a fade restores the exact function.
        """
        continuing = fade is not None and fade == self.fade
        self.loops = loops
        self.looped_heads = tuple(looped_heads)
        self.fade = fade
        weight = self.attn.q_proj.weight
        rows, kv_rows, kv_index = self.attn.subset_rows(self.looped_heads)
        self.register_buffer("loop_rows", rows.to(weight.device), persistent=False)
        self.register_buffer("loop_kv_rows", kv_rows.to(weight.device), persistent=False)
        self.register_buffer(
            "loop_kv_index",
            None if kv_index is None else kv_index.to(weight.device),
            persistent=False,
        )
        if fade is None:
            self.register_buffer("loop_kept", None, persistent=False)
            self.register_buffer("loop_fade_level", None)
            return
        kept = torch.zeros(self.attn.heads, dtype=weight.dtype, device=weight.device)
        kept[list(self.looped_heads)] = 1.0
        self.register_buffer("loop_kept", kept, persistent=False)
        if not continuing:
            self.register_buffer(
                "loop_fade_level", torch.ones((), dtype=weight.dtype, device=weight.device)
            )

    def set_head_fade(self, fade: HeadFade | None) -> None:
        """Start, keep or end a head's fade-out; called by construction and by surgery only.

        As with loops, the same fade as before keeps its level (a persistent buffer), also
        when the head's index moved (a lower head was removed).
        """
        old = self.head_fade
        continuing = fade is not None and old is not None and fade.end == old.end
        self.head_fade = fade
        if fade is None:
            self.register_buffer("head_fade_level", None)
        elif not continuing:
            weight = self.attn.q_proj.weight
            self.register_buffer(
                "head_fade_level", torch.ones((), dtype=weight.dtype, device=weight.device)
            )

    def _head_weights(self) -> Tensor | None:
        """Factors on each head's output in the first attention pass (None: all 1)."""
        if self.head_fade is None and self.ablated is None:
            return None
        weight = self.attn.q_proj.weight
        weights = torch.ones(self.attn.heads, dtype=weight.dtype, device=weight.device)
        if self.head_fade is not None:
            weights[self.head_fade.head] = self.head_fade_level
        if self.ablated is not None:
            weights[self.ablated] = 0.0
        return weights

    @property
    def spec(self) -> LayerSpec:
        """The layer's shape, read off its modules."""
        return LayerSpec(
            heads=self.attn.heads,
            head_dim=self.attn.head_dim,
            ffn_dim=self.mlp.ffn_dim,
            loops=self.loops,
            looped_heads=self.looped_heads,
            block_loops=self.block_loops,
            fade=self.fade,
            head_fade=self.head_fade,
            kv_heads=self.attn.kv_heads if self.attn.grouped else None,
        )

    def attn_input(self, hidden_states: Tensor) -> Tensor:
        """What the attention sublayer reads of the block's input: its norm (pre-norm) or
        the input itself (post-norm)."""
        return hidden_states if self.post_norm else self.ln_1(hidden_states)

    def _residual(self, h: Tensor, update: Tensor, ln: nn.Module) -> Tensor:
        return ln(h + update) if self.post_norm else h + update

    def forward(
        self,
        hidden_states: Tensor,
        attn_mask: Tensor | None,
        is_causal: bool,
        cache: KVCache | None = None,
        angles: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """The layer on (batch, seq, d_model) ``hidden_states``; ``angles``: the rotary
        (cos, sin) of the input's positions for this layer's head width (see
        :class:`ElasticAttention`)."""
        h = hidden_states
        for i in range(1 + self.block_loops):
            h = self._pass(h, attn_mask, is_causal, cache, angles, first=i == 0)
        return h

    def _pass(
        self,
        h: Tensor,
        attn_mask: Tensor | None,
        is_causal: bool,
        cache: KVCache | None,
        angles: tuple[Tensor, Tensor] | None,
        first: bool,
    ) -> Tensor:
        if self.attn.heads:
            x = self.attn_input(h)
            probe = self.logit_probe if first else None
            update = self.attn(
                x,
                attn_mask,
                is_causal,
                head_weights=self._head_weights(),
                cache=cache,
                logit_bias=None if probe is None else probe(x),
                angles=angles,
            )
            h = self._residual(h, update, self.ln_1)
            rows, kv_rows, kv_index = self.loop_rows, self.loop_kv_rows, self.loop_kv_index
            weights = None
            if self.fade is not None:
                rows = kv_rows = kv_index = None
                weights = self.loop_kept + (1 - self.loop_kept) * self.loop_fade_level
            for _ in range(self.loops):
                update = self.attn(
                    self.attn_input(h),
                    attn_mask,
                    is_causal,
                    rows=rows,
                    head_weights=weights,
                    cache=cache,
                    kv_rows=kv_rows,
                    kv_index=kv_index,
                    angles=angles,
                )
                h = self._residual(h, update, self.ln_1)
        elif self.post_norm or self.attn.o_proj.bias is not None:
            # Attention without heads still adds its output bias, and post-norm still
            # normalises: the function that a head added with a zero output starts from.
            bias = self.attn.o_proj.bias
            h = self._residual(h, torch.zeros_like(h) if bias is None else bias, self.ln_1)
        x = h if self.post_norm else self.ln_2(h)
        return self._residual(h, self.mlp(x), self.ln_2)
