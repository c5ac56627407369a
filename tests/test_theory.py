"""INCRT's spectral quantities and the statistics they are computed from."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import arch, batch

from growformer import theory
from growformer.model import build_model
from growformer.statistics import capture_inputs, layer_stats, query_key_forms


def _random_stats(d=12, heads=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, d, dtype=torch.float64, generator=g)
    m = torch.randn(heads, d, d, dtype=torch.float64, generator=g)
    return x.T @ x / 200, (m - m.transpose(1, 2)) / 2


def _operator_with_spectrum(values, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(values), len(values), dtype=torch.float64, generator=g))
    return q @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ q.T, q


def test_directional_operator_is_symmetric_and_traceless():
    cov, forms = _random_stats()
    a = theory.directional_operator(cov, forms)
    assert torch.allclose(a, a.T)
    assert abs(torch.trace(a).item()) < 1e-10
    manual = cov @ forms.sum(0)
    assert torch.allclose(a, (manual + manual.T) / 2)


def test_deflation_removes_captured_directions():
    cov, forms = _random_stats()
    a = theory.directional_operator(cov, forms)
    u = theory.exact_spectrum(a).u_plus
    a_res = theory.deflate(a, u[:, None])
    assert torch.allclose(a_res @ u, torch.zeros_like(u), atol=1e-10)
    assert theory.exact_spectrum(a_res).lambda_max < theory.exact_spectrum(a).lambda_max
    assert torch.equal(theory.deflate(a, None), a)


def test_head_energies():
    cov, forms = _random_stats()
    expected = [torch.linalg.matrix_norm(cov @ f).item() for f in forms]
    assert theory.head_energies(cov, forms).tolist() == pytest.approx(expected)


def test_exact_spectrum_and_complexity():
    a, q = _operator_with_spectrum([5.0, 2.0, 0.5, 0.0, -1.0, -3.0])
    s = theory.exact_spectrum(a)
    assert s.lambda_max == pytest.approx(5.0) and s.lambda_min == pytest.approx(-3.0)
    assert s.gap == pytest.approx(3.0)
    assert abs(abs(s.u_plus @ q[:, 0]) - 1) < 1e-10
    assert theory.spectral_complexity(a, 1.0) == 2
    assert theory.spectral_complexity(a, 0.1) == 3


def test_online_estimates_converge_to_the_exact_ones():
    values = [6.0, 2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -5.0] + [0.1] * 8
    a, _ = _operator_with_spectrum(values)
    tracker = theory.OnlineSpectrum(
        len(values), lr=0.05, iters=100, generator=torch.Generator().manual_seed(1)
    )
    for _ in range(10):
        s = tracker.update(a)
    assert s.lambda_max == pytest.approx(6.0, rel=1e-3)
    assert s.lambda_min == pytest.approx(-5.0, rel=1e-3)
    # Restricted to the complement of the top direction, it finds the second eigenvalue.
    top = theory.exact_spectrum(a).u_plus[:, None]
    for _ in range(10):
        s = tracker.update(theory.deflate(a, top), top)
    assert s.lambda_max == pytest.approx(2.0, rel=1e-3)
    assert abs(s.u_plus @ top[:, 0]) < 1e-8


def test_online_state_round_trip():
    a, _ = _operator_with_spectrum([3.0, 1.0, -2.0, 0.0])
    t1 = theory.OnlineSpectrum(4, generator=torch.Generator().manual_seed(0))
    t1.update(a)
    t2 = theory.OnlineSpectrum(4)
    t2.load_state_dict(t1.state_dict())
    assert t1.update(a).lambda_max == t2.update(a).lambda_max


def test_refractory_and_kstar():
    assert theory.refractory_steps(0.0, 8) == math.inf
    assert theory.refractory_steps(2.0, 8) == math.ceil(2 * 80 / 4 * math.log(20))
    assert theory.kstar(2.0, 10.0, 1.0) == pytest.approx(4 * math.log(10))
    assert theory.kstar(2.0, 0.5, 1.0) == 0.0


def test_query_key_forms_match_the_weights():
    torch.manual_seed(0)
    model = build_model(arch("classifier", "nonuniform"))
    attn = model.transformer.layers[1].attn
    forms = query_key_forms(model, 1)
    assert forms.shape == (3, 32, 32)
    wq = attn.q_proj.weight[8:16].double()
    wk = attn.k_proj.weight[8:16].double()
    m = wq.T @ wk
    assert torch.allclose(forms[1], (m - m.T) / 2)
    assert torch.allclose(forms, -forms.transpose(1, 2))


def test_query_key_forms_use_each_head_group_keys():
    torch.manual_seed(0)
    model = build_model(arch("classifier", "compressed"))
    attn = model.transformer.layers[0].attn  # 4 heads, 2 key/value heads
    forms = query_key_forms(model, 0)
    assert forms.shape == (4, 32, 32)
    for h in range(4):
        wq = attn.q_proj.weight[h * 8 : (h + 1) * 8].double()
        wk = attn.k_proj.weight[(h // 2) * 8 : (h // 2 + 1) * 8].double()
        m = wq.T @ wk
        assert torch.allclose(forms[h], (m - m.T) / 2)


def test_captured_input_moments_exclude_padding():
    torch.manual_seed(0)
    model = build_model(arch("classifier", "uniform"))
    model.eval()
    b = batch("classifier")
    seen = []
    hook = model.transformer.layers[0].ln_1.register_forward_hook(
        lambda m, a, out: seen.append(out)
    )
    with capture_inputs(model, b["attention_mask"]) as cap, torch.no_grad():
        model(b["input_ids"], b["attention_mask"])
    hook.remove()
    x = seen[0][b["attention_mask"]].double()
    stats = layer_stats(model, cap)
    assert stats[0].tokens == int(b["attention_mask"].sum())
    assert torch.allclose(stats[0].cov, x.T @ x / x.shape[0])
    assert len(model.transformer.layers[0].ln_1._forward_hooks) == 0
