"""SGT: loop a few high-entropy heads in a few layers, added deep to shallow while training.

Statistics: per layer and head, the normalised attention entropy of one query row per
sequence (``query: "all"`` averages every real row), averaged over the batch, then an
exponential moving average over optimizer steps (``ema_decay`` 0.5); a layer's score is
the mean over its heads, and layer 0 is never looped. The statistics are taken only in
the ``stat_steps`` (8) steps before each decision: at decay 0.5 the average keeps 0.4% of
anything older, so the decisions are the same while the statistics cost 30x less
(``stat_steps: null`` takes them at every step, as the reference does). None are taken
once the structure is frozen.

Schedule: at step ``warmup`` and then every ``window`` steps, rank the layers by score and
take the top ``top_layers``. In order of selection, the first selected layer still in the
top whose loop depth is below ``max_loops`` gets one more loop; otherwise, if fewer than
``top_layers`` layers are selected, the deepest top layer shallower than every selected
one is selected (``order: "shallow_to_deep"``: the shallowest deeper than every selected
one); otherwise, and also when no top layer qualifies, the structure freezes.

A selected layer loops once over its ``kept_heads`` heads of highest entropy (``heads``:
``"low_entropy"`` or ``"all"`` for the ablations), chosen once; its loop starts with
every head at weight 1 and the other heads fade out over one window (``fade``). Deeper
loops reuse the same heads. The presets ``all_head_loop`` and ``low_entropy_loop`` are
this policy with another ``heads`` default; ``block_loop`` is the static block-looping
baseline (the published comparison: re-running a few high-entropy heads in a few deep
layers costs ~1-3% extra training FLOPs, looping whole blocks ~16-20%).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from growformer.arch import FADES, Architecture
from growformer.errors import ConfigError
from growformer.events import Event
from growformer.policies.base import Policy
from growformer.policies.records import register_record_kind
from growformer.statistics import ENTROPY, ENTROPY_ALL
from growformer.validation import is_int

HEAD_CHOICES = ("high_entropy", "low_entropy", "all")
ORDERS = ("deep_to_shallow", "shallow_to_deep")
QUERIES = {"single": ENTROPY, "all": ENTROPY_ALL}


class SgtPolicy(Policy):
    """The SGT schedule (see the module docstring)."""

    name = "sgt"
    defaults: ClassVar[dict[str, Any]] = {
        "warmup": 250,
        "window": 250,
        "top_layers": 3,
        "kept_heads": 2,
        "max_loops": 1,
        "ema_decay": 0.5,
        "fade": "linear",
        "query": "single",
        "order": "deep_to_shallow",
        "heads": "high_entropy",
        "stat_steps": 8,
    }

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        o = self.options
        for key in ("warmup", "window", "top_layers", "kept_heads", "max_loops"):
            if isinstance(o[key], bool) or not isinstance(o[key], int) or o[key] < 1:
                raise ConfigError(f"{self.name} {key} must be a positive integer, got {o[key]!r}")
        n = o["stat_steps"]
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ConfigError(
                f"{self.name} stat_steps must be a positive integer or null, got {n!r}"
            )
        decay = o["ema_decay"]
        if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0 <= decay < 1:
            raise ConfigError(f"{self.name} ema_decay must be in [0, 1), got {decay!r}")
        for key, allowed in (
            ("fade", (*FADES, "none")),
            ("query", tuple(QUERIES)),
            ("order", ORDERS),
            ("heads", HEAD_CHOICES),
        ):
            if o[key] not in allowed:
                raise ConfigError(
                    f"{self.name} {key} must be one of {', '.join(allowed)}, got {o[key]!r}"
                )
        self.statistic = QUERIES[o["query"]]
        # Running entropies per layer: (heads,) float64 tensors on the statistics' device,
        # so that the per-step update needs no host synchronisation.
        self.ema: list[Tensor | None] = []
        # Head count per layer as last seen: statistics of another count were taken before
        # a head change applied at this step.
        self.heads: list[int] = []
        # Selected layers in order of selection, with their loop depth and looped heads.
        self.selected: list[int] = []
        self.loops: list[int] = []
        self.kept: list[list[int]] = []
        self.frozen_step: int | None = None
        self._log: list[dict[str, Any]] = []

    def wants_stats(self, step: int) -> bool:
        if self.frozen_step is not None:
            return False
        o = self.options
        if o["stat_steps"] is None:
            return True
        behind = max(0, step - o["warmup"])
        next_decision = o["warmup"] + -(-behind // o["window"]) * o["window"]
        return next_decision - step < o["stat_steps"]

    def decide(self, step: int, stats: list[Tensor] | None) -> list[Event]:
        if self.frozen_step is not None:
            return []
        if stats is not None:
            self._update(stats)
        o = self.options
        if step < o["warmup"] or (step - o["warmup"]) % o["window"]:
            return []
        if not self.ema:
            raise ConfigError(f"{self.name}: no statistics before the first decision")
        return self._decide_structure(step)

    def _update(self, stats: list[Tensor]) -> None:
        if not self.ema:
            self.ema = [None] * len(stats)
            self.heads = [x.shape[0] for x in stats]
        decay = self.options["ema_decay"]
        for i, x in enumerate(stats):
            if x.shape[0] != self.heads[i]:
                continue  # entropies of heads that moved since (see observe)
            x = x.detach().to(torch.float64)
            prev = self.ema[i]
            self.ema[i] = x if prev is None else prev.to(x.device) * decay + x * (1 - decay)

    def _decide_structure(self, step: int) -> list[Event]:
        o = self.options
        # The one host synchronisation: once a window.
        entropies = [[] if e is None else e.tolist() for e in self.ema]
        scores = [sum(e) / len(e) if layer > 0 and e else None for layer, e in enumerate(entropies)]
        ranked = sorted(  # ties go to the deeper layer
            (layer for layer, s in enumerate(scores) if s is not None),
            key=lambda layer: (-scores[layer], -layer),
        )
        top = ranked[: o["top_layers"]]
        action, layer, event = "freeze", None, None
        deepen = [
            i
            for i, sel in enumerate(self.selected)
            if sel in top and self.loops[i] < o["max_loops"]
        ]
        candidate = self._next_layer(top)
        if deepen:
            i = deepen[0]
            self.loops[i] += 1
            action, layer = "deepen", self.selected[i]
            event = Event(
                op="set_loops",
                layer=layer,
                loops=self.loops[i],
                reason=f"sgt: deepen, rank {top.index(layer) + 1} score {scores[layer]:.6g}",
            )
        elif len(self.selected) < o["top_layers"] and candidate is not None:
            action, layer = "select", candidate
            event = self._select(candidate, entropies[candidate], scores[candidate], top)
        else:
            self.frozen_step = step
        self._log.append(
            {
                "kind": "sgt.decision",
                "step": step,
                "action": action,
                "layer": layer,
                "scores": scores,
                "entropies": entropies,
                "top": top,
                "selected": list(self.selected),
                "loops": list(self.loops),
                "kept_heads": [list(k) for k in self.kept],
            }
        )
        return [] if event is None else [event]

    def _next_layer(self, top: list[int]) -> int | None:
        if self.options["order"] == "deep_to_shallow":
            return max((c for c in top if all(c < s for s in self.selected)), default=None)
        return min((c for c in top if all(c > s for s in self.selected)), default=None)

    def _select(self, layer: int, entropies: list[float], score: float, top: list[int]) -> Event:
        o = self.options
        heads = len(entropies)
        if o["heads"] == "all":
            kept = list(range(heads))
        else:
            sign = -1 if o["heads"] == "high_entropy" else 1
            order = sorted(range(heads), key=lambda h: (sign * entropies[h], h))
            kept = sorted(order[: o["kept_heads"]])
        self.selected.append(layer)
        self.loops.append(1)
        self.kept.append(kept)
        # Looping every head leaves nothing to fade out.
        fade = None if o["fade"] == "none" or len(kept) == heads else o["fade"]
        return Event(
            op="set_loops",
            layer=layer,
            loops=1,
            looped_heads=tuple(kept),
            fade=fade,
            fade_steps=o["window"] if fade else None,
            reason=f"sgt: select, rank {top.index(layer) + 1} score {score:.6g}",
        )

    def observe(self, records: list[Event]) -> None:
        for r in records:
            if r.op not in ("add_head", "remove_head"):
                continue
            if r.layer < len(self.ema):
                # The layer's heads moved (another policy grew or pruned it): its running
                # entropies start again from the next statistics of its new heads.
                self.ema[r.layer] = None
                self.heads[r.layer] = r.heads_after
            if r.op == "remove_head" and r.layer in self.selected:
                i = self.selected.index(r.layer)
                self.kept[i] = [h - (h > r.head) for h in self.kept[i] if h != r.head]
                if not self.kept[i]:
                    # Surgery stopped the loop with its last head: selected, never deepened.
                    self.loops[i] = self.options["max_loops"]

    def drain_log(self) -> list[dict[str, Any]]:
        log, self._log = self._log, []
        return log

    def state_dict(self) -> dict[str, Any]:
        return {
            "ema": [None if e is None else e.tolist() for e in self.ema],
            "heads": list(self.heads),
            "selected": list(self.selected),
            "loops": list(self.loops),
            "kept": [list(k) for k in self.kept],
            "frozen_step": self.frozen_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema = [
            None if e is None else torch.tensor(e, dtype=torch.float64) for e in state["ema"]
        ]
        self.heads = list(state["heads"])
        self.selected = list(state["selected"])
        self.loops = list(state["loops"])
        self.kept = [list(k) for k in state["kept"]]
        self.frozen_step = state["frozen_step"]


class AllHeadLoopPolicy(SgtPolicy):
    """SGT's schedule looping every head of the selected layers (ablation)."""

    name = "all_head_loop"
    defaults: ClassVar[dict[str, Any]] = {**SgtPolicy.defaults, "heads": "all"}


