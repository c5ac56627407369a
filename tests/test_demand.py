"""INCRT's demand: the loss's gradient on the heads' query-key forms, the gate that grows
on it, and a new head started along the demanded form."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import KINDS, VARIANTS, arch, batch

from growformer import surgery
from growformer.errors import ConfigError, SurgeryError
from growformer.events import Event
from growformer.model import build_model
from growformer.policies import IncrtPolicy
from growformer.policies.incrt_gates import GATES, DemandWindow, LayerView, Thresholds
from growformer.statistics import CONTRIBUTION, DEMAND, MOMENTS, Demand, LayerStats, capture


def _demand_step(model, b):
    """One forward and backward under the demand capture; the capture and the loss."""
    with capture(model, b.get("attention_mask"), {DEMAND}) as captured:
        loss = model(**b).loss
    loss.backward()
    return captured, loss


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_logit_probe_changes_nothing_but_gives_the_logit_gradient(kind, variant):
    torch.manual_seed(0)
    model = build_model(arch(kind, variant)).double()
    b = batch(kind)
    plain = model(**b).loss
    captured, loss = _demand_step(model, b)
    assert loss.item() == pytest.approx(plain.item(), rel=1e-12)
    assert all(block.logit_probe is None for block in model.transformer.layers)
    # The gradient of a head's query map is the form's gradient G_h through its keys:
    # dL/dW_q^h = W_k^h G_h^T (both halves of the batch together give the whole G).
    captured.demand._collect()
    for layer, block in enumerate(model.transformer.layers):
        attn, sums = block.attn, captured.demand.sums[layer]
        if not attn.heads:
            assert sums is None
            continue
        hd, group = attn.head_dim, attn.heads // attn.kv_heads
        g = sums.mean(0) / math.sqrt(hd)
        wk = attn.k_proj.weight.detach()
        for h in range(attn.heads):
            expected = wk[(h // group) * hd : (h // group + 1) * hd] @ g[h].T
            got = attn.q_proj.weight.grad[h * hd : (h + 1) * hd]
            if variant not in ("looped", "fading", "compressed", "llama"):
                # Elsewhere the query rows also serve loop passes and block loops, whose
                # gradients the first pass's form does not hold; with rotary positions
                # the logits are no single form.
                torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-12)
        demand = captured.demand.demands(model)[layer]
        assert demand.normal.shape == (attn.heads,)
        assert demand.query.shape == demand.key.shape == (model.arch.d_model,)


def test_the_normal_part_is_what_the_heads_own_maps_cannot_follow():
    torch.manual_seed(0)
    model = build_model(arch("classifier", "uniform")).double()
    captured, _ = _demand_step(model, batch("classifier", b=8))
    captured.demand._collect()
    attn, halves = model.transformer.layers[0].attn, captured.demand.sums[0]
    [demand] = captured.demand.demands(model)[:1]
    hd = attn.head_dim
    halves = halves / math.sqrt(hd)
    for h in range(attn.heads):
        q, _ = torch.linalg.qr(attn.q_proj.weight[h * hd : (h + 1) * hd].detach().T)
        k, _ = torch.linalg.qr(attn.k_proj.weight[h * hd : (h + 1) * hd].detach().T)
        eye = torch.eye(q.shape[0], dtype=q.dtype)
        normal = (eye - q @ q.T) @ halves[:, h] @ (eye - k @ k.T)
        # Nothing of it lies in the head's query or key span...
        assert (q.T @ normal).abs().max() < 1e-10 and (normal @ k).abs().max() < 1e-10
        # ... and its energy is taken between the two halves of the batch.
        assert demand.normal[h].item() == pytest.approx((normal[0] * normal[1]).sum().item())


def test_no_backward_no_demand():
    model = build_model(arch("classifier", "uniform"))
    with torch.no_grad(), capture(model, None, {DEMAND}) as captured:
        model(**batch("classifier"))
    assert captured.results(model, lambda: 0.0)[DEMAND] == [None, None]


def _window(unmet, size=4, peak=0.0):
    return DemandWindow(unmet, ([1.0, 0.0], [0.0, 1.0]), size, peak)


def _read(window, heads=2, z=3.0):
    a = torch.diag(torch.tensor([3.0, 2.0, -2.0, -3.0], dtype=torch.float64))
    t = Thresholds(theta_w=1.0, phi_w=0.5, phi_g=0.01, epsilon=0.1, demand_z=z)
    return GATES["demand"].read(LayerView(a, [1.0] * heads, t, need=window))


def test_demand_gate_grows_only_on_unmet_demand_beyond_the_noise():
    # Too little evidence: no growth and no certificate.
    r = _read(_window([5.0, 5.0]))
    assert not r.may_grow and not r.sufficient
    # Steady unmet demand: grow, along the demanded form.
    r = _read(_window([5.0, 5.2, 4.8, 5.1]))
    assert r.may_grow and not r.sufficient and r.form == ([1.0, 0.0], [0.0, 1.0])
    # Demand that is noise around zero: sufficient.
    assert _read(_window([1.0, -1.2, 0.9, -0.8])).sufficient
    # Steady but immaterial: below growth_ratio (0.1) of the layer's peak in norm.
    assert _read(_window([5.0, 5.2, 4.8, 5.1], peak=600.0)).sufficient
    assert not _read(_window([5.0, 5.2, 4.8, 5.1], peak=400.0)).sufficient
    # Redundancy is measured, not read: every head is a candidate.
    assert r.weak == [True, True]


def _demand(normal, d=4):
    e = torch.eye(d, dtype=torch.float64)
    return Demand(normal=torch.tensor(normal, dtype=torch.float64), query=e[0], key=e[1])


def _layer(heads, d=4):
    forms = torch.zeros(heads, d, d, dtype=torch.float64)
    return [LayerStats(cov=torch.eye(d, dtype=torch.float64), forms=forms, tokens=64)]


def test_demand_policy_grows_waits_for_its_new_head_and_certifies():
    p = IncrtPolicy(
        {
            "gate": "demand",
            "demand_window": 3,
            "refractory_steps": 10,
            "homeostasis_checks": 3,
            "prune_patience": 2,
            "calibration_batches": 1,
        }
    )
    p.calibrate([_layer(1)])
    assert p.needs(5) == frozenset({MOMENTS, DEMAND}) and p.grace == 200
    heads, events = 1, []
    for step in range(5, 40, 5):
        events = p.decide(step, _layer(heads), demands=[_demand([4.0 + step % 2] * heads)])
        if events:
            break
    [e] = events
    assert (e.op, e.step, e.query, e.key) == ("add_head", None, [1.0, 0, 0, 0], [0, -1.0, 0, 0])
    assert step == 15  # the evidence (3 checks) is there after the refractory time
    heads = 2
    # The new head is on probation: demand goes on, but nothing grows until it is needed.
    for step in range(20, 40, 5):
        measured = [torch.tensor([0.5, 0.002])] if CONTRIBUTION in p.needs(step) else None
        assert p.decide(step, _layer(heads), measured, [_demand([4.0, 5.0])]) == []
    assert p.gates[0].on_probation(p.checks, p.grace)
    assert p.converged_step is None
    events = _until_change(p, 40, heads, [0.5, 0.3], lambda step: [4.0 + step % 2, 5.0])
    assert [e.op for e in events] == ["add_head"]  # the new head proved necessary
    # Once the demand is noise and every head is measured necessary: certified.
    _until_change(p, 80, 3, [0.5, 0.3, 0.2], lambda step: [0.3 * (-1) ** (step // 5)] * 3)
    assert p.converged_step is not None and len(p.gates[0].needed) == 3


def _until_change(p, start, heads, contributions, unmet):
    """Checks from ``start`` until the policy asks for a change (or 12 checks pass)."""
    for step in range(start, start + 60, 5):
        measured = [torch.tensor(contributions)] if CONTRIBUTION in p.needs(step) else None
        events = p.decide(step, _layer(heads), measured, [_demand(unmet(step))])
        if events:
            return events
    return []


@pytest.mark.parametrize(
    "changes",
    [{"grace_checks": -1}, {"grace_checks": 1.5}, {"demand_window": 1}, {"demand_z": -1}],
)
def test_bad_demand_options_are_refused(changes):
    with pytest.raises(ConfigError, match=next(iter(changes))):
        IncrtPolicy({"gate": "demand", **changes})


def test_a_head_starts_along_a_given_form():
    torch.manual_seed(0)
    model = build_model(arch("classifier", "uniform"))
    attn = model.transformer.layers[0].attn
    norm = attn.q_proj.weight.norm(dim=1).mean().item()
    query, key = [0.0] * 32, [0.0] * 32
    query[3], key[5] = 2.0, -1.0
    before = model(**batch("classifier")).logits
    event = Event(op="add_head", layer=0, init="function_preserving", query=query, key=key)
    surgery.apply(model, None, event)
    hd = attn.head_dim
    new_q, new_k = attn.q_proj.weight[2 * hd], attn.k_proj.weight[2 * hd]
    assert new_q[3].item() == pytest.approx(norm) and new_q.abs().sum() == new_q[3].abs()
    assert new_k[5].item() < 0 and new_k.abs().sum() == new_k[5].abs()
    torch.testing.assert_close(model(**batch("classifier")).logits, before)
    with pytest.raises(SurgeryError, match="width 32"):
        surgery.apply(model, None, Event(op="add_head", layer=0, query=[1.0], key=[1.0]))
