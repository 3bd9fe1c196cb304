"""Chunked scoring of perturbed inputs: the one loop every perturbation method and metric uses (private).

SISE's masked inputs, RISE's masks, the insertion/deletion curves and the
drop/increase pairs are all "build many perturbed copies of a few inputs,
run the model on them, keep one target score per copy". This module owns
that loop: inputs are built chunk by chunk (memory bounded by the chunk
size), every chunk is one no-grad forward call, targets and per-example
forward arguments follow the example each copy belongs to, non-finite
scores raise :class:`~captum_global.errors.NonFiniteOutputError` naming the
example and the chunk, and the chunk size never changes the result (up to
the model's own float round-off).
"""
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Tuple, Union

import torch
from torch import Tensor
from tqdm.auto import tqdm

from captum_global._checks import check_finite_output, check_int, check_model_output
from captum_global._compat import format_additional_forward_args
from captum_global._targets import TargetIndex
from captum_global.errors import InvalidArgumentError

__all__ = ["ScoredChunk", "iter_scores", "score_all", "index_additional_args", "check_class_scores",
           "class_softmax"]

Inputs = Union[Tensor, Tuple[Tensor, ...]]
Build = Callable[[Tensor], Tuple[Inputs, Tensor, Any]]


def check_class_scores(output: Tensor, option: str, instead: Optional[str] = None, dim: int = 1) -> Tensor:
    """``output`` if it holds class scores ``[N, classes, ...]`` with at least two classes along ``dim``.

    A softmax over ``[N]`` outputs would run across the batch and mix the
    examples; a softmax (or cross-entropy) over one class is the constant 1
    (0), so every map built on it would be all zeros. ``option`` names the
    setting that needs class scores, ``instead`` the one to use (if any).
    """
    use = f"; use {instead}" if instead else ""
    if output.dim() < 2:
        raise InvalidArgumentError(
            f"{option} needs [N, classes] model outputs, got shape {tuple(output.shape)} (one score per "
            f"example, a softmax over which would mix the examples){use}")
    if output.shape[dim] < 2:
        raise InvalidArgumentError(
            f"{option} needs at least two classes, got model outputs of shape {tuple(output.shape)}: a softmax "
            f"over one class is 1 whatever the input, so the map would be all zeros{use}")
    return output


def class_softmax(output: Tensor, option: str, instead: str, dim: int = 1) -> Tensor:
    """Softmax of ``[N, classes, ...]`` model outputs over ``dim`` (the classes, dimension 1 by default);
    refused by :func:`check_class_scores` for one score per example or one class.
    ``option`` names the setting that asked for it, ``instead`` the one to use."""
    return check_class_scores(output, option, instead, dim).softmax(dim=dim)


@dataclass
class ScoredChunk:
    """One scored chunk.

    Attributes:
        flat: ``[B]`` positions (in ``0..total-1``) of the chunk's inputs.
        examples: ``[B]`` the example each input was built from.
        payload: whatever ``build`` returned beside the inputs (e.g. masks),
            so the caller need not build it twice.
        scores: ``[B]`` target scores, finite.
    """

    flat: Tensor
    examples: Tensor
    payload: Any
    scores: Tensor


def index_additional_args(args: Optional[Tuple[Any, ...]], rows: Tensor, num_examples: int) -> Optional[Tuple]:
    """Extra forward arguments for a batch whose row ``i`` belongs to example ``rows[i]``.

    As in Captum, a tensor whose first dimension is the number of examples
    is per-example and follows its example; anything else is passed as is.
    """
    if args is None:
        return None
    return tuple(
        a[rows.to(a.device)] if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == num_examples else a
        for a in args
    )


def iter_scores(
    forward_func: Callable,
    total: int,
    build: Build,
    targets: TargetIndex,
    additional_forward_args: Any = None,
    transform: Optional[Callable[[Tensor], Tensor]] = None,
    chunk_size: int = 32,
    chunk_argument: str = "perturbations_per_eval",
    show_progress: bool = False,
    what: str = "scoring",
) -> Iterator[ScoredChunk]:
    """Score ``total`` perturbed inputs, ``chunk_size`` per model call, chunk by chunk.

    Args:
        forward_func: the model.
        total: number of perturbed inputs.
        build: ``build(flat) -> (inputs, examples, payload)`` for the positions
            ``flat`` (a ``[B]`` CPU long tensor): the perturbed inputs (a tensor
            or a tuple, batch first), the example each belongs to, and anything
            the caller wants back with the scores.
        targets: the parsed target of the *examples*.
        additional_forward_args: extra forward arguments of the examples.
        transform: applied to the model output before the target is selected
            (e.g. softmax); ``None`` keeps the raw output.
        chunk_size: inputs per model call; ``chunk_argument`` names it in errors.
        show_progress: tqdm bar over the chunks, labelled ``what``.
        what: the method or metric, for the bar and for error messages.

    Yields:
        :class:`ScoredChunk` per chunk, in order.
    """
    chunk_size = check_int(chunk_size, chunk_argument, minimum=1)
    total = check_int(total, "total", minimum=0)
    extra = format_additional_forward_args(additional_forward_args)
    n = targets.num_examples
    with torch.no_grad(), tqdm(total=math.ceil(total / chunk_size), disable=not show_progress, desc=what) as bar:
        for start in range(0, total, chunk_size):
            flat = torch.arange(start, min(start + chunk_size, total))
            inputs, examples, payload = build(flat)
            inputs = inputs if isinstance(inputs, tuple) else (inputs,)
            args = index_additional_args(extra, examples, n) or ()
            output = check_model_output(forward_func(*inputs, *args))
            if transform is not None:
                output = transform(output)
            scores = targets.select(output, examples)
            check_finite_output(scores, what, f"perturbed inputs {start}-{int(flat[-1])} of {total}", examples)
            bar.update(1)
            yield ScoredChunk(flat, examples, payload, scores)


def score_all(
    forward_func: Callable,
    total: int,
    build: Callable[[Tensor], Tuple[Inputs, Tensor]],
    targets: TargetIndex,
    additional_forward_args: Any = None,
    transform: Optional[Callable[[Tensor], Tensor]] = None,
    chunk_size: int = 32,
    chunk_argument: str = "batch_size",
    show_progress: bool = False,
    what: str = "scoring",
) -> Tensor:
    """All ``[total]`` scores at once; ``build(flat) -> (inputs, examples)`` (no payload).

    See :func:`iter_scores` for the arguments.
    """

    def with_payload(flat: Tensor):
        inputs, examples = build(flat)
        return inputs, examples, None

    chunks = iter_scores(forward_func, total, with_payload, targets, additional_forward_args, transform,
                         chunk_size, chunk_argument, show_progress, what)
    parts = [chunk.scores for chunk in chunks]
    if not parts:
        return torch.zeros(0)
    return torch.cat(parts)
