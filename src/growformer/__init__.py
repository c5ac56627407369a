"""growformer: transformers that determine their own architecture while they train."""

from growformer.arch import Architecture, LayerSpec
from growformer.events import Event
from growformer.hf_files import register_on_import
from growformer.model import ElasticForCausalLM, ElasticForSequenceClassification, build_model
from growformer.train import ModelConfig, TrainConfig, evaluate, train

__version__ = "0.1.0"

# transformers' Auto classes learn of growformer when transformers is imported (if ever).
register_on_import()

__all__ = [
    "Architecture",
    "ElasticForCausalLM",
    "ElasticForSequenceClassification",
    "Event",
    "LayerSpec",
    "ModelConfig",
    "TrainConfig",
    "build_model",
    "evaluate",
    "train",
]
