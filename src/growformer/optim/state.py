"""How each supported optimizer's per-parameter state lies along its parameter, so that
surgery can cut the state with the parameter.

A state tensor either covers the parameter entry by entry (Adam's moments, SGD's momentum,
Lion's momentum) or is a factored statistic that averages over some of its dimensions
(Adafactor's row and column second moments). Cutting a parameter along one dimension cuts
every state tensor that extends along that dimension the same way (new entries start at
zero, as a fresh state would) and keeps a statistic averaged over that dimension as it is:
it stays the best estimate the optimizer has. Scalars (a step count) are kept.

The layouts are registered by optimizer class name (:func:`register_state_layout`), so a
new optimizer is one entry; an optimizer without one is refused before training starts
(:func:`check_supported`), never met with a size mismatch after the first structural change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from growformer.errors import ConfigError, SurgeryError


@dataclass(frozen=True)
class StateLayout:
    """How one state tensor lies along its parameter's dimensions.

    Args:
        reduced: Parameter dimensions the state averages over (negative: from the end).
        keepdim: Whether the reduced dimensions are kept as size 1 (torch's Adafactor) or
            dropped (transformers' Adafactor).
        min_ndim: The layout applies to parameters of at least this many dimensions (a
            factored state exists only for matrices).
    """

    reduced: tuple[int, ...] = ()
    keepdim: bool = True
    min_ndim: int = 0

    def axis(self, ndim: int, dim: int) -> int | None:
        """The state's axis that runs along the parameter's dimension ``dim``, or None when
        the state averages over it."""
        reduced = sorted(r % ndim for r in self.reduced)
        if dim in reduced:
            return None
        return dim if self.keepdim else dim - sum(r < dim for r in reduced)


FULL = StateLayout()
ROWS = StateLayout(reduced=(-1,), min_ndim=2)  # averaged over columns, one value per row
COLS = StateLayout(reduced=(-2,), min_ndim=2)  # averaged over rows, one value per column

STATE_LAYOUTS: dict[str, dict[str, StateLayout]] = {}


def register_state_layout(optimizer: str, layouts: dict[str, StateLayout]) -> None:
    """Register the layout of each tensor state key of the optimizer class ``optimizer``
    (its ``__name__``); scalar state needs none."""
    STATE_LAYOUTS[optimizer] = layouts


register_state_layout("AdamW", {"exp_avg": FULL, "exp_avg_sq": FULL, "max_exp_avg_sq": FULL})
register_state_layout("Adam", {"exp_avg": FULL, "exp_avg_sq": FULL, "max_exp_avg_sq": FULL})
register_state_layout("SGD", {"momentum_buffer": FULL})
# Two classes are named Adafactor, with different keys: torch.optim.Adafactor keeps row_var
# (rows, 1) and col_var (1, cols) for matrices and variance for vectors; transformers'
# keeps exp_avg_sq_row (rows,) and exp_avg_sq_col (cols,), exp_avg_sq for vectors, and
# exp_avg with beta1.
register_state_layout(
    "Adafactor",
    {
        "row_var": ROWS,
        "col_var": COLS,
        "variance": FULL,
        "exp_avg_sq_row": StateLayout(reduced=(-1,), keepdim=False, min_ndim=2),
        "exp_avg_sq_col": StateLayout(reduced=(-2,), keepdim=False, min_ndim=2),
        "exp_avg_sq": FULL,
        "exp_avg": FULL,
    },
)
register_state_layout("Lion", {"exp_avg": FULL})


def unwrap(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer inside wrappers that hold one as ``.optimizer`` (accelerate's, which
    the transformers Trainer uses)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def check_supported(optimizer: torch.optim.Optimizer) -> None:
    """Refuse an optimizer whose state surgery cannot carry, naming the supported ones."""
    name = type(unwrap(optimizer)).__name__
    if name not in STATE_LAYOUTS:
        raise ConfigError(
            f"optimizer {name} is not supported by structural changes (its state could not "
            f"follow a changed parameter); supported: {', '.join(sorted(STATE_LAYOUTS))}"
        )


def carry_state(
    optimizer: torch.optim.Optimizer,
    old: Tensor,
    new: Tensor,
    dim: int,
    cut: Callable[[Tensor, int], Tensor],
) -> None:
    """Put ``new`` in ``old``'s place in ``optimizer``, its state cut as the parameter was.

    Args:
        optimizer: The optimizer holding ``old``.
        old: The parameter before the change.
        new: The parameter after it.
        dim: The parameter dimension that was cut.
        cut: ``cut(t, axis)``: ``t`` cut along ``axis`` as the parameter was along ``dim``
            (kept slices, then zeros for new ones).

    Raises:
        SurgeryError: A state key the optimizer's layout does not know, or a state tensor
            not shaped as its layout says.
    """
    optimizer = unwrap(optimizer)
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if p is old:
                group["params"][i] = new
    state = optimizer.state.pop(old, None)
    if not state:
        return
    name = type(optimizer).__name__
    layouts = STATE_LAYOUTS.get(name, {})
    carried = {}
    for key, value in state.items():
        if not isinstance(value, Tensor) or value.dim() == 0:
            carried[key] = value
            continue
        layout = layouts.get(key)
        if layout is None or old.dim() < layout.min_ndim:
            raise SurgeryError(f"{name} state {key!r} has no known layout along its parameter")
        axis = layout.axis(old.dim(), dim)
        if axis is not None and value.shape[axis] != old.shape[dim]:
            raise SurgeryError(
                f"{name} state {key!r} of shape {tuple(value.shape)} does not run along "
                f"dimension {dim} of its parameter {tuple(old.shape)}"
            )
        carried[key] = value if axis is None else cut(value, axis)
    optimizer.state[new] = carried
