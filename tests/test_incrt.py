"""The INCRT policy: gate logic on constructed statistics, and whole runs."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import arch, batch

from growformer.allocation import plan
from growformer.arch import Architecture
from growformer.errors import ConfigError
from growformer.events import Event
from growformer.model import build_model
from growformer.policies import IncrtPolicy, make_policy
from growformer.policies.incrt_gates import GATES, LayerView, Thresholds, interval
from growformer.statistics import CONTRIBUTION, MOMENTS, LayerStats, capture_inputs
from growformer.training.config import TrainConfig
from growformer.training.loop import train

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


# Refractory times are in steps: 10 steps = 2 checks of 5 steps. The gate-specific tests
# name their gate; these constructed statistics suit the frozen (reference) one.
OPTIONS = {
    "gate": "frozen",
    "calibration_batches": 1,
    "homeostasis_checks": 3,
    "refractory_steps": 10,
    "prune_patience": 3,
    "grace_checks": 0,
    "prune_fade_steps": 4,
    "max_heads": 3,
    "threshold_mode": "calibrated",
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
    # Small initial forms for the default gate, the reference scale for the reference gate.
    assert (p.attn_init, p.init_std) == ("gpt2", 0.02)
    assert (_policy().attn_init, _policy().init_std) == ("reference", None)
    for bad in (
        {"gate": "oja"},
        {"estimator": "power"},
        {"threshold_mode": "x"},
        {"init": "zeros"},
        {"initial_heads": 0},
        {"initial_heads": 4, "max_heads": 2},
        {"online_lr": 0.9},
        {"online_lr": True},
        {"refractory_steps": -1},
        {"prune_fade_steps": 0},
        {"speed": 1},
    ):
        with pytest.raises(ConfigError):
            make_policy("incrt", bad)


def test_thresholds_are_fractions_of_the_calibrated_energy():
    p = _policy()
    g = p.gates[0]
    assert g.theta_w == pytest.approx(0.1 * g.gamma)
    assert g.phi_w == pytest.approx(0.5 * g.theta_w) and g.phi_g == pytest.approx(0.01 * g.theta_w)


def _diagonal(*values):
    """A trace-0 operator with the given leading eigenvalues (the rest share -trace)."""
    rest = -sum(values) / (D - len(values))
    return torch.diag(torch.tensor([*values] + [rest] * (D - len(values)), dtype=torch.float64))


@pytest.mark.parametrize(
    "heads, grows, minimal", [(1, True, True), (2, False, True), (3, False, False)]
)
def test_realigned_gate_compares_lambda_h_plus_1_and_lambda_h(heads, grows, minimal):
    # Eigenvalues 5, 3, 0.2: two directions above theta_w = 1, the third below phi_w = 0.5.
    t = Thresholds(theta_w=1.0, phi_w=0.5, phi_g=0.01, epsilon=0.1)
    r = GATES["realigned"].read(LayerView(_diagonal(5.0, 3.0, 0.2), [1.0] * heads, t))
    assert r.residual == pytest.approx([5.0, 3.0, 0.2, -8.2 / 5][heads])
    assert (not r.sufficient, r.minimal) == (grows, minimal)
    assert interval("realigned", _diagonal(5.0, 3.0, 0.2), t) == (2, 2)
    assert interval("realigned", _diagonal(5.0, 3.0, 0.7), t) == (2, 3)


def test_energy_fraction_gate_counts_shares_of_positive_energy():
    t = Thresholds(theta_w=1.0, phi_w=0.5, phi_g=0.01, epsilon=0.1)
    a = _diagonal(6.0, 3.0, 0.9, 0.1)  # shares 0.6, 0.3, 0.09, 0.01
    r = GATES["energy_fraction"].read(LayerView(a, [1.0], t))
    assert r.residual == pytest.approx(0.4) and not r.sufficient
    r = GATES["energy_fraction"].read(LayerView(a, [1.0, 1.0], t))
    assert r.residual == pytest.approx(0.1) and r.sufficient and r.minimal
    assert not GATES["energy_fraction"].read(LayerView(a, [1.0] * 4, t)).minimal
    assert interval("energy_fraction", a, t) == (2, 3)


def test_growth_refractory_and_cap():
    p = _policy()
    # The initial head counts as grown at step 0: no growth before the refractory time.
    assert p.decide(5, _stats([20.0])) == []
    events = p.decide(10, _stats([20.0]))
    assert [(e.op, e.layer) for e in events] == [("add_head", 0)]
    assert "residual" in events[0].reason and len(p.gates[0].directions) == 2
    assert p.decide(15, _stats([20.0, 20.0])) == []  # refractory: 10 steps
    assert [e.op for e in p.decide(20, _stats([20.0, 20.0]))] == ["add_head"]
    for step in (25, 30, 35, 40):
        assert p.decide(step, _stats([20.0, 20.0, 20.0])) == []  # cap of 3 heads
    assert p.converged_step is None  # insufficient: energy above theta_w remains
    assert p.forecast["step"] == 10  # taken at the first decision point
    assert [e.op for e in _policy(refractory_from_start=False).decide(5, _stats([20.0]))] == [
        "add_head"
    ]


def _follow(p, scales, step, contributions=None):
    """One check, and the model following its events (a grown head is silent, as if its
    weights were 0; a fading head is removed at once)."""
    events = p.decide(step, _stats(scales), contributions)
    for e in events:
        if e.op == "add_head":
            scales = [*scales, 0.0]
        elif e.op == "fade_head":
            scales = scales[: e.head] + scales[e.head + 1 :]
            p.observe([Event(op="remove_head", layer=e.layer, head=e.head)])
    return events, scales


def test_a_weak_head_fades_out_when_its_measured_contribution_is_small():
    p = _policy(max_heads=2)
    _, scales = _follow(p, [20.0], 10)  # grown at 10, silent from then on
    for step in (15, 20, 25):  # weak for prune_patience = 3 checks
        assert p.needs(step + 5) == frozenset({MOMENTS}) or step == 25
        _follow(p, scales, step)
    # The next check measures what each head contributes before choosing.
    assert p.needs(30) == frozenset({MOMENTS, CONTRIBUTION})
    events, scales = _follow(p, scales, 30, [torch.tensor([0.5, 0.004])])
    [e] = events
    assert (e.op, e.head, e.fade_steps) == ("fade_head", 1, 4)
    assert e.loss_change == pytest.approx(0.004)
    assert len(p.gates[0].directions) == len(scales) == 1


def test_a_weak_head_that_matters_is_kept_and_counts_as_minimal():
    p = _policy(max_heads=2, refractory_steps=1000, initial_heads=2)
    p.calibrate([_stats([1.0, 0.0])])
    for step in (5, 10, 15):
        p.decide(step, _stats([0.05, 0.0]))
    assert p.needs(20) == frozenset({MOMENTS, CONTRIBUTION})
    assert p.decide(20, _stats([0.05, 0.0]), [torch.tensor([0.5, 0.2])]) == []
    assert p.gates[0].needed == [False, True] and p.gates[0].minimal
    log = p.drain_log()
    assert [r["kept_head"] for r in log if "kept_head" in r] == [1]
    # Every record has its step (TensorBoard files each record under it).
    assert all(r["step"] <= 20 for r in log)
    assert p.converged_step == 20  # quiet since the start, sufficient, minimal by measure


def test_homeostasis_certificate_and_its_withdrawal():
    p = _policy()
    for step in range(5, 50, 5):
        assert p.decide(step, _stats([0.05])) == []
    # Quiet for homeostasis_checks checks, sufficient and minimal: certified at the 3rd check.
    assert p.converged_step == 15
    report = p.report(_stats([0.05]))
    assert report["converged_step"] == 15 and report["certified_interval"] == [[0, 0]]
    # At calibration (one head of scale 1) three directions stood above theta_w.
    assert report["null_interval"] == [[3, 3]] and report["forecast_heads"] == [0]
    assert set(report["thresholds"][0]) == {"gamma_res", "theta_w", "phi_w", "phi_g"}
    # New energy: the layer grows, the certificate is withdrawn until it settles again.
    assert [e.op for e in p.decide(50, _stats([20.0]))] == ["add_head"]
    assert p.converged_step is None


@pytest.mark.parametrize("seed", range(3))
def test_online_estimator_agrees_with_the_exact_one(seed):
    # Thresholds out of reach: the structure stays, only the estimates are compared.
    exact, online = _policy(growth_ratio=1e6), _policy(estimator="online", growth_ratio=1e6)
    for step in range(5, 30, 5):
        s = _stats([3.0], seed=seed)  # a fixed operator, seen at every check
        exact.decide(step, s)
        online.decide(step, s)
        e, o = (next(r for r in p.drain_log()[::-1] if "layer" in r) for p in (exact, online))
        if step >= 10:  # the default step size converges within a check or two
            assert o["residual"] == pytest.approx(e["residual"], rel=1e-3)
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
            "refractory_steps": 15,
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
    for key in ("certified_interval", "null_interval", "forecast_heads", "kstar_heads"):
        assert len(s[key]) == 2, key
    assert s["forecast_step"] == 15 and len(s["thresholds"]) == 2
    assert "converged_step" in s
    rows = [json.loads(line) for line in (tmp_path / "a" / "stats.jsonl").read_text().splitlines()]
    assert sum("layer" in r for r in rows) == 2 * (60 // 5)
    assert [r["forecast_heads"] for r in rows if "forecast_heads" in r] == [s["forecast_heads"]]
    assert {"residual", "grow_at", "weakest", "keep_at", "top", "heads"} <= rows[0].keys()
    for e in s["events"]:  # function-preserving insertion: the loss does not move
        assert abs(e["loss_after"] - e["loss_before"]) <= 1e-6 * e["loss_before"]


def test_random_insertion_moves_the_loss(tmp_path):
    s = _run(tmp_path, "r", policy_options={"init": "random"})
    assert any(abs(e["loss_after"] - e["loss_before"]) > 1e-4 for e in s["events"])


def test_two_seeded_runs_have_the_same_trajectory(tmp_path):
    assert _trajectory(_run(tmp_path, "a")) == _trajectory(_run(tmp_path, "b"))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"estimator": "online", "threshold_mode": "relative"},
        {"gate": "demand", "demand_window": 3, "demand_z": 1.0, "grace_checks": 2},
    ],
    ids=["exact-calibrated", "online-relative", "demand"],
)
def test_resume_in_the_middle_of_growth_is_exact(tmp_path, options):
    straight = _run(tmp_path, "s", policy_options=options)
    assert [e for e in straight["events"] if e["step"] < 30]  # growth before the break
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


# Every head counts as weak (phi_w far above any eigenvalue) and any loss change is
# accepted: heads are pruned as soon as patience and grace allow.
PRUNING = {
    "initial_heads": 3,
    "refractory_steps": 1000,
    "minor_ratio": 1e6,
    "prune_patience": 2,
    "grace_checks": 0,
    "prune_fade_steps": 10,
    "prune_max_loss_change": 1e6,
}


def test_pruning_in_a_run_measures_fades_then_removes(tmp_path):
    s = _run(tmp_path, "p", policy_options=PRUNING)
    fades = [e for e in s["events"] if e["op"] == "fade_head"]
    removals = [e for e in s["events"] if e["op"] == "remove_head"]
    assert fades and len(removals) in (len(fades), len(fades) - 1)
    for fade, removal in zip(fades, removals, strict=False):
        assert "loss_change" in fade and removal["step"] == fade["step"] + 10
        assert (fade["layer"], fade["head"]) == (removal["layer"], removal["head"])
        # Faded to 0 first: the removal itself leaves the loss as it was.
        assert removal["loss_after"] == pytest.approx(removal["loss_before"], rel=1e-5)
    heads = [layer["heads"] for layer in s["architecture"]["layers"]]
    assert sum(heads) < 6


def test_resume_in_the_middle_of_a_fade_is_exact(tmp_path):
    straight = _run(tmp_path, "s", policy_options=PRUNING)
    fade = next(e for e in straight["events"] if e["op"] == "fade_head")
    _run(tmp_path, "h", policy_options=PRUNING, steps=fade["step"] + 5, checkpoint_every=5)
    resumed = train(
        TrainConfig.from_dict(run_config(policy_options=PRUNING)),
        tmp_path / "h",
        resume=True,
        progress=False,
    )
    assert _trajectory(resumed) == _trajectory(straight)
    ckpt = "checkpoints/step_00000060/model.safetensors"
    assert (tmp_path / "h" / ckpt).read_bytes() == (tmp_path / "s" / ckpt).read_bytes()
