"""Device readiness on CPU: torch.compile of a frozen structure, and bf16 autocast."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import arch, batch
from safetensors.torch import load_file
from test_train import EVENTS, config

from growformer import checkpoint
from growformer.errors import ConfigError
from growformer.model import build_model
from growformer.training.config import TrainConfig
from growformer.training.loop import train

needs_compiler = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None,
    reason="torch.compile on CPU generates C++",
)


@needs_compiler
def test_compiled_model_matches_eager():
    torch.manual_seed(0)
    model = build_model(arch("causal_lm", "looped")).eval()  # loops over sliced heads
    data = batch("causal_lm")
    # One graph: the forward pass makes no host synchronisation (it would break the graph).
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(**data).logits, model(**data).logits, atol=1e-5, rtol=0)


@needs_compiler
def test_compiled_run_follows_the_eager_run(tmp_path):
    """Compiled between structural events (one change here, so two structures compiled):
    the same events and, over a few steps, the same weights within 1e-5."""
    cfg = config(
        policy_options={"events": EVENTS[:1]},
        steps=8,
        decay_steps=8,
        model={**config()["model"], "dropout": 0.0},
    )
    eager = train(TrainConfig.from_dict(cfg), tmp_path / "eager", progress=False)
    compiled = train(
        TrainConfig.from_dict({**cfg, "compile": True}), tmp_path / "c", progress=False
    )
    assert compiled["events"][0]["op"] == "add_head"
    assert compiled["architecture"] == eager["architecture"]
    a = load_file(checkpoint.resolve(tmp_path / "eager") / "model.safetensors")
    b = load_file(checkpoint.resolve(tmp_path / "c") / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5


def test_bf16_autocast_trains(tmp_path):
    """The forward pass runs in bfloat16: close to the float32 run, but not the same."""
    cfg = config(steps=12, decay_steps=12)
    fp32 = train(TrainConfig.from_dict(cfg), tmp_path / "a", progress=False)
    bf16 = train(
        TrainConfig.from_dict({**cfg, "precision": "bf16"}), tmp_path / "b", progress=False
    )
    assert bf16["steps"] == 12
    loss, reference = bf16["metrics"]["val_loss"], fp32["metrics"]["val_loss"]
    assert loss != reference and loss == pytest.approx(reference, rel=0.05)
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16, got 'fp16'"):
        TrainConfig.from_dict({**cfg, "precision": "fp16"})
