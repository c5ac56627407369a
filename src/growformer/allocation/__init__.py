"""Where to put attention width, and compression of trained models.

Modules:
    planner: per-layer heads and head dimensions for an attention budget (:func:`plan`).
    compression: passes that rebuild a trained model smaller (:func:`compress_head_dim`,
        :func:`group_kv`, :func:`factor_embedding`) and their low-rank factors.
    curves: saturation curves, the loss as head dimensions are cut, and their figure.
    pipeline: :func:`compress`, a checkpoint compressed, measured and written, and
        :func:`latency`.
"""

from growformer.allocation.compression import (
    compress_head_dim,
    factor_embedding,
    group_kv,
    qk_factors,
    vo_factors,
)
from growformer.allocation.curves import (
    default_ranks,
    plot_curves,
    ranks_for_tolerance,
    saturation_curves,
)
from growformer.allocation.pipeline import compress, latency
from growformer.allocation.planner import SHORTFALL_COST, STRATEGIES, budget_of, plan

__all__ = [
    "SHORTFALL_COST",
    "STRATEGIES",
    "budget_of",
    "compress",
    "compress_head_dim",
    "default_ranks",
    "factor_embedding",
    "group_kv",
    "latency",
    "plan",
    "plot_curves",
    "qk_factors",
    "ranks_for_tolerance",
    "saturation_curves",
    "vo_factors",
]
