"""growformer: transformers that determine their own architecture while they train."""

from growformer.arch import Architecture, LayerSpec
from growformer.checkpoint import load
from growformer.evaluation import evaluate
from growformer.events import Event
from growformer.hf.auto import register_on_import
from growformer.hf.convert import from_hf, to_hf
from growformer.model import ElasticForCausalLM, ElasticForSequenceClassification, build_model
from growformer.policies import Policy, register_policy
from growformer.report import CSVLogger, Logger
from growformer.training.callbacks import Callback
from growformer.training.config import ModelConfig, TrainConfig
from growformer.training.loop import train
from growformer.version import __version__

# transformers' Auto classes learn of growformer when transformers is imported (if ever).
register_on_import()

__all__ = [
    "Architecture",
    "CSVLogger",
    "Callback",
    "ElasticForCausalLM",
    "ElasticForSequenceClassification",
    "Event",
    "LayerSpec",
    "Logger",
    "ModelConfig",
    "Policy",
    "TrainConfig",
    "__version__",
    "build_model",
    "evaluate",
    "from_hf",
    "load",
    "register_policy",
    "to_hf",
    "train",
]
