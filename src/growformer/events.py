"""Structural events: the one message between the policies that ask for a change and the
surgery that makes it (a request), and the record of what was done (in ``events.jsonl``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

OPS = ("add_head", "remove_head", "fade_head", "set_loops", "end_fade")
INITS = ("random", "function_preserving")


@dataclass
class Event:
    """A structural change: emitted by a policy as a request, returned by surgery as a record.

    Args:
        op: ``"add_head"``, ``"remove_head"``, ``"fade_head"`` (fade a head out, then
            remove it), ``"set_loops"`` or ``"end_fade"``.
        layer: Layer index.
        head: Head removed or fading out, or index of the head added (filled in by surgery).
        init: Initialisation of an added head, ``"random"`` or ``"function_preserving"``.
        init_std: Standard deviation of an added head's weights (None: the INCRT reference
            scale, see :func:`growformer.surgery.add_head`).
        query: add_head: the direction of the new head's first query row (None: random).
        key: add_head: the direction of its first key row (with ``query``).
        loops: New loop depth (set_loops).
        looped_heads: Heads the loops re-run (set_loops; None keeps the layer's).
        fade: Soft start of set_loops: shape of the fall of the other heads' loop weight
            from 1 to 0 (see :data:`growformer.arch.FADES`); None: the looped heads alone
            from now on (a fade already running goes on). fade_head: shape of the fall of
            the head's output weight.
        fade_steps: Length of that fall in optimizer steps.
        step: Optimizer steps taken when the change happened (filled in by the trainer).
        reason: Why the policy asked for it.
        heads_after: Head count of the layer after the change (filled in by surgery).
        params_after: Model parameter count after the change (filled in by surgery).
        loss_before: Loss on the current batch just before the change (filled in by the trainer).
        loss_after: The same loss just after the change (filled in by the trainer).
        loss_change: fade_head: the relative change of the loss on the deciding step's
            batch with the head switched off, as measured by the policy.
    """

    op: str
    layer: int
    head: int | None = None
    init: str | None = None
    init_std: float | None = None
    query: list[float] | None = None
    key: list[float] | None = None
    loops: int | None = None
    looped_heads: tuple[int, ...] | None = None
    fade: str | None = None
    fade_steps: int | None = None
    step: int | None = None
    reason: str | None = None
    heads_after: int | None = None
    params_after: int | None = None
    loss_before: float | None = None
    loss_after: float | None = None
    loss_change: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict without the unset fields."""
        d = {k: v for k, v in asdict(self).items() if v is not None}
        if "looped_heads" in d:
            d["looped_heads"] = list(d["looped_heads"])
        return d
