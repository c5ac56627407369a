"""Training FLOPs of an architecture, counted per component.

Matrix products count 2 FLOPs per multiply-add; a training step costs forward plus
backward, taken as 3x the forward. Attention scores and mixing are counted over all
``seq`` keys (what the kernels compute), loops over the heads they really compute.
"""

from __future__ import annotations

from growformer.arch import Architecture, LayerSpec


def layer_forward_flops(d_model: int, layer: LayerSpec, seq: int) -> int:
    """Forward FLOPs of one layer for one token of a ``seq``-long sequence."""
    ffn = 2 * 2 * d_model * layer.ffn_dim
    attn = _attn_flops(d_model, layer.heads, layer.head_dim, seq)
    loops = layer.loops * _attn_flops(d_model, len(layer.looped_heads), layer.head_dim, seq)
    return ffn + attn + loops


def _attn_flops(d_model: int, heads: int, head_dim: int, seq: int) -> int:
    width = heads * head_dim
    projections = 4 * 2 * d_model * width
    scores_and_mixing = 2 * 2 * seq * width
    return projections + scores_and_mixing


def forward_flops(arch: Architecture, batch: int, seq: int) -> int:
    """Forward FLOPs of the whole model on a (batch, seq) input."""
    per_token = sum(layer_forward_flops(arch.d_model, layer, seq) for layer in arch.layers)
    if arch.kind == "causal_lm":
        head = batch * seq * 2 * arch.d_model * arch.vocab_size
    else:
        head = batch * 2 * arch.d_model * arch.num_labels
    return batch * seq * per_token + head


def train_step_flops(arch: Architecture, batch: int, seq: int) -> int:
    """Forward + backward FLOPs of one training step."""
    return 3 * forward_flops(arch, batch, seq)
