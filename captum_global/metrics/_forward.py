"""Batched scoring of many perturbed inputs, and a forward-pass counter (private).

The faithfulness metrics all evaluate the model on a long list of inputs
built on the fly from a few tensors (one per example and step). Building
them chunk by chunk keeps memory bounded by ``batch_size`` while every chunk
goes through the model in one call; results do not depend on the chunking.
"""
from typing import Any, Callable, Optional, Tuple

import torch
from torch import Tensor

from captum_global._compat import format_additional_forward_args

__all__ = ["ForwardCounter", "target_tensor", "batched_scores"]


class ForwardCounter:
    r"""Wrap a forward function and count the examples that pass through it.

    A model "evaluation" is one example through the model, so a batch of 8
    counts 8. Used by the benchmark to report evaluations per image, and by
    the tests to check the documented cost of each metric.

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


def target_tensor(target: Any, num_examples: int, device: torch.device) -> Optional[Tensor]:
    """Per-example long targets ``[N]`` from an int, a list or a tensor (or None)."""
    if target is None:
        return None
    if isinstance(target, bool):
        raise TypeError("target must be an int, a list of ints or a tensor, not a bool")
    if isinstance(target, int):
        return torch.full((num_examples,), target, dtype=torch.long, device=device)
    if isinstance(target, (list, tuple)):
        if not all(isinstance(t, int) for t in target):
            raise TypeError("target must be a list of ints (one class per example)")
        target = torch.tensor(target, dtype=torch.long)
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be an int, a list of ints or a tensor, got {type(target).__name__}")
    target = target.reshape(-1).long().to(device)
    if target.numel() == 1:
        target = target.expand(num_examples)
    if target.numel() != num_examples:
        raise ValueError(f"target must have one entry per example ({num_examples}), got {target.numel()}")
    return target


def _select(output: Tensor, targets: Optional[Tensor], score: str) -> Tensor:
    if score == "softmax":
        if output.dim() != 2:
            raise ValueError(f"score='softmax' needs [N, classes] model outputs, got {tuple(output.shape)}")
        output = output.softmax(dim=1)
    elif score != "raw":
        raise ValueError(f"score must be 'softmax' or 'raw', got {score!r}")
    if targets is None:
        if output.dim() == 1 or (output.dim() == 2 and output.shape[1] == 1):
            return output.reshape(-1)
        raise ValueError("target is None but the model returns several outputs per example; pass target")
    if output.dim() != 2:
        raise ValueError(f"the model must return [N, classes] outputs, got {tuple(output.shape)}")
    if targets.min() < 0 or targets.max() >= output.shape[1]:
        raise ValueError(f"target values must be in [0, {output.shape[1] - 1}], got {targets.tolist()[:8]}...")
    return output.gather(1, targets.unsqueeze(1)).squeeze(1)


def batched_scores(
    forward_func: Callable,
    total: int,
    build: Callable[[Tensor], Tuple[Tensor, Tensor]],
    num_examples: int,
    targets: Optional[Tensor],
    additional_forward_args: Any,
    score: str,
    batch_size: int,
) -> Tensor:
    """Score ``total`` inputs, ``batch_size`` at a time.

    ``build(flat_index)`` returns the batch of inputs for those positions and
    the example each belongs to; targets and per-example forward arguments
    (tensors whose first dimension is N) follow the example index.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    extra = format_additional_forward_args(additional_forward_args)
    out = []
    with torch.no_grad():
        for start in range(0, total, batch_size):
            flat = torch.arange(start, min(start + batch_size, total))
            batch, example = build(flat)
            args = ()
            if extra is not None:
                args = tuple(
                    a[example.to(a.device)] if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == num_examples else a
                    for a in extra
                )
            output = forward_func(batch, *args)
            tgt = targets[example.to(targets.device)] if targets is not None else None
            out.append(_select(output, tgt, score).float())
    return torch.cat(out)
