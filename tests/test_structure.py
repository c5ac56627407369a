"""The structural step every trainer runs: budgets judged on surgery's prediction (for
any op, a registered one included), and policies of the user's own."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest
from helpers import arch

from growformer import surgery
from growformer.errors import ConfigError
from growformer.events import Event
from growformer.model import build_model
from growformer.policies import POLICIES, Policy, make_policy, register_policy
from growformer.structure import Budget, StructuralStep, param_count
from growformer.training.config import TrainConfig
from growformer.training.loop import train


def _add_two_heads(model, optimizer, event):
    """A custom op: two heads at once (what no budget check written for add_head sees)."""
    surgery.add_head(model, optimizer, event.layer)
    return surgery.add_head(model, optimizer, event.layer)


class _Once(Policy):
    """Asks for ``op`` on layer 0 at step 1."""

    name = "test_once"
    defaults: ClassVar[dict] = {"op": "add_head"}

    def decide(self, step, stats):
        return [Event(self.options["op"], 0, reason="test")] if step == 1 else []


@pytest.fixture
def two_heads_op(monkeypatch):
    monkeypatch.setitem(surgery.SURGEONS, "add_two_heads", _add_two_heads)


@pytest.mark.parametrize("op", ["add_head", "add_two_heads"])
def test_predict_is_what_surgery_does(two_heads_op, op):
    model = build_model(arch("classifier", "uniform"))
    predicted = surgery.predict(model.arch, Event(op, 0))
    surgery.apply(model, None, Event(op, 0))
    assert predicted == model.arch


def test_the_budget_judges_a_custom_op_by_surgerys_prediction(two_heads_op, monkeypatch):
    model = build_model(arch("classifier", "uniform"))
    heads = model.arch.layers[0].heads
    predict, asked = surgery.predict, []

    def watched(a, event):
        asked.append(event.op)
        return predict(a, event)

    monkeypatch.setattr(surgery, "predict", watched)
    step = StructuralStep(_Once({"op": "add_two_heads"}), Budget(max_heads_per_layer=heads + 1))
    done = step.after_step(model, None, 1, {}, lambda _model: 0.0)
    assert asked == ["add_two_heads"]
    assert done.events == [] and model.arch.layers[0].heads == heads
    assert done.refusals == [
        {
            "kind": "budget.refused",
            "step": 1,
            "op": "add_two_heads",
            "layer": 0,
            "refused": f"layer 0 heads {heads + 2} > max_heads_per_layer {heads + 1}",
        }
    ]
    # Within the budget, the same op is applied.
    roomy = StructuralStep(_Once({"op": "add_two_heads"}), Budget(max_heads_per_layer=heads + 2))
    done = roomy.after_step(model, None, 1, {}, lambda _model: 0.0)
    assert [e.op for e in done.events] == ["add_two_heads"]
    assert model.arch.layers[0].heads == heads + 2


def test_a_shrinking_change_is_never_refused():
    """A model over a budget lowered on resume may still lose heads."""
    model = build_model(arch("classifier", "uniform"))
    step = StructuralStep(_Once({"op": "remove_head"}), Budget(max_params=1))
    policy = step.policy
    policy.decide = lambda s, stats: [Event("remove_head", 0, head=0)] if s == 1 else []
    done = step.after_step(model, None, 1, {}, lambda _model: 0.0)
    assert [e.op for e in done.events] == ["remove_head"] and not done.refusals


def test_the_initial_model_is_checked_against_the_budget():
    a = arch("classifier", "uniform")
    Budget(max_params=param_count(a)).check_initial(a)
    with pytest.raises(ConfigError, match="the initial model is over budget: params"):
        Budget(max_params=param_count(a) - 1).check_initial(a)


class _Grow(Policy):
    """A user's own policy: one more head in every layer every 5 steps, up to 3."""

    name = "test_grow"
    defaults: ClassVar[dict] = {"every": 5}

    def decide(self, step, stats):
        if step % self.options["every"]:
            return []
        return [Event("add_head", i, reason="user rule") for i in range(2) if step <= 10]


def _toy_config(**changes) -> TrainConfig:
    return TrainConfig.from_dict(
        {
            "task": "retrieval",
            "steps": 12,
            "batch_size": 8,
            "eval_every": 12,
            "checkpoint_every": 12,
            "device": "cpu",
            "model": {"d_model": 16, "n_layers": 2, "heads": 1, "head_dim": 8, "ffn_dim": 32},
            **changes,
        }
    )


def test_a_users_policy_instance_grows_a_model(tmp_path):
    summary = train(_toy_config(), tmp_path / "run", policy=_Grow({"every": 5}), progress=False)
    assert summary["policy"] == "test_grow"
    assert [layer["heads"] for layer in summary["architecture"]["layers"]] == [3, 3]
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").open()]
    assert [(e["step"], e["layer"]) for e in events] == [(5, 0), (5, 1), (10, 0), (10, 1)]
    # Resumed with an equal instance, the run goes on.
    more = _toy_config(steps=15)
    summary = train(more, tmp_path / "run", policy=_Grow({"every": 5}), resume=True, progress=False)
    assert summary["steps"] == 15


def test_a_registered_policy_is_made_by_name(monkeypatch):
    monkeypatch.setattr("growformer.policies.POLICIES", dict(POLICIES))
    import growformer.policies as policies

    register_policy(_Grow)
    assert isinstance(make_policy("test_grow", {"every": 2}), _Grow)
    assert "test_grow" in policies.POLICIES
    with pytest.raises(ConfigError, match="'incrt' is taken"):

        class Impostor(_Grow):
            name = "incrt"

        register_policy(Impostor)
    with pytest.raises(ConfigError, match="must be a Policy subclass"):
        register_policy(dict)
