"""INCRT's spectral quantities: directional operator, deflation, eigen-estimators, head counts.

Notation (INCRT's): for one layer, ``S = X^T X / n`` is the second
moment of its input, ``M_a^h`` the antisymmetric part of head h's query-key form and
``M_a`` their sum. The directional operator is ``A = sym(S M_a)`` (trace 0), and with
captured directions ``Q`` the residual operator is ``A_res = P A P``, ``P = I - Q Q^T``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def sym(x: Tensor) -> Tensor:
    return (x + x.T) / 2


def directional_operator(cov: Tensor, forms: Tensor) -> Tensor:
    """``A = sym(S M_a)`` for per-head antisymmetric forms ``forms`` (heads, d, d)."""
    return sym(cov @ forms.sum(0))


def deflate(a: Tensor, directions: Tensor | None) -> Tensor:
    """``P A P`` with ``P`` the projector onto the complement of ``directions`` (d, k)."""
    if directions is None or directions.shape[1] == 0:
        return a
    q, _ = torch.linalg.qr(directions)
    p = torch.eye(a.shape[0], dtype=a.dtype) - q @ q.T
    return p @ a @ p


def head_energies(cov: Tensor, forms: Tensor) -> Tensor:
    """Per-head directional energy ``G_h = ||S M_a^h||_F``."""
    return torch.linalg.matrix_norm(cov.unsqueeze(0) @ forms)


@dataclass
class Spectrum:
    """Extreme eigenpairs of a symmetric operator.

    Args:
        lambda_max: Largest eigenvalue.
        u_plus: Its unit eigenvector.
        lambda_min: Smallest eigenvalue.
        u_minus: Its unit eigenvector.
        gap: ``lambda_1 - lambda_2`` (0 where unknown).
    """

    lambda_max: float
    u_plus: Tensor
    lambda_min: float
    u_minus: Tensor
    gap: float


def exact_spectrum(a: Tensor) -> Spectrum:
    """Extreme eigenpairs by a full symmetric eigendecomposition."""
    values, vectors = torch.linalg.eigh(a)
    gap = (values[-1] - values[-2]).item() if len(values) > 1 else 0.0
    return Spectrum(values[-1].item(), vectors[:, -1], values[0].item(), vectors[:, 0], gap)


class OnlineSpectrum:
    """Online estimates of the extreme eigenpairs: Oja ascent for the dominant one,
    MCA-EXIN for the minor one (minor rate half the dominant rate), as in the INCRT
    reference code. Each :meth:`update` takes a few steps on the current operator, so
    the estimates follow it as training changes it.

    Args:
        dim: Operator size d.
        lr: Step size on the operator scaled to unit spectral radius (so it does not
            depend on the operator's magnitude); None: the reference 1 / (10 d). Up to
            0.5 the update is a power iteration on a positive shift of the operator,
            which converges without overshoot.
        iters: Steps per update.
        generator: Random start vectors.
    """

    def __init__(
        self,
        dim: int,
        *,
        lr: float | None = None,
        iters: int = 200,
        generator: torch.Generator | None = None,
    ) -> None:
        self.lr = lr if lr is not None else 1.0 / (10 * dim)
        self.iters = iters
        w = torch.randn(2, dim, dtype=torch.float64, generator=generator)
        self.w_plus, self.w_minus = w[0] / w[0].norm(), w[1] / w[1].norm()

    def update(self, a: Tensor, complement: Tensor | None = None) -> Spectrum:
        """Track ``a``; with ``complement`` (d, k), keep the estimates orthogonal to it."""
        b = a / (torch.linalg.matrix_norm(a, ord=2).item() or 1.0)
        q = None
        if complement is not None and complement.shape[1]:
            q, _ = torch.linalg.qr(complement)
        w, v = self.w_plus, self.w_minus
        for _ in range(self.iters):
            # Oja: ascent of the Rayleigh quotient on the unit sphere.
            w = _unit(w + self.lr * (b @ w - (w @ b @ w) * w), q)
            # MCA-EXIN: descent of the Rayleigh quotient, at half the rate.
            vv = v @ v
            v = _unit(v - self.lr / 2 * (b @ v - (v @ b @ v) / vv * v) / vv, q)
        self.w_plus, self.w_minus = w, v
        lmax, lmin = (w @ a @ w).item(), (v @ a @ v).item()
        # The second eigenvalue is not tracked online; the spread bounds the gap from above.
        return Spectrum(lmax, w.clone(), lmin, v.clone(), lmax - lmin)

    def state_dict(self) -> dict[str, list[float]]:
        return {"w_plus": self.w_plus.tolist(), "w_minus": self.w_minus.tolist()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.w_plus = torch.tensor(state["w_plus"], dtype=torch.float64)
        self.w_minus = torch.tensor(state["w_minus"], dtype=torch.float64)


def _unit(w: Tensor, q: Tensor | None) -> Tensor:
    if q is not None:
        w = w - q @ (q.T @ w)
    return w / w.norm().clamp_min(1e-30)


def refractory_steps(gap: float, dim: int, *, kappa: float = 2.0, eps: float = 0.05) -> float:
    """Reference refractory time ``ceil(kappa / (eta * gap^2) * ln(1/eps))``, eta = 1/(10 d),
    in optimizer steps; infinite for a zero gap."""
    if gap <= 0:
        return math.inf
    return math.ceil(kappa * 10 * dim / gap**2 * math.log(1 / eps))


def spectral_complexity(a: Tensor, theta: float) -> int:
    """Our operational head-count predictor: eigenvalues of the undeflated ``A`` above ``theta``."""
    return int((torch.linalg.eigvalsh(a) > theta).sum().item())


def kstar(kappa: float, gamma0: float, theta: float) -> float:
    """The paper's bound ``K* = kappa^2 * ln(Gamma_0 / theta_w)`` (read with this grouping)."""
    if gamma0 <= theta or theta <= 0:
        return 0.0
    return kappa**2 * math.log(gamma0 / theta)
