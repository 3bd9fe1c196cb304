"""The few Captum private helpers this package relies on, wrapped once.

Captum's public API covers the attribution classes; the input-formatting
helpers that every Captum method uses internally are private. We need them
to behave exactly like Captum (tensor in/tensor out, tuple in/tuple out,
target selection rules), so we call them through this module only: a Captum
upgrade that renames one touches this file and nothing else.
"""
from typing import Any, Callable, Optional, Tuple, Union

from torch import Tensor

from captum._utils import common as _common
from captum._utils.typing import BaselineType, TargetType, TensorOrTupleOfTensorsGeneric

__all__ = [
    "BaselineType",
    "TargetType",
    "TensorOrTupleOfTensorsGeneric",
    "is_tuple",
    "format_inputs",
    "format_output",
    "format_baselines",
    "format_additional_forward_args",
    "expand_target",
    "expand_additional_forward_args",
    "run_forward",
    "select_targets",
    "validate_target",
]


def is_tuple(inputs: Union[Tensor, Tuple[Tensor, ...]]) -> bool:
    """True when the caller passed a tuple of tensors (so we answer with one)."""
    return _common._is_tuple(inputs)


def format_inputs(inputs: Union[Tensor, Tuple[Tensor, ...]]) -> Tuple[Tensor, ...]:
    """A tensor or tuple of tensors, as a tuple."""
    return _common._format_tensor_into_tuples(inputs)


def format_output(was_tuple: bool, output: Tuple[Tensor, ...]) -> Union[Tensor, Tuple[Tensor, ...]]:
    """Undo ``format_inputs``: a tuple back to a lone tensor unless a tuple came in."""
    return _common._format_output(was_tuple, output)


def format_baselines(baselines: BaselineType, inputs: Tuple[Tensor, ...]) -> Tuple[Union[Tensor, int, float], ...]:
    """Captum's baseline rules: None means zeros, scalars broadcast, one per input."""
    return _common._format_baseline(baselines, inputs)


def format_additional_forward_args(args: Optional[object]) -> Optional[Tuple[Any, ...]]:
    return _common._format_additional_forward_args(args)


def expand_target(target: TargetType, n_repeats: int) -> TargetType:
    """Repeat per-example targets as ``x.repeat(n, ...)`` repeats examples."""
    return _common._expand_target(target, n_repeats)


def expand_additional_forward_args(args: Optional[Tuple], n_repeats: int) -> Optional[Tuple]:
    return _common._expand_additional_forward_args(args, n_repeats)


def run_forward(
    forward_func: Callable,
    inputs: Any,
    target: TargetType = None,
    additional_forward_args: Optional[object] = None,
) -> Tensor:
    """Forward pass, then Captum's target selection (one score per example)."""
    return _common._run_forward(forward_func, inputs, target, additional_forward_args)


def select_targets(output: Tensor, target: TargetType) -> Tensor:
    return _common._select_targets(output, target)


def validate_target(num_examples: int, target: TargetType) -> None:
    """Captum's own check that a list/tensor target has one entry per example."""
    _common._validate_target(num_examples, target)
