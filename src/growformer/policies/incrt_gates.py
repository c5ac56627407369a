"""INCRT's growth gates: how one layer reads as "grow", "enough" and "a head too many",
and the policy's bookkeeping per layer (:class:`LayerGate`).

Every gate turns the layer's operator ``A = sym(S M_a)`` (see :mod:`growformer.theory`)
into a :class:`Reading`: a *residual* compared with a growth threshold (sufficient while
it is at most the threshold) and a *weakest* captured quantity compared with a keep
threshold (minimal while it is at least that). The gates differ in what they call
captured:

- ``realigned`` (default): the captured directions are re-estimated at every check as
  the top-H eigenvectors of the current operator (H heads), so the residual is
  ``lambda_{H+1}`` and the weakest captured direction ``lambda_H``. Grow above
  ``theta_w``; minimal while ``lambda_H >= phi_w`` (a hysteresis band between the two).
- ``energy_fraction``: the same ordering, measured as fractions of the operator's
  positive energy (the sum of its positive eigenvalues): grow while the uncaptured
  fraction exceeds ``energy_epsilon``; minimal while the H-th direction holds at least
  half of that.
- ``frozen`` (the reference code): one direction per head, frozen at the head's birth,
  deflates the operator; grow when the residual's ``lambda_max > theta_w`` (and its
  ``lambda_min < phi_w``); minimal while every head's energy ``||S M_a^h||_F >= phi_g``.
- ``demand``: reads the loss instead of the forms (a :class:`DemandWindow` of the
  layer's recent checks, see :class:`growformer.statistics.Demand`): grow while the
  demand no head's own query and key maps can follow is above zero beyond the noise and
  material against the layer's peak; which heads are redundant is measured, not read.

A gate's :func:`interval` is the range of head counts its rule accepts as certified for
an operator: the gate's own prediction, the quantity behind the forecast and the
held-out consistency check.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from growformer import theory


@dataclass
class Thresholds:
    """One layer's thresholds.

    Args:
        theta_w: Growth threshold on an eigenvalue.
        phi_w: Keep threshold on an eigenvalue (realigned) / minor threshold (frozen).
        phi_g: Keep threshold on a head's energy (frozen).
        epsilon: Growth threshold on the uncaptured energy fraction (energy_fraction).
    """

    theta_w: float
    phi_w: float
    phi_g: float
    epsilon: float
    demand_z: float = 3.0
    growth_ratio: float = 0.1


@dataclass
class Reading:
    """What one check of one layer measured.

    Args:
        residual: Uncaptured directional energy, in the gate's unit.
        grow_at: Growth threshold on ``residual``.
        weakest: The weakest captured quantity, in the gate's unit.
        keep_at: Keep threshold on ``weakest``.
        weak: Per head, whether it is below the keep threshold (a prune candidate).
        may_grow: A further condition of growth (the frozen gate's ``lambda_min < phi_w``).
        direction: The direction a new head captures (frozen gate), else None.
        form: The (query, key) directions a new head starts along (demand gate), else None.
        gap: ``lambda_1 - lambda_2`` of the residual (the reference refractory time).
        values: Numbers for stats.jsonl.
    """

    residual: float
    grow_at: float
    weakest: float
    keep_at: float
    weak: list[bool]
    may_grow: bool = True
    direction: list[float] | None = None
    form: tuple[list[float], list[float]] | None = None
    gap: float = 0.0
    values: dict[str, float | list[float]] = field(default_factory=dict)

    @property
    def sufficient(self) -> bool:
        return self.residual <= self.grow_at

    @property
    def minimal(self) -> bool:
        return self.weakest >= self.keep_at


@dataclass
class LayerGate:
    """One layer's thresholds and the policy's bookkeeping about it (JSON-serialisable)."""

    gamma: float = 0.0
    theta_w: float = 0.0
    phi_w: float = 0.0
    phi_g: float = 0.0
    # Per head: its frozen direction (frozen gate), checks below the keep threshold, the
    # check it was born at, and whether a measurement found it necessary.
    directions: list[list[float] | None] = field(default_factory=list)
    low_checks: list[int] = field(default_factory=list)
    born_check: list[int] = field(default_factory=list)
    needed: list[bool] = field(default_factory=list)
    last_growth_step: int = -(10**9)
    sufficient: bool = False
    minimal: bool = False
    # A head fading out before its removal (None: none), and whether the next check
    # should measure the heads' contributions.
    fading: int | None = None
    measure: bool = False
    tracker: dict[str, list[float]] | None = None
    # Demand gate: the layer's unmet demand per check since its last change, and the
    # largest mean of it over a full window so far.
    unmet: list[float] = field(default_factory=list)
    peak_unmet: float = 0.0

    def add(self, born: int, direction: list[float] | None = None) -> None:
        self.directions.append(direction)
        self.low_checks.append(0)
        self.born_check.append(born)
        self.needed.append(False)
        self.unmet = []  # evidence about the old heads only

    def drop(self, head: int) -> None:
        for per_head in (self.directions, self.low_checks, self.born_check, self.needed):
            del per_head[head]
        self.unmet = []

    def judge_minimal(self, weak: list[bool], min_heads: int) -> None:
        """Minimal: no head can go (``min_heads`` left), or every head is above the keep
        threshold or was measured necessary."""
        self.minimal = len(weak) <= min_heads or all(
            not w or n for w, n in zip(weak, self.needed, strict=True)
        )

    def on_probation(self, checks: int, grace: int) -> bool:
        """Whether the newest grown head is still young and not yet measured necessary."""
        if not self.born_check:
            return False
        newest = max(range(len(self.born_check)), key=self.born_check.__getitem__)
        born = self.born_check[newest]
        return born > 0 and not self.needed[newest] and checks - born < grace

    def thresholds(self, o: dict[str, Any]) -> Thresholds:
        """The layer's thresholds with the gate options of the policy's options ``o``."""
        return Thresholds(
            self.theta_w,
            self.phi_w,
            self.phi_g,
            o["energy_epsilon"],
            o["demand_z"],
            o["growth_ratio"],
        )


# The frozen gate's estimator of the residual's extreme eigenpairs (exact or online),
# given the residual and the captured directions.
Spectrometer = Callable[[Tensor, Tensor | None], theory.Spectrum]


@dataclass
class DemandWindow:
    """The demand gate's evidence: one layer's unmet demand over its recent checks.

    Args:
        unmet: Per check, the signal energy of the heads' normal parts (demand no change
            of the heads' own query and key maps can follow), summed over heads.
        form: The current check's strongest unmet (query, key) form.
        size: Checks the evidence needs; with fewer, nothing is decided.
        peak: The largest mean unmet demand of the layer so far (the scale of "material").
    """

    unmet: list[float]
    form: tuple[list[float], list[float]]
    size: int
    peak: float


@dataclass
class LayerView:
    """What a gate reads of one layer at a check.

    Args:
        a: The layer's directional operator ``A``.
        energies: Per head, its directional energy ``||S M_a^h||_F``.
        t: The layer's thresholds.
        directions: (d, k) the frozen gate's captured directions, or None.
        spectrum: The frozen gate's estimator of the residual's extreme eigenpairs.
        need: The demand gate's evidence, or None.
    """

    a: Tensor
    energies: list[float]
    t: Thresholds
    directions: Tensor | None = None
    spectrum: Spectrometer | None = None
    need: DemandWindow | None = None


def _descending(a: Tensor) -> Tensor:
    return torch.linalg.eigvalsh(a).flip(0)


def realigned(v: LayerView) -> Reading:
    heads, values = len(v.energies), _descending(v.a)
    residual = values[heads].item() if heads < len(values) else -math.inf
    weakest = values[heads - 1].item() if heads else math.inf
    return _ranked(values, heads, residual, v.t.theta_w, weakest, v.t.phi_w)


def energy_fraction(v: LayerView) -> Reading:
    heads, values = len(v.energies), _descending(v.a)
    positive = values.clamp_min(0)
    total = positive.sum().item() or 1.0
    uncaptured = positive[heads:].sum().item() / total
    weakest = positive[heads - 1].item() / total if heads else math.inf
    return _ranked(values, heads, uncaptured, v.t.epsilon, weakest, v.t.epsilon / 2)


def _ranked(
    values: Tensor, heads: int, residual: float, grow_at: float, weakest: float, keep_at: float
) -> Reading:
    """The reading of a gate that ranks the operator's eigenvalues ``values`` (descending):
    every head is weak together, when the H-th direction is."""
    return Reading(
        residual=residual,
        grow_at=grow_at,
        weakest=weakest,
        keep_at=keep_at,
        weak=[weakest < keep_at] * heads,
        gap=(values[heads] - values[heads + 1]).item() if heads + 1 < len(values) else 0.0,
        values={"top": values[: heads + 3].tolist()},
    )


def frozen(v: LayerView) -> Reading:
    if v.spectrum is None:
        raise ValueError("the frozen gate needs a spectrum estimator")
    a_res = theory.deflate(v.a, v.directions)
    s = v.spectrum(a_res, v.directions)
    t = v.t
    return Reading(
        residual=s.lambda_max,
        grow_at=t.theta_w,
        weakest=min(v.energies) if v.energies else math.inf,
        keep_at=t.phi_g,
        weak=[e < t.phi_g for e in v.energies],
        may_grow=s.lambda_min < t.phi_w,
        direction=s.u_plus.tolist(),
        gap=s.gap,
        values={
            "lambda_min": s.lambda_min,
            "a_res_norm": torch.linalg.matrix_norm(a_res).item(),
        },
    )


def demand(v: LayerView) -> Reading:
    ranked, need = realigned(v), v.need
    # Which heads are redundant is measured (their contributions), not read here.
    weak = [True] * len(v.energies)
    if need is None or len(need.unmet) < need.size:
        # Too little evidence since the last change: neither growth nor a certificate.
        return replace(ranked, residual=math.inf, grow_at=0.0, weak=weak, may_grow=False)
    unmet = statistics.fmean(need.unmet)
    spread = statistics.stdev(need.unmet) / math.sqrt(len(need.unmet))
    return replace(
        ranked,
        # Grow while the unmet demand is there beyond the noise (a lower confidence bound)
        # and material: its norm above growth_ratio times the layer's peak.
        residual=unmet - v.t.demand_z * spread,
        grow_at=v.t.growth_ratio**2 * need.peak,
        weak=weak,
        form=need.form,
        values={**ranked.values, "unmet": unmet, "unmet_se": spread},
    )


@dataclass(frozen=True)
class Gate:
    """A registered gate: its reading, and what it asks of the policy around it.

    Args:
        read: The reading of one layer at a check.
        reads_demand: It reads the statistic ``demand``; its grown heads are there to learn
            something new, so the newest is on probation until it is measured necessary.
        grace_checks: Default age, in checks, before a head may be judged redundant.
    """

    read: Callable[[LayerView], Reading]
    reads_demand: bool = False
    grace_checks: int = 20


GATES: dict[str, Gate] = {
    "realigned": Gate(realigned),
    "energy_fraction": Gate(energy_fraction),
    "frozen": Gate(frozen),
    # A head grown on demand needs time to learn its relation before it is judged
    # (measured on the channels task: ~1000 steps).
    "demand": Gate(demand, reads_demand=True, grace_checks=200),
}


def interval(gate: str, a: Tensor, t: Thresholds) -> tuple[int, int]:
    """Head counts ``[lo, hi]`` that ``gate``'s rule certifies for the operator ``a``.

    ``lo`` is the fewest heads that leave the operator sufficient, ``hi`` the most that
    keep it minimal (realigned and frozen: ``N(theta_w)`` and ``N(phi_w)``, the number of
    eigenvalues above each threshold; energy_fraction: the same on energy fractions).
    """
    values = _descending(a)
    if gate == "energy_fraction":
        positive = values.clamp_min(0)
        share = positive / (positive.sum().item() or 1.0)
        tail = share.flip(0).cumsum(0).flip(0)  # tail[h]: fraction beyond the first h
        lo = int((tail > t.epsilon).sum().item())
        hi = int((share >= t.epsilon / 2).sum().item())
    else:
        lo = int((values > t.theta_w).sum().item())
        hi = int((values >= t.phi_w).sum().item())
    return lo, max(lo, hi)
