"""A forward-pass counter (re-exported as ``captum_global.metrics.ForwardCounter``).

The metrics' chunked scoring itself is the package-wide loop of
``captum_global._scoring``.
"""
from typing import Any, Callable

from torch import Tensor

__all__ = ["ForwardCounter"]


class ForwardCounter:
    r"""Wrap a forward function and count the examples that pass through it.

    A model "evaluation" is one example through the model, so a batch of 8
    counts 8. Used by the benchmark to report evaluations per image, and by
    the tests to check the documented cost of each metric.

    The metrics see through the counter: they put the wrapped module in
    eval mode for the evaluation and restore it afterwards, as they do for
    the bare module.

    Args:
        forward_func (Callable): the model or function to wrap.

    Attributes:
        n_examples (int): examples forwarded since creation or ``reset()``.
        n_calls (int): calls (batches) since creation or ``reset()``.

    Examples::

        >>> import torch
        >>> from captum_global.metrics import ForwardCounter
        >>> counted = ForwardCounter(torch.nn.Linear(3, 2))
        >>> _ = counted(torch.zeros(5, 3)); _ = counted(torch.zeros(2, 3))
        >>> counted.n_examples, counted.n_calls
        (7, 2)
    """

    def __init__(self, forward_func: Callable) -> None:
        self.forward_func = forward_func
        self.reset()

    def reset(self) -> None:
        self.n_examples = 0
        self.n_calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        first = args[0] if args else next(iter(kwargs.values()), None)
        if isinstance(first, tuple):
            first = first[0]
        if isinstance(first, Tensor) and first.dim() > 0:
            self.n_examples += int(first.shape[0])
        self.n_calls += 1
        return self.forward_func(*args, **kwargs)
