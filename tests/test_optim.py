"""Optimizers, learning-rate schedules and optimizer state through structural changes.

The property test that every optimizer's state follows 50 random structural events is in
test_properties.py; here: each optimizer trains and resumes exactly, Lion by hand, the
schedules' shapes, transformers' Adafactor through surgery, and the refusals.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from helpers import arch, batch
from test_train import _files, _without_session_end_eval, config

from growformer import surgery
from growformer.errors import ConfigError, SurgeryError
from growformer.model import build_model, head_rows
from growformer.optim import OPTIMIZERS, Lion, build_optimizer, check_supported, lr_at
from growformer.training.config import TrainConfig
from growformer.training.loop import train

LR = {"adamw": 3e-3, "adam": 3e-3, "sgd": 0.1, "adafactor": 3e-2, "lion": 3e-4}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_trains_through_structural_events_and_resumes_exactly(name, tmp_path):
    """The scheduled policy's four events (add, remove, loops, add) under each optimizer:
    training lowers the loss, and 12 steps + resume + 12 equal 24 straight, bitwise."""
    cfg = config(optimizer=name, lr=LR[name])
    summary = train(TrainConfig.from_dict(cfg), tmp_path / "straight", progress=False)
    assert len(summary["architecture"]["layers"]) == 2
    lines = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    losses = [r["train_loss"] for r in map(json.loads, lines) if "train_loss" in r]
    assert losses[-1] < losses[0]
    halves = tmp_path / "halves"
    train(TrainConfig.from_dict({**cfg, "steps": 12}), halves, progress=False)
    train(TrainConfig.from_dict(cfg), halves, resume=True, progress=False)
    resumed, straight = _files(halves), _files(tmp_path / "straight")
    resumed["metrics"] = _without_session_end_eval(resumed["metrics"], 12)
    assert resumed == straight


def test_lion_step_by_hand():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    momentum = torch.tensor([0.0, 0.0, 0.0])
    for grad in (torch.tensor([0.5, -1.0, 0.0]), torch.tensor([-2.0, 0.1, 1.0])):
        expected = p.detach() * (1 - 0.1 * 0.5)
        expected -= 0.1 * torch.sign(0.9 * momentum + 0.1 * grad)
        momentum = 0.99 * momentum + 0.01 * grad
        p.grad = grad.clone()
        opt.step()
        assert torch.allclose(p.detach(), expected)
        assert torch.allclose(opt.state[p]["exp_avg"], momentum)


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        # warm-up 10 steps to 1.0, then down to 0.1 at step 110 (cooldown: the last 20%)
        ("cosine", {0: 0.1, 9: 1.0, 60: 0.55, 110: 0.1, 500: 0.1}),
        ("linear", {0: 0.1, 9: 1.0, 35: 0.775, 60: 0.55, 110: 0.1}),
        ("constant", {0: 0.1, 9: 1.0, 60: 1.0, 110: 1.0}),
        ("wsd", {0: 0.1, 9: 1.0, 60: 1.0, 90: 1.0, 100: 0.55, 110: 0.1, 500: 0.1}),
    ],
)
def test_schedules(schedule, expected):
    cfg = TrainConfig(lr=1.0, warmup_steps=10, steps=110, min_lr_ratio=0.1, schedule=schedule)
    assert {step: round(lr_at(step, cfg), 6) for step in expected} == pytest.approx(expected)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop' (known: adamw, adam, sgd"),
        ({"optimizer": "sgd", "optimizer_options": {"betas": [0.9, 0.9]}}, "sgd has no option"),
        ({"schedule": "step"}, "unknown schedule 'step'"),
        ({"cooldown_fraction": 1.5}, "cooldown_fraction must be in [0, 1]"),
    ],
)
def test_bad_optimizer_or_schedule_configs(changes, message):
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict(config(**changes))
    assert message in str(e.value)


def test_values_an_optimizer_refuses_are_named():
    model = build_model(arch("classifier", "uniform"))
    with pytest.raises(ConfigError, match="optimizer lion: betas must be two numbers"):
        build_optimizer(model, name="lion", options={"betas": [1.5, 0.9]})
    with pytest.raises(ConfigError, match="optimizer adamw: Invalid beta"):
        build_optimizer(model, name="adamw", options={"betas": [0.9, 2.0]})


def test_an_unsupported_optimizer_is_refused_before_training():
    model = build_model(arch("classifier", "uniform"))
    with pytest.raises(ConfigError, match=r"RMSprop is not supported .* supported: Adafactor"):
        check_supported(torch.optim.RMSprop(model.parameters()))


def _square_attention_model():
    """A classifier whose query projection is square (heads x head_dim == d_model): the
    shapes alone cannot tell transformers' Adafactor row statistics from its columns'."""
    a = arch("classifier", "uniform")
    return build_model(replace(a, d_model=a.layers[0].heads * a.layers[0].head_dim))


def test_transformers_adafactor_state_follows_a_removed_head():
    from transformers.optimization import Adafactor as HFAdafactor

    torch.manual_seed(0)
    model = _square_attention_model()
    opt = HFAdafactor(model.parameters(), lr=1e-3, relative_step=False, beta1=0.9)
    for _ in range(2):
        model(**batch("classifier")).loss.backward()
        opt.step()
        opt.zero_grad()
    q = model.transformer.layers[0].attn.q_proj.weight
    o = model.transformer.layers[0].attn.o_proj.weight
    assert q.shape[0] == q.shape[1]
    before = {
        name: {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)}
        for name, p in (("q", q), ("o", o))
    }
    hd = model.transformer.layers[0].attn.head_dim
    heads = q.shape[0] // hd
    surgery.remove_head(model, opt, 0, 0)
    kept = head_rows(list(range(1, heads)), hd)
    q = model.transformer.layers[0].attn.q_proj.weight
    o = model.transformer.layers[0].attn.o_proj.weight
    state_q, state_o = opt.state[q], opt.state[o]
    # Rows of q were cut: its row statistic is cut, its column statistic kept.
    assert torch.equal(state_q["exp_avg_sq_row"], before["q"]["exp_avg_sq_row"][kept])
    assert torch.equal(state_q["exp_avg_sq_col"], before["q"]["exp_avg_sq_col"])
    assert torch.equal(state_q["exp_avg"], before["q"]["exp_avg"][kept])
    # Columns of o were cut: the other way round.
    assert torch.equal(state_o["exp_avg_sq_col"], before["o"]["exp_avg_sq_col"][kept])
    assert torch.equal(state_o["exp_avg_sq_row"], before["o"]["exp_avg_sq_row"])
    assert torch.equal(state_o["exp_avg"], before["o"]["exp_avg"][:, kept])
    model(**batch("classifier")).loss.backward()
    opt.step()  # the carried state is usable
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_state_of_an_unknown_key_is_refused_not_dropped():
    model = build_model(arch("classifier", "uniform"))
    opt = build_optimizer(model, name="adamw")
    model(**batch("classifier")).loss.backward()
    opt.step()
    q = model.transformer.layers[0].attn.q_proj.weight
    opt.state[q]["mystery"] = torch.zeros_like(q)
    with pytest.raises(SurgeryError, match="AdamW state 'mystery' has no known layout"):
        surgery.remove_head(model, opt, 0, 0)