class LowEntropyLoopPolicy(SgtPolicy):
    """SGT's schedule looping the lowest-entropy heads (ablation)."""

    name = "low_entropy_loop"
    defaults: ClassVar[dict[str, Any]] = {**SgtPolicy.defaults, "heads": "low_entropy"}


class BlockLoopPolicy(Policy):
    """Static block looping (baseline): the chosen layers run whole ``loops`` extra times,
    attention over every head and feed-forward, from step 0.

    Options: ``layers`` (indices; default: the deepest 3) and ``loops`` (default 1).
    """

    name = "block_loop"
    defaults: ClassVar[dict[str, Any]] = {"layers": None, "loops": 1}

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        loops, layers = self.options["loops"], self.options["layers"]
        if not is_int(loops) or loops < 1:
            raise ConfigError(f"block_loop loops must be a positive integer, got {loops!r}")
        if layers is not None and (
            not isinstance(layers, list) or not all(is_int(i) for i in layers)
        ):
            raise ConfigError(f"block_loop layers must be a list of layer indices, got {layers!r}")

    def initial_arch(self, arch: Architecture) -> Architecture:
        n = arch.n_layers
        chosen = self.options["layers"]
        if chosen is None:
            chosen = list(range(max(0, n - 3), n))
        bad = [i for i in chosen if not 0 <= i < n]
        if bad:
            raise ConfigError(f"block_loop layers {bad} are out of range (model has {n} layers)")
        loops = self.options["loops"]
        return replace(
            arch,
            layers=tuple(
                replace(layer, block_loops=loops) if i in chosen else layer
                for i, layer in enumerate(arch.layers)
            ),
        )

    def decide(self, step: int, stats: list[Tensor] | None) -> list[Event]:
        return []


def _decision_scalars(record: dict[str, Any]) -> dict[str, float]:
    """TensorBoard's view of one SGT decision: every layer's score and head entropies."""
    scalars = {
        f"sgt/score/layer_{layer}": score
        for layer, score in enumerate(record["scores"])
        if score is not None
    }
    for layer, entropies in enumerate(record["entropies"]):
        for h, value in enumerate(entropies):
            scalars[f"sgt/entropy/layer_{layer}/head_{h}"] = value
    return scalars


register_record_kind("sgt.decision", scalars=_decision_scalars, legacy_keys=frozenset({"scores"}))
