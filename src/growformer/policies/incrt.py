"""INCRT: heads that grow on uncaptured directional energy, prune, and stop in homeostasis.

Every layer starts with ``initial_heads`` heads. At every check (``check_every`` steps)
its gate (:mod:`growformer.policies.incrt_gates`, option ``gate``) reads the layer: the
operator gates its directional operator ``A = sym(S M_a)``, the ``demand`` gate the loss's
gradient on the heads' query-key forms (statistic ``demand``), of which it keeps the
last ``demand_window`` checks since the layer's last change. A head is added when the
uncaptured residual exceeds the growth threshold and ``refractory_steps`` steps have
passed since the layer's last growth (the start counts as one, unless
``refractory_from_start`` is false); with the demand gate, also only once the newest
grown head was measured necessary or has had ``grace_checks`` checks to become so (its
probation), and it starts along the demanded query-key form. Every layer's heads are
judged redundant only after ``grace_checks`` checks of age (default 20; 200 with the
demand gate, whose heads are grown to learn something new).

A layer whose weakest captured direction stays below the keep threshold for
``prune_patience`` checks (with the demand gate: every layer, every ``prune_patience``
checks until each head is measured necessary) has a head too many: the head whose
removal changes the loss on the step's batch least (measured, statistic
``contribution``) fades out over ``prune_fade_steps`` steps and is then removed, provided
that change is at most ``prune_max_loss_change`` (relative); heads above it are marked
necessary. The structure is certified (``converged_step``) once nothing changed for
``homeostasis_checks`` checks while every layer is sufficient and minimal; the checks go
on, and a later change withdraws the certificate until the structure settles again.

Thresholds (``threshold_mode``): ``relative`` (default) takes ``theta_w`` as
``growth_ratio`` times the operator's current Frobenius norm at every check (scale
free); ``calibrated`` fixes it from the median norm over the first
``calibration_batches`` batches of the untrained model (the reference). ``phi_w`` is
``minor_ratio * theta_w`` and ``phi_g`` ``prune_ratio * theta_w``.

The report holds, per layer, the gate's certified interval of head counts on held-out
data at the end (a consistency check of the final structure, not a prediction), the
same interval at random initialisation (the null floor), a forecast taken at the first
decision point (``forecast_heads``, before growth ends), and the paper's ``K*`` as
information. The demand gate counts no heads itself: it reports the ``realigned``
operator's intervals and forecast.

``gate: frozen`` with ``threshold_mode: calibrated``, ``refractory_steps: null``,
``refractory_from_start: false`` and ``model.attn_init: reference`` is the reference
code's behaviour (one frozen direction per head, thresholds calibrated on the untrained
model, the refractory time from the spectral gap, N(0, 1/d) query-key init). Its
``online`` estimator's default step (``online_lr`` 0.5 on the unit-radius operator)
departs from the reference code's ``1/(10 d)``: measured on SST-2
(``benchmarks/incrt_overhead.py``), the reference step is still ~94% off the exact
``lambda_max`` after 60 checks, while 0.5 agrees within 0.01% from the first check at
the same cost.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator
from dataclasses import asdict, replace
from typing import Any, ClassVar

import torch

from growformer import theory
from growformer.arch import Architecture
from growformer.errors import ConfigError
from growformer.events import INITS, Event
from growformer.policies.base import Policy
from growformer.policies.incrt_gates import (
    GATES,
    DemandWindow,
    LayerGate,
    LayerView,
    interval,
)
from growformer.policies.records import register_record_kind
from growformer.statistics import CONTRIBUTION, DEMAND, MOMENTS, Demand, LayerStats
from growformer.validation import is_int


class IncrtPolicy(Policy):
    """The INCRT growth / pruning / homeostasis policy (see the module docstring)."""

    name = "incrt"
    defaults: ClassVar[dict[str, Any]] = {
        "gate": "realigned",
        "initial_heads": 1,
        "max_heads": 16,
        "min_heads": 1,
        "check_every": 5,
        "estimator": "exact",
        "online_iters": 50,
        "online_lr": 0.5,
        "calibration_batches": 16,
        "heldout_batches": 16,
        "threshold_mode": "relative",
        "growth_ratio": 0.10,
        "minor_ratio": 0.5,
        "prune_ratio": 0.01,
        "energy_epsilon": 0.1,
        "demand_z": 3.0,
        "demand_window": 20,
        "refractory_steps": 100,
        "refractory_from_start": True,
        "kappa": 2.0,
        "eps": 0.05,
        "min_refractory": 25,
        "max_refractory": None,
        "prune_patience": 20,
        "grace_checks": None,
        "prune_max_loss_change": 0.01,
        "prune_fade_steps": 50,
        "homeostasis_checks": 20,
        "init": "function_preserving",
        "init_std": None,
    }

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        o = self.options
        for key, allowed in (
            ("gate", tuple(GATES)),
            ("estimator", ("exact", "online")),
            ("threshold_mode", ("calibrated", "relative")),
            ("init", INITS),
        ):
            if o[key] not in allowed:
                raise ConfigError(
                    f"incrt {key} must be one of {', '.join(allowed)}, got {o[key]!r}"
                )
        for key in (
            "initial_heads",
            "max_heads",
            "check_every",
            "calibration_batches",
            "prune_fade_steps",
        ):
            if not isinstance(o[key], int) or o[key] < 1:
                raise ConfigError(f"incrt {key} must be a positive integer, got {o[key]!r}")
        r = o["refractory_steps"]
        if r is not None and not _is_count(r):
            raise ConfigError(
                f"incrt refractory_steps must be an integer >= 0 or null (the reference "
                f"formula), got {r!r}"
            )
        grace = o["grace_checks"]
        if grace is not None and not _is_count(grace):
            raise ConfigError(
                f"incrt grace_checks must be an integer >= 0 or null (20 checks; 200 with "
                f"the demand gate), got {grace!r}"
            )
        if not isinstance(o["demand_window"], int) or o["demand_window"] < 2:
            raise ConfigError(
                f"incrt demand_window must be an integer >= 2, got {o['demand_window']!r}"
            )
        z = o["demand_z"]
        if isinstance(z, bool) or not isinstance(z, int | float) or z < 0:
            raise ConfigError(f"incrt demand_z must be a number >= 0, got {z!r}")
        lr = o["online_lr"]
        if lr is not None and (
            isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr <= 0.5
        ):
            raise ConfigError(
                f"incrt online_lr must be a number in (0, 0.5] or null (reference "
                f"1/(10 d)), got {lr!r}"
            )
        if o["initial_heads"] > o["max_heads"]:
            raise ConfigError("incrt initial_heads exceeds max_heads")
        # The frozen gate assumes the reference code's scale; the others measure trained
        # forms against small (N(0, 0.02^2)) initial ones, for the first head and every new one.
        reference = o["gate"] == "frozen"
        self.attn_init = "reference" if reference else "gpt2"
        self.init_std = o["init_std"] if o["init_std"] is not None or reference else 0.02
        self.gate_kind = GATES[o["gate"]]
        grace = o["grace_checks"]
        self.grace = grace if grace is not None else self.gate_kind.grace_checks
        self.calibration_batches = o["calibration_batches"]
        self.heldout_batches = o["heldout_batches"]
        self.gates: list[LayerGate] = []
        self.checks = 0
        self.last_change_check = 0
        self.converged_step: int | None = None
        self.forecast: dict[str, Any] | None = None
        self.null_heads: list[list[int]] = []
        self._log: list[dict[str, Any]] = []
        # Layers that lost a head this step, after their statistics were taken.
        self._removed: set[int] = set()
        self._trackers: list[theory.OnlineSpectrum] = []
        self.dim = 0

    def initial_arch(self, arch: Architecture) -> Architecture:
        n = self.options["initial_heads"]
        return replace(arch, layers=tuple(replace(layer, heads=n) for layer in arch.layers))

    def calibrate(self, batches: list[list[LayerStats]]) -> None:
        self.gates, self.null_heads = [], []
        for layer in range(len(batches[0])):
            operators = [theory.directional_operator(b[layer].cov, b[layer].forms) for b in batches]
            heads = batches[0][layer].forms.shape[0]
            gate = LayerGate()
            for _ in range(heads):
                gate.add(0)
            if self.options["refractory_from_start"]:
                # Count the initial heads as grown at step 0, so the first growth waits too.
                gate.last_growth_step = 0
            self._set_thresholds(
                gate, statistics.median(torch.linalg.matrix_norm(a).item() for a in operators)
            )
            self.gates.append(gate)
            self.null_heads.append(list(self._interval(gate, operators[0])))
        self.dim = batches[0][0].cov.shape[0]
        self._init_trackers()

    def _set_thresholds(self, gate: LayerGate, gamma: float) -> None:
        o = self.options
        gate.gamma = gamma
        gate.theta_w = o["growth_ratio"] * gamma
        gate.phi_w = o["minor_ratio"] * gate.theta_w
        gate.phi_g = o["prune_ratio"] * gate.theta_w

    def _interval(self, gate: LayerGate, a: torch.Tensor) -> tuple[int, int]:
        """The gate's certified interval for ``a``, in relative mode at ``a``'s own scale."""
        t = gate.thresholds(self.options)
        if self.options["threshold_mode"] == "relative":
            probe = LayerGate()
            self._set_thresholds(probe, torch.linalg.matrix_norm(a).item())
            t = probe.thresholds(self.options)
        return interval(self.options["gate"], a, t)

    def new_tracker(self, dim: int, generator: torch.Generator) -> theory.OnlineSpectrum:
        """An online eigen-tracker with this policy's step size and iterations per check."""
        o = self.options
        return theory.OnlineSpectrum(
            dim, lr=o["online_lr"], iters=o["online_iters"], generator=generator
        )

    def _init_trackers(self) -> None:
        g = torch.Generator().manual_seed(0)
        self._trackers = [self.new_tracker(self.dim, g) for _ in self.gates]
        for gate, tracker in zip(self.gates, self._trackers, strict=True):
            if gate.tracker is not None:
                tracker.load_state_dict(gate.tracker)

    def wants_stats(self, step: int) -> bool:
        return step % self.options["check_every"] == 0

    def needs(self, step: int) -> frozenset[str]:
        if not self.wants_stats(step):
            return frozenset()
        needs = {MOMENTS}
        if any(g.measure for g in self.gates):
            needs.add(CONTRIBUTION)
        if self.gate_kind.reads_demand:
            needs.add(DEMAND)
        return frozenset(needs)

    def decide_from(self, step: int, stats: dict[str, Any]) -> Iterator[list[Event]]:
        if self.wants_stats(step) and MOMENTS in stats:
            yield self.decide(step, stats[MOMENTS], stats.get(CONTRIBUTION), stats.get(DEMAND))
        else:
            yield []
        # Statistics of later steps are taken after this step's removals.
        self._removed.clear()

    def decide(
        self,
        step: int,
        stats: list[LayerStats] | None,
        contributions: list[torch.Tensor] | None = None,
        demands: list[Demand | None] | None = None,
    ) -> list[Event]:
        """Events at ``step`` from the layers' moments and, when measured, each head's
        relative loss change on the step's batch if it were removed (per layer, (heads,))
        and the layers' demands (demand gate)."""
        if stats is None:
            return []
        if not self.gates:
            raise ConfigError("the incrt policy was not calibrated before training")
        self.checks += 1
        forecasting = self.forecast is None and self._deciding(step)
        events = []
        for layer, (gate, st) in enumerate(zip(self.gates, stats, strict=True)):
            if layer in self._removed:
                continue  # the statistics describe the heads before this step's removal
            measured = None if contributions is None else contributions[layer].tolist()
            need = None if demands is None else demands[layer]
            event = self._check_layer(step, layer, gate, st, measured, need)
            if event is not None:
                events.append(event)
        if forecasting:
            self.forecast = {
                "step": step,
                "heads": [
                    self._interval(g, theory.directional_operator(st.cov, st.forms))[0]
                    for g, st in zip(self.gates, stats, strict=True)
                ],
            }
            self._log.append(
                {"kind": "incrt.forecast", "step": step, "forecast_heads": self.forecast["heads"]}
            )
        if events:
            self.last_change_check = self.checks
            if self.converged_step is not None:
                # The certificate is lost: it will name the step the structure settled again.
                self.converged_step = None
                self._log.append({"kind": "incrt.certificate", "step": step, "certified": False})
        certified = all(g.sufficient and g.minimal and g.fading is None for g in self.gates)
        quiet = self.checks - self.last_change_check >= self.options["homeostasis_checks"]
        if self.converged_step is None and certified and quiet:
            self.converged_step = step
            self._log.append({"kind": "incrt.certificate", "step": step, "certified": True})
        return events

    def _deciding(self, step: int) -> bool:
        """Whether growth may happen at ``step`` in some layer (the first decision point)."""
        return any(step - g.last_growth_step >= self._refractory(math.inf) for g in self.gates)

    def _refractory(self, gap: float) -> float:
        o = self.options
        if o["refractory_steps"] is not None:
            return o["refractory_steps"]
        # The reference: growth waits until the dominant uncaptured direction stands out
        # clearly enough (the spectral gap) for a tracker to find it.
        t_d = theory.refractory_steps(gap, self.dim, kappa=o["kappa"], eps=o["eps"])
        t_d = max(t_d, o["min_refractory"])
        return t_d if o["max_refractory"] is None else min(t_d, o["max_refractory"])

    def _check_layer(
        self,
        step: int,
        layer: int,
        gate: LayerGate,
        st: LayerStats,
        measured: list[float] | None,
        need: Demand | None,
    ) -> Event | None:
        o = self.options
        heads = st.forms.shape[0]
        if len(gate.directions) != heads:
            raise ConfigError(
                f"incrt: layer {layer} has {heads} heads but the policy tracks "
                f"{len(gate.directions)} (was the structure changed by something else?)"
            )
        a = theory.directional_operator(st.cov, st.forms)
        if o["threshold_mode"] == "relative":
            self._set_thresholds(gate, torch.linalg.matrix_norm(a).item())
        captured = [torch.tensor(d, dtype=torch.float64) for d in gate.directions if d is not None]
        q = torch.stack(captured, 1) if captured else None
        energies = theory.head_energies(st.cov, st.forms).tolist()
        reading = self.gate_kind.read(
            LayerView(
                a,
                energies,
                gate.thresholds(o),
                q,
                lambda a_res, q, layer=layer: self._spectrum(layer, gate, a_res, q),
                self._window(gate, need),
            )
        )
        gate.low_checks = [
            n + 1 if weak and not needed else 0
            for n, weak, needed in zip(gate.low_checks, reading.weak, gate.needed, strict=True)
        ]
        gate.sufficient = reading.sufficient
        gate.judge_minimal(reading.weak, o["min_heads"])
        t_d = self._refractory(reading.gap)
        self._log.append(
            {
                "kind": "incrt.gate",
                "step": step,
                "layer": layer,
                "heads": heads,
                # JSON has no infinity: None where nothing is left or nothing captured.
                "residual": reading.residual if math.isfinite(reading.residual) else None,
                "grow_at": reading.grow_at,
                "weakest": reading.weakest if math.isfinite(reading.weakest) else None,
                "keep_at": reading.keep_at,
                "theta_w": gate.theta_w,
                "phi_w": gate.phi_w,
                "phi_g": gate.phi_g,
                "energies": energies,
                "gap": reading.gap,
                # JSON has no infinity: -1 marks a refractory time without end (zero gap).
                "refractory": t_d if math.isfinite(t_d) else -1,
                **reading.values,
            }
        )
        if gate.fading is not None:
            return None  # one change at a time: wait for the fade to end
        if (
            not reading.sufficient
            and reading.may_grow
            and step - gate.last_growth_step >= t_d
            and heads < o["max_heads"]
            and not (self.gate_kind.reads_demand and gate.on_probation(self.checks, self.grace))
        ):
            gate.add(self.checks, reading.direction)  # only the frozen gate gives one
            # The other heads' contributions change with a new head: measure them anew.
            gate.needed = [False] * len(gate.needed)
            gate.last_growth_step = step
            return Event(
                op="add_head",
                layer=layer,
                init=o["init"],
                init_std=self.init_std,
                query=reading.form[0] if reading.form else None,
                key=reading.form[1] if reading.form else None,
                reason=f"residual {reading.residual:.4g} > {reading.grow_at:.4g}",
            )
        return self._prune(step, layer, gate, reading.weak, energies, measured)

    def _window(self, gate: LayerGate, need: Demand | None) -> DemandWindow | None:
        """Add this check's unmet demand to the layer's evidence; the evidence of the last
        ``demand_window`` checks since the layer's last change."""
        if need is None:
            return None
        size = self.options["demand_window"]
        gate.unmet = [*gate.unmet, need.normal.sum().item()][-size:]
        if len(gate.unmet) == size:
            gate.peak_unmet = max(gate.peak_unmet, statistics.fmean(gate.unmet))
        form = (need.query.tolist(), (-need.key).tolist())  # the loss falls along -G
        return DemandWindow(gate.unmet, form, size, gate.peak_unmet)

    def _spectrum(
        self, layer: int, gate: LayerGate, a_res: torch.Tensor, q: torch.Tensor | None
    ) -> theory.Spectrum:
        if self.options["estimator"] == "exact":
            return theory.exact_spectrum(a_res)
        spectrum = self._trackers[layer].update(a_res, q)
        gate.tracker = self._trackers[layer].state_dict()
        return spectrum

    def _prune(
        self,
        step: int,
        layer: int,
        gate: LayerGate,
        weak: list[bool],
        energies: list[float],
        measured: list[float] | None,
    ) -> Event | None:
        """Fade out the head whose removal costs least, once the layer had a head too many
        for ``prune_patience`` checks and that cost is measured small enough."""
        o = self.options
        heads = len(weak)
        due = [h for h in range(heads) if gate.low_checks[h] >= o["prune_patience"]]
        if not due or heads <= o["min_heads"]:
            gate.measure = False
            return None
        if measured is None:
            gate.measure = True  # the next check measures the heads' contributions
            return None
        gate.measure = False
        for h in due:
            if measured[h] > o["prune_max_loss_change"]:
                gate.needed[h] = True
                self._log.append(
                    {
                        "kind": "incrt.kept_head",
                        "step": step,
                        "kept_head": h,
                        "layer": layer,
                        "loss_change": measured[h],
                        "energy": energies[h],
                    }
                )
        young = [h for h in due if self.checks - gate.born_check[h] < self.grace]
        for h in young:
            gate.low_checks[h] = 0  # measured again after another patience
        gate.judge_minimal(weak, o["min_heads"])
        prunable = [h for h in due if not gate.needed[h] and h not in young]
        if not prunable:
            return None
        h = min(prunable, key=lambda i: (measured[i], energies[i]))
        change = measured[h]
        gate.fading = h
        return Event(
            op="fade_head",
            layer=layer,
            head=h,
            fade="linear",
            fade_steps=o["prune_fade_steps"],
            loss_change=change,
            reason=f"weak for {o['prune_patience']} checks; without it the loss changes by "
            f"{change:+.3%} (<= {o['prune_max_loss_change']:.1%})",
        )

    def observe(self, records: list[Event]) -> None:
        # Removals arrive when a fade ends (or from another policy): follow the structure.
        for record in records:
            if record.op == "remove_head" and self.gates:
                self._removed.add(record.layer)
                gate = self.gates[record.layer]
                gate.drop(record.head)
                if gate.fading == record.head:
                    gate.fading = None
                elif gate.fading is not None and gate.fading > record.head:
                    gate.fading -= 1

    def refused(self, requests: list[Event]) -> None:
        # Forget the direction a refused head was to capture; last_growth_step stays, so
        # the layer asks again only after its refractory time.
        for request in requests:
            gate = self.gates[request.layer]
            if request.op == "add_head":
                gate.drop(len(gate.directions) - 1)
            elif request.op == "fade_head":
                gate.fading = None

    def drain_log(self) -> list[dict[str, Any]]:
        log, self._log = self._log, []
        return log

    def report(self, heldout: list[LayerStats] | None) -> dict[str, Any]:
        certified, kstar = [], []
        for gate, st in zip(self.gates, heldout or [], strict=False):
            a = theory.directional_operator(st.cov, st.forms)
            certified.append(list(self._interval(gate, a)))
            gamma0 = torch.linalg.matrix_norm(a).item()
            kstar.append(theory.kstar(self.options["kappa"], gamma0, gate.theta_w))
        return {
            "converged_step": self.converged_step,
            "forecast_heads": None if self.forecast is None else self.forecast["heads"],
            "forecast_step": None if self.forecast is None else self.forecast["step"],
            "certified_interval": certified,
            "null_interval": self.null_heads,
            "kstar_heads": kstar,
            "thresholds": [
                {"gamma_res": g.gamma, "theta_w": g.theta_w, "phi_w": g.phi_w, "phi_g": g.phi_g}
                for g in self.gates
            ],
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "gates": [asdict(g) for g in self.gates],
            "checks": self.checks,
            "last_change_check": self.last_change_check,
            "converged_step": self.converged_step,
            "forecast": self.forecast,
            "null_heads": self.null_heads,
            "dim": self.dim,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gates = [LayerGate(**g) for g in state["gates"]]
        self.checks = state["checks"]
        self.last_change_check = state["last_change_check"]
        self.converged_step = state["converged_step"]
        self.forecast = state["forecast"]
        self.null_heads = state["null_heads"]
        self.dim = state["dim"]
        self._init_trackers()


def _is_count(value: Any) -> bool:
    """Whether ``value`` is an integer >= 0 (a bool is not)."""
    return is_int(value) and value >= 0


def _gate_scalars(record: dict[str, Any]) -> dict[str, float]:
    """TensorBoard's view of one gate reading: the certificate's quantities, weakest energy."""
    layer = record["layer"]
    scalars = {
        f"incrt/{key}/layer_{layer}": record[key]
        for key in ("residual", "grow_at", "weakest", "keep_at")
        if record[key] is not None
    }
    if record["energies"]:
        scalars[f"incrt/min_energy/layer_{layer}"] = min(record["energies"])
    return scalars


register_record_kind("incrt.gate", scalars=_gate_scalars, legacy_keys=frozenset({"residual"}))
register_record_kind("incrt.kept_head", legacy_keys=frozenset({"kept_head"}))
register_record_kind("incrt.forecast", legacy_keys=frozenset({"forecast_heads"}))
register_record_kind("incrt.certificate", legacy_keys=frozenset({"certified"}))
