"""Argument checks shared by every method, metric, scan and command (private).

One rule, one place: each check accepts what a Captum user would pass
(Python numbers and NumPy scalars alike, never a bool where a number is
meant), refuses NaN and infinity unless the argument allows it, and raises
:class:`~captum_global.errors.InvalidArgumentError` (a ``ValueError`` and
an ``AssertionError``) or :class:`~captum_global.errors.InvalidArgumentTypeError`
(also a ``TypeError``) with a message that names the argument.
"""
import math
import numbers
from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from captum_global._compat import format_inputs
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError, NonFiniteOutputError

__all__ = [
    "check_int",
    "check_number",
    "check_choice",
    "check_bool",
    "check_value_range",
    "check_tensor",
    "check_finite",
    "check_module",
    "check_model_output",
    "check_model_weights",
    "check_finite_output",
]


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def check_int(value: Any, argument: str, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    """``value`` as a Python int (NumPy integers accepted, bools refused), within bounds."""
    if _is_bool(value) or not isinstance(value, (numbers.Integral, np.integer)):
        raise InvalidArgumentTypeError(f"{argument} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise InvalidArgumentError(f"{argument} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise InvalidArgumentError(f"{argument} must be <= {maximum}, got {value}")
    return value


def check_number(
    value: Any,
    argument: str,
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
    *,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
    allow_infinite: bool = False,
) -> float:
    """``value`` as a finite Python float within bounds.

    Ints, floats and NumPy scalars are accepted; bools, strings and tensors
    are not. NaN is always refused; infinity only passes with
    ``allow_infinite`` (and the bounds still apply).
    """
    if _is_bool(value) or not isinstance(value, (numbers.Real, np.integer, np.floating)):
        raise InvalidArgumentTypeError(f"{argument} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if math.isnan(value):
        raise InvalidArgumentError(f"{argument} must be a number, got NaN")
    if math.isinf(value) and not allow_infinite:
        raise InvalidArgumentError(f"{argument} must be finite, got {value}")
    if minimum is not None and (value < minimum or (not min_inclusive and value == minimum)):
        relation = ">=" if min_inclusive else ">"
        raise InvalidArgumentError(f"{argument} must be {relation} {minimum}, got {value}")
    if maximum is not None and (value > maximum or (not max_inclusive and value == maximum)):
        relation = "<=" if max_inclusive else "<"
        raise InvalidArgumentError(f"{argument} must be {relation} {maximum}, got {value}")
    return value


def check_choice(value: Any, argument: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of the string ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise InvalidArgumentError(f"{argument} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_bool(value: Any, argument: str) -> bool:
    """``value`` if it is a bool (NumPy bools accepted)."""
    if not _is_bool(value):
        raise InvalidArgumentTypeError(f"{argument} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def check_value_range(value: Any, argument: str = "value_range") -> Optional[Tuple[float, float]]:
    """``None`` or a pair ``(low, high)`` of finite numbers with ``low < high``."""
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise InvalidArgumentError(f"{argument} must be None or a pair (low, high), got {value!r}")
    low = check_number(value[0], f"{argument}[0]")
    high = check_number(value[1], f"{argument}[1]")
    if not low < high:
        raise InvalidArgumentError(f"{argument} must have low < high, got {value!r}")
    return low, high


def _check_has_values(value: Tensor, argument: str) -> None:
    if value.is_meta:
        raise InvalidArgumentError(f"{argument} is on the 'meta' device: it has a shape but no values")


def check_finite(value: Tensor, argument: str) -> Tensor:
    """``value`` if every element is finite (integer and bool tensors always are)."""
    _check_has_values(value, argument)
    if value.is_floating_point() or value.is_complex():
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            count = int(bad.sum())
            raise InvalidArgumentError(
                f"{argument} must be finite: it holds {count} NaN or infinite value(s) of {value.numel()}"
            )
    return value


def check_tensor(
    value: Any,
    argument: str,
    *,
    dims: Optional[Sequence[int]] = None,
    floating: bool = False,
    finite: bool = True,
    nonempty: bool = True,
) -> Tensor:
    """A tensor argument, checked, and usable with autograd.

    Tensors created under ``torch.inference_mode`` cannot take part in
    autograd; they are cloned (outside inference mode) instead of failing
    deep inside a backward pass. The caller's tensor is never changed.
    """
    if not isinstance(value, Tensor):
        raise InvalidArgumentTypeError(f"{argument} must be a torch.Tensor, got {type(value).__name__}")
    _check_has_values(value, argument)
    if dims is not None and value.dim() not in dims:
        expected = " or ".join(f"{d}-D" for d in dims)
        raise InvalidArgumentError(f"{argument} must be {expected}, got shape {tuple(value.shape)}")
    if nonempty and (value.dim() == 0 or value.shape[0] == 0 or value.numel() == 0):
        raise InvalidArgumentError(f"{argument} must hold at least one example, got shape {tuple(value.shape)}")
    if floating and not value.is_floating_point():
        raise InvalidArgumentTypeError(f"{argument} must be a floating point tensor, got dtype {value.dtype}")
    if finite:
        check_finite(value, argument)
    if value.is_inference():
        with torch.inference_mode(False):
            value = value.clone()
    return value


def check_inputs(
    inputs: Any, argument: str = "inputs", image_batch: bool = False, **tensor_options: Any
) -> Tuple[Tensor, ...]:
    """Captum's ``inputs`` (a tensor or a tuple of tensors) as a checked tuple.

    Each tensor goes through :func:`check_tensor` (named ``inputs`` or
    ``inputs[i]``) with ``tensor_options``; with ``image_batch`` each must be
    ``[N, C, H, W]``. Anything else than a tensor or a tuple is refused here,
    before Captum's formatter asserts on it without naming the argument.
    """
    if not isinstance(inputs, (Tensor, tuple)):
        raise InvalidArgumentTypeError(
            f"{argument} must be a tensor [N, C, H, W] or a tuple of them, got {type(inputs).__name__}"
        )
    formatted = format_inputs(inputs)
    if not formatted:
        raise InvalidArgumentError(f"{argument} is an empty tuple: give at least one tensor")
    checked = []
    for i, x in enumerate(formatted):
        name = argument if len(formatted) == 1 else f"{argument}[{i}]"
        x = check_tensor(x, name, **tensor_options)
        if image_batch and x.dim() != 4:
            raise InvalidArgumentError(f"{name} must be an image batch [N, C, H, W], got shape {tuple(x.shape)}")
        checked.append(x)
    return tuple(checked)


def check_module(value: Any, argument: str, why: str = "") -> nn.Module:
    """``value`` if it is an ``nn.Module``; ``why`` says what the module is needed for."""
    if not isinstance(value, nn.Module):
        reason = f" ({why})" if why else ""
        raise InvalidArgumentTypeError(f"{argument} must be an nn.Module{reason}, got {type(value).__name__}")
    return value


def check_model_output(output: Any, argument: str = "forward_func") -> Tensor:
    """The model's output if it is one tensor with a batch dimension.

    Models that return tuples, dicts or objects (a detection model, a
    HuggingFace output) need a small wrapper that returns the scores tensor.
    """
    if not isinstance(output, Tensor):
        raise InvalidArgumentTypeError(
            f"{argument} must return one tensor of scores [N, ...], got a {type(output).__name__}; "
            "wrap the model so that it returns the scores tensor"
        )
    if output.dim() == 0:
        raise InvalidArgumentError(f"{argument} must return scores with a batch dimension, got a scalar")
    return output


def check_finite_output(values: Tensor, what: str, where: str = "", examples: Optional[Tensor] = None) -> Tensor:
    """``values`` (model outputs or scores of one step) if finite, else :class:`NonFiniteOutputError`.

    Args:
        values: ``[B, ...]`` outputs of one model call.
        what: the method or metric, e.g. ``"SISE"``.
        where: the step, e.g. ``"masked inputs 64-95 of 320"``.
        examples: ``[B]`` the example each row belongs to, to name it.
    """
    if values.is_floating_point() or values.is_complex():
        bad = ~torch.isfinite(values.reshape(values.shape[0], -1) if values.dim() else values.reshape(1, 1))
        rows = bad.any(dim=1).nonzero().flatten()
        if rows.numel():
            who = rows if examples is None else examples.reshape(-1)[rows.to(examples.device)]
            shown = sorted(set(int(i) for i in who.tolist()))[:8]
            at = f" at {where}" if where else ""
            raise NonFiniteOutputError(
                f"{what}: the model returned NaN or infinity{at} for example(s) {shown}; "
                "refusing to return a map built on it"
            )
    return values


def check_model_weights(model: Any, argument: str = "forward_func", autograd: bool = False) -> None:
    """Raise a clear error for a module whose weights cannot be run (or differentiated through).

    A model built under ``torch.device("meta")`` (or loaded lazily) has
    shapes but no data: every forward pass fails deep inside a layer with a
    device mismatch. With ``autograd`` (methods that take gradients), weights
    created under ``torch.inference_mode()`` are refused too: autograd
    cannot save them for the backward pass. Callables that are not modules
    are not inspected.
    """
    if not isinstance(model, nn.Module):
        return
    for kind, tensors in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in tensors:
            if t.is_meta:
                raise InvalidArgumentError(
                    f"{argument} has its {kind} {name!r} on the 'meta' device (shapes only, no data), so it "
                    "cannot be run; materialise the weights first (e.g. model.to_empty(device='cpu') followed "
                    "by load_state_dict) and move the model to the inputs' device"
                )
            if autograd and t.is_inference():
                raise InvalidArgumentError(
                    f"{argument} has its {kind} {name!r} created under torch.inference_mode(): such tensors "
                    "cannot take part in the gradient this method needs; build or load the model outside "
                    "inference_mode (torch.no_grad() is fine)"
                )
