"""Keep a model exactly as the caller handed it to us.

Every attribution in this package runs forward and backward passes, may
attach hooks and may need gradients with respect to parameters or inputs.
Users expect to get their model back untouched: same ``training`` flags,
same ``requires_grad`` flags, no hooks left behind, even when an error is
raised half-way. This module owns that promise so that no method has to
re-implement it.
"""
import functools
from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Optional

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError

__all__ = ["preserved_model_state", "autograd_on", "module_of", "unwrap_parallel", "HookBag", "find_module"]


def module_of(forward_func: Any, depth: int = 0) -> Optional[nn.Module]:
    """The ``nn.Module`` behind a forward function: the module itself, a bound
    method of one, a ``functools.partial`` of one, or a wrapper that keeps it
    as ``forward_func`` (:class:`~captum_global.metrics.ForwardCounter`, Captum's
    attribution objects); None for a plain function."""
    if depth > 8:
        return None
    if isinstance(forward_func, nn.Module):
        return forward_func
    owner = getattr(forward_func, "__self__", None)
    if isinstance(owner, nn.Module):
        return owner
    if isinstance(forward_func, functools.partial):
        return module_of(forward_func.func, depth + 1)
    inner = getattr(forward_func, "forward_func", None)
    return None if inner is None else module_of(inner, depth + 1)


def unwrap_parallel(model: nn.Module) -> nn.Module:
    """The module an ``nn.DataParallel`` or ``DistributedDataParallel`` wrapper runs (any other module as is).

    Methods that call the model on weights of their own (``torch.func.functional_call``) need it: the
    stateless API refuses these wrappers, and the weights' names are those of the module inside.
    """
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


@contextmanager
def autograd_on() -> Iterator[None]:
    """Gradients on for the body, also under the caller's ``torch.no_grad()`` or
    ``torch.inference_mode()`` (Captum's wrappers call attributions under no_grad;
    users call them under inference_mode). Usable as a decorator."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


@contextmanager
def preserved_model_state(
    forward_func: Callable, eval_mode: bool = True, freeze_parameters: bool = False
) -> Iterator[None]:
    """Run the body with ``forward_func`` in eval mode, then restore its flags.

    ``forward_func`` may be any callable; the state protected is that of the
    module behind it (:func:`module_of`: Captum methods accept ``model.forward``,
    a ``functools.partial`` or a wrapper as well as the module); a plain
    function has none. With ``freeze_parameters`` the body runs with every
    parameter's ``requires_grad`` off (for methods that differentiate only
    with respect to their own inputs). Restores every submodule's
    ``training`` flag and every parameter's ``requires_grad`` flag on exit,
    error or not.
    """
    forward_func = module_of(forward_func)
    if forward_func is None:
        yield
        return
    modules = list(forward_func.modules())
    training = [m.training for m in modules]
    params = list(forward_func.parameters())
    requires_grad = [p.requires_grad for p in params]
    try:
        if eval_mode:
            forward_func.eval()
        if freeze_parameters:
            for p in params:
                p.requires_grad_(False)
        yield
    finally:
        for m, flag in zip(modules, training):
            m.training = flag
        for p, flag in zip(params, requires_grad):
            # only flags that changed: setting one, even unchanged, raises for weights made under inference_mode
            if p.requires_grad != flag:
                if p.is_inference():  # such a weight can be frozen anywhere, but unfrozen only in inference mode
                    with torch.inference_mode():
                        p.requires_grad_(flag)
                else:
                    p.requires_grad_(flag)


class HookBag:
    """Collects hook handles and removes all of them on ``close``.

    Used as a context manager so hooks never outlive one ``attribute`` call.
    """

    def __init__(self) -> None:
        self._handles: List[RemovableHandle] = []

    def add(self, handle: RemovableHandle) -> RemovableHandle:
        self._handles.append(handle)
        return handle

    def close(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> "HookBag":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def find_module(model: nn.Module, layer, argument: str = "layer") -> nn.Module:
    """Resolve ``layer`` (a module of ``model`` or its dotted name) to a module.

    Raises :class:`~captum_global.errors.InvalidArgumentError` (a
    ``ValueError``) naming ``argument`` when the layer is not part of the
    model, which is the mistake users make most when copying layer names
    between models, and :class:`~captum_global.errors.InvalidArgumentTypeError`
    (a ``TypeError``) for something that is neither a module nor a name.
    """
    if isinstance(layer, str):
        named = dict(model.named_modules())
        if layer not in named:
            raise InvalidArgumentError(
                f"{argument}={layer!r} is not a submodule name of the model; "
                f"expected one of names such as {list(named)[1:6]}"
            )
        return named[layer]
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise InvalidArgumentError(
                f"{argument} must be a submodule of the model being explained; "
                f"got a {type(layer).__name__} that the model does not contain"
            )
        return layer
    raise InvalidArgumentTypeError(
        f"{argument} must be an nn.Module or a dotted module name, got {type(layer).__name__}"
    )
