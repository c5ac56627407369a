"""Elastic transformer modules: attention, blocks, backbone and task heads."""

from growformer.model.attention import ElasticAttention, KVCache, head_rows, split_heads
from growformer.model.block import Block
from growformer.model.feedforward import MLP, GatedMLP
from growformer.model.transformer import (
    ATTN_INITS,
    MODELS,
    ElasticForCausalLM,
    ElasticForSequenceClassification,
    ElasticModel,
    ElasticTransformer,
    ModelOutput,
    build_model,
)

__all__ = [
    "ATTN_INITS",
    "MLP",
    "MODELS",
    "Block",
    "ElasticAttention",
    "ElasticForCausalLM",
    "ElasticForSequenceClassification",
    "ElasticModel",
    "ElasticTransformer",
    "GatedMLP",
    "KVCache",
    "ModelOutput",
    "build_model",
    "head_rows",
    "split_heads",
]
