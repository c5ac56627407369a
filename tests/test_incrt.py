"""The INCRT policy: gate logic on constructed statistics, and whole runs."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import arch, batch

from growformer.allocation import plan
from growformer.arch import Architecture
from growformer.errors import ConfigError
from growformer.model import build_model
from growformer.policies import IncrtPolicy, make_policy
from growformer.statistics import LayerStats, capture_inputs
from growformer.train import TrainConfig, train

D = 8


def _forms(scales, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(len(scales), D, D, dtype=torch.float64, generator=g)
    return (m - m.transpose(1, 2)) / 2 * torch.tensor(scales, dtype=torch.float64)[:, None, None]


def _stats(scales, seed=0):
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(64, D, dtype=torch.float64, generator=g) * torch.linspace(
        0.2, 2, D, dtype=torch.float64
    )
    return [LayerStats(cov=x.T @ x / 64, forms=_forms(scales, seed), tokens=64)]


# Refractory times are in steps: 10 steps = 2 checks of 5 steps.
OPTIONS = {
    "calibration_batches": 1,
    "homeostasis_checks": 3,
    "min_refractory": 10,
    "max_refractory": 10,
    "prune_patience": 3,
    "grace_checks": 0,
    "max_heads": 3,
    "threshold_mode": "calibrated",
    "refractory_from_start": True,
}


def _policy(**changes):
    p = IncrtPolicy({**OPTIONS, **changes})
    p.calibrate([_stats([1.0])])
    return p


def test_initial_structure_and_options():
    p = make_policy("incrt", {"initial_heads": 2})
    assert [layer.heads for layer in p.initial_arch(arch("classifier", "nonuniform")).layers] == [
        2,
        2,
        2,
    ]
    assert p.attn_init == "reference"
    for bad in (
        {"estimator": "power"},
        {"threshold_mode": "x"},
        {"init": "zeros"},
        {"initial_heads": 0},
        {"initial_heads": 4, "max_heads": 2},
        {"online_lr": 0.9},
        {"online_lr": True},
        {"speed": 1},
    ):
        with pytest.raises(ConfigError):
            make_policy("incrt", bad)


def test_thresholds_are_fractions_of_the_calibrated_energy():
    p = _policy()
    g = p.gates[0]
    assert g.theta_w == pytest.approx(0.1 * g.gamma)
    assert g.phi_w == pytest.approx(0.5 * g.theta_w) and g.phi_g == pytest.approx(0.01 * g.theta_w)


def test_growth_refractory_and_cap():
    p = _policy()
    # The initial head counts as grown at step 0: no growth before the refractory time.
    assert p.decide(5, _stats([20.0])) == []
    events = p.decide(10, _stats([20.0]))
    assert [(e.op, e.layer) for e in events] == [("add_head", 0)]
    assert "lambda_max" in events[0].reason and len(p.gates[0].directions) == 2
    assert p.decide(15, _stats([20.0, 20.0])) == []  # refractory: 10 steps
    assert [e.op for e in p.decide(20, _stats([20.0, 20.0]))] == ["add_head"]
    for step in (25, 30, 35, 40):
        assert p.decide(step, _stats([20.0, 20.0, 20.0])) == []  # cap of 3 heads
    assert p.converged_step is None  # insufficient: energy above theta_w remains
    # By default the first growth is not held back: nothing was deflated yet.
    assert [e.op for e in _policy(refractory_from_start=False).decide(5, _stats([20.0]))] == [
        "add_head"
    ]


def test_silent_head_is_pruned_after_patience():
    p = _policy(max_heads=2)
    scales = [20.0]
    events = []
    for step in range(10, 50, 5):
        for e in p.decide(step, _stats(scales)):
            events.append((step, e.op, e.head))
            # The model follows the events: a grown head stays silent, as if its weights were 0.
            scales = (
                [*scales, 0.0] if e.op == "add_head" else scales[: e.head] + scales[e.head + 1 :]
            )
    # Grown at 10; silent for prune_patience = 3 checks (15, 20, 25): pruned at 25; regrown
    # once the refractory time since the growth at 10 has passed.
    assert events[:3] == [(10, "add_head", None), (25, "remove_head", 1), (30, "add_head", None)]
    assert len(p.gates[0].directions) == len(scales)


def test_homeostasis_certificate():
    p = _policy()
    for step in range(5, 50, 5):
        assert p.decide(step, _stats([0.05])) == []
    # Quiet for homeostasis_checks checks, sufficient and minimal: certified at the 3rd check.
    assert p.converged_step == 15
    report = p.report(_stats([0.05]))
    assert report["converged_step"] == 15 and report["predicted_heads"] == [0]
    assert set(report["thresholds"][0]) == {"gamma_res", "theta_w", "phi_w", "phi_g"}


@pytest.mark.parametrize("seed", range(3))
def test_online_estimator_agrees_with_the_exact_one(seed):
    # Thresholds out of reach: the structure stays, only the estimates are compared.
    exact, online = _policy(growth_ratio=1e6), _policy(estimator="online", growth_ratio=1e6)
    for step in range(5, 30, 5):
        s = _stats([3.0], seed=seed)  # a fixed operator, seen at every check
        exact.decide(step, s)
        online.decide(step, s)
        e, o = exact.drain_log()[-1], online.drain_log()[-1]
        if step >= 10:  # the default step size converges within a check or two
            assert o["lambda_max"] == pytest.approx(e["lambda_max"], rel=1e-3)
            assert o["lambda_min"] == pytest.approx(e["lambda_min"], rel=1e-3)


def test_state_round_trip_continues_identically():
    p = _policy(estimator="online")
    p.decide(10, _stats([20.0]))
    q = IncrtPolicy({**OPTIONS, "estimator": "online"})
    q.load_state_dict(json.loads(json.dumps(p.state_dict())))
    for step in (10, 15, 20):
        s = _stats([20.0, 20.0], seed=step)
        assert [vars(e) for e in p.decide(step, s)] == [vars(e) for e in q.decide(step, s)]
    assert p.drain_log()[-1] == q.drain_log()[-1]


def run_config(**changes):
    base = {
        "task": "retrieval",
        "policy": "incrt",
        "policy_options": {
            "calibration_batches": 4,
            "heldout_batches": 2,
            "max_refractory": 15,
            "homeostasis_checks": 4,
            "max_heads": 4,
        },
        "steps": 60,
        "decay_steps": 60,
        "batch_size": 16,
        "warmup_steps": 5,
        "eval_every": 30,
        "checkpoint_every": 15,
        "log_every": 10,
        "task_options": {"n_train": 512, "n_val": 64, "k": 2, "seq_len": 12},
        "model": {"d_model": 32, "n_layers": 2, "head_dim": 8, "ffn_dim": 64, "dropout": 0.1},
        "device": "cpu",
    }
    for key, value in changes.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) else value
    return base


def _run(tmp_path, name, **changes):
    return train(TrainConfig.from_dict(run_config(**changes)), tmp_path / name, progress=False)


def _trajectory(summary):
    return [(e["step"], e["op"], e["layer"], e.get("head")) for e in summary["events"]]


def test_incrt_run_grows_from_one_head_and_reports(tmp_path):
    s = _run(tmp_path, "a")
    assert _trajectory(s) and all(e["op"] == "add_head" for e in s["events"])
    heads = [layer["heads"] for layer in s["architecture"]["layers"]]
    assert all(1 <= h <= 4 for h in heads) and sum(heads) > 2
    assert len(s["predicted_heads"]) == len(s["kstar_heads"]) == len(s["thresholds"]) == 2
    assert "converged_step" in s
    rows = [json.loads(line) for line in (tmp_path / "a" / "stats.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * (60 // 5)
    assert {"lambda_max", "theta_w", "energies", "heads", "gap", "refractory"} <= rows[0].keys()
    for e in s["events"]:  # function-preserving insertion: the loss does not move
        assert abs(e["loss_after"] - e["loss_before"]) <= 1e-6 * e["loss_before"]


def test_random_insertion_moves_the_loss(tmp_path):
    s = _run(tmp_path, "r", policy_options={"init": "random"})
    assert any(abs(e["loss_after"] - e["loss_before"]) > 1e-4 for e in s["events"])


def test_two_seeded_runs_have_the_same_trajectory(tmp_path):
    assert _trajectory(_run(tmp_path, "a")) == _trajectory(_run(tmp_path, "b"))


@pytest.mark.parametrize(
    "options",
    [{}, {"estimator": "online", "threshold_mode": "relative"}],
    ids=["exact-calibrated", "online-relative"],
)
def test_resume_in_the_middle_of_growth_is_exact(tmp_path, options):
    straight = _run(tmp_path, "s", policy_options=options)
    _run(tmp_path, "h", policy_options=options, steps=30)
    resumed = train(
        TrainConfig.from_dict(run_config(policy_options=options)),
        tmp_path / "h",
        resume=True,
        progress=False,
    )
    assert _trajectory(resumed) == _trajectory(straight)
    for name in ("events.jsonl", "stats.jsonl"):
        assert (tmp_path / "h" / name).read_bytes() == (tmp_path / "s" / name).read_bytes()
    ckpt = "checkpoints/step_00000060/model.safetensors"
    assert (tmp_path / "h" / ckpt).read_bytes() == (tmp_path / "s" / ckpt).read_bytes()


@pytest.mark.parametrize("variant", ["looped", "fading"])
def test_moments_count_each_layer_first_attention_pass_only(variant):
    torch.manual_seed(0)
    model = build_model(arch("classifier", variant), "reference").eval()
    b = batch("classifier")
    inputs: list[torch.Tensor] = []
    handles = [
        block.register_forward_pre_hook(lambda m, args: inputs.append(m.ln_1(args[0])))
        for block in model.transformer.layers
    ]
    with torch.no_grad(), capture_inputs(model, b["attention_mask"]) as capture:
        model(b["input_ids"], b["attention_mask"])
    for h in handles:
        h.remove()
    real = b["attention_mask"]
    for layer, cov in enumerate(capture.covariances()):
        z = inputs[layer][real].double()
        assert capture.tokens[layer] == int(real.sum())
        torch.testing.assert_close(cov, z.T @ z / len(z))


def test_incrt_grows_from_a_planned_architecture(tmp_path):
    """Allocation and INCRT compose: the plan sets each layer's head dimension, INCRT the
    head counts (from one head per layer)."""
    template = Architecture.uniform(
        kind="classifier",
        d_model=32,
        vocab_size=20,
        max_len=13,
        n_layers=2,
        heads=3,
        head_dim=8,
        ffn_dim=64,
        num_labels=2,
    )
    layers = plan("tapered_head_dim", budget=48, base=template, multiple=4).to_dict()["layers"]
    dims = [x["head_dim"] for x in layers]
    assert dims[0] > dims[1]
    s = _run(tmp_path, "planned", model={"d_model": 32, "layers": layers})
    grown = s["architecture"]["layers"]
    assert [x["head_dim"] for x in grown] == dims
    adds = [sum(e["layer"] == i for e in s["events"]) for i in range(2)]
    assert all(e["op"] == "add_head" for e in s["events"]) and sum(adds) > 0
    assert [x["heads"] for x in grown] == [1 + n for n in adds]
