"""Training FLOPs of an architecture, counted per component.

Matrix products count 2 FLOPs per multiply-add; a training step costs forward plus
backward, taken as 3x the forward. The query and output projections cost by the query
width, the key and value projections by the key/value width (smaller with grouped keys
and values; scores and mixing still run once per query head). Attention scores and
mixing are counted over all ``seq`` keys (what the kernels compute), head loops over the
heads they really compute (every head during a soft start, the looped heads and the
key/value heads they use after it), block loops as whole extra passes of their layer,
a factored token embedding by its projection (table lookups are free), a SwiGLU
feed-forward by its three matrices.
Norms, softmax, the soft start's head weights and the expansion of shared keys and
values to their query heads are not counted.
"""

from __future__ import annotations

from dataclasses import replace

from growformer.arch import Architecture, LayerSpec

COMPONENTS = ("attention", "head_loops", "ffn", "block_loops")


def layer_components(
    d_model: int, layer: LayerSpec, seq: int, *, mlp: str = "gelu"
) -> dict[str, int]:
    """Forward FLOPs of one layer for one token of a ``seq``-long sequence, by component.

    ``block_loops`` is the cost of the extra passes of the whole layer (its attention,
    head loops and feed-forward again); ``mlp`` is the architecture's feed-forward kind.
    """
    attention = _attn_flops(d_model, layer.attn_dim, layer.kv_dim, seq)
    if layer.fade is not None:
        loop_width, loop_kv_width = layer.attn_dim, layer.kv_dim
    else:
        loop_kv_heads = {h // layer.group_size for h in layer.looped_heads}
        loop_width = len(layer.looped_heads) * layer.head_dim
        loop_kv_width = len(loop_kv_heads) * layer.head_dim
    head_loops = layer.loops * _attn_flops(d_model, loop_width, loop_kv_width, seq)
    ffn = 2 * (3 if mlp == "swiglu" else 2) * d_model * layer.ffn_dim
    block_loops = layer.block_loops * (attention + head_loops + ffn)
    return {
        "attention": attention,
        "head_loops": head_loops,
        "ffn": ffn,
        "block_loops": block_loops,
    }


def layer_forward_flops(d_model: int, layer: LayerSpec, seq: int, *, mlp: str = "gelu") -> int:
    """Forward FLOPs of one layer for one token of a ``seq``-long sequence."""
    return sum(layer_components(d_model, layer, seq, mlp=mlp).values())


def _attn_flops(d_model: int, width: int, kv_width: int, seq: int) -> int:
    projections = 2 * 2 * d_model * (width + kv_width)
    scores_and_mixing = 2 * 2 * seq * width
    return projections + scores_and_mixing


def forward_flops(arch: Architecture, batch: int, seq: int) -> int:
    """Forward FLOPs of the whole model on a (batch, seq) input."""
    per_token = sum(
        layer_forward_flops(arch.d_model, layer, seq, mlp=arch.mlp) for layer in arch.layers
    )
    if arch.embed_rank:
        per_token += 2 * arch.embed_rank * arch.d_model
    if arch.kind == "causal_lm":
        head = batch * seq * 2 * arch.d_model * arch.vocab_size
    else:
        head = batch * 2 * arch.d_model * arch.num_labels
    return batch * seq * per_token + head


def train_step_flops(arch: Architecture, batch: int, seq: int) -> int:
    """Forward + backward FLOPs of one training step."""
    return 3 * forward_flops(arch, batch, seq)


def without_loops(arch: Architecture) -> Architecture:
    """The same model without head loops, block loops or fades (the overhead baseline)."""
    return replace(
        arch,
        layers=tuple(
            replace(layer, loops=0, looped_heads=(), block_loops=0, fade=None)
            for layer in arch.layers
        ),
    )
