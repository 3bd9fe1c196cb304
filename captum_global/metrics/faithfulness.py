"""Model-truth metrics: Average Drop / Increase in Confidence, insertion / deletion AUC.

These need no ground truth, only the model: they ask whether the pixels an
explanation marks as important are the ones the model's score depends on.
Every perturbed input of every example is built on the fly and scored in
chunks of ``batch_size``; ``batch_size`` only trades memory for speed and
never changes the result (beyond the model's own float round-off).

Cost in model evaluations (one evaluation = one example through the model),
which :class:`ForwardCounter` confirms: ``drop_and_increase`` (and each of
``average_drop``, ``increase_in_confidence``) ``2 N``; ``insertion_auc`` and
``deletion_auc`` ``N * (n_steps + 1)`` each.

``score="softmax"`` (default) scores the softmax probability of the target
class, as in Grad-CAM++ and RISE; ``score="raw"`` uses the model's output as
is (for models that already return probabilities). Captum's
``captum.metrics.infidelity`` and ``sensitivity_max`` complement these and
apply unchanged to input-shaped attributions.

The model is evaluated in eval mode (batch norm on its running statistics,
dropout off) and handed back exactly as it came: same ``training`` flags,
same ``requires_grad`` flags, same weights and running statistics, also when
an error is raised. So a metric gives the same value on every call, whether
the model was in ``train()`` or ``eval()``. This applies to an ``nn.Module``,
a bound method or ``functools.partial`` of one, and a wrapper that keeps the
module as ``forward_func`` (:class:`ForwardCounter`, Captum attribution
objects); a plain function is called as it is.

Targets follow Captum's rules (an int, a negative int, a tuple for outputs
with several dimensions, a list or a 1-D integer tensor with one entry per
example; NumPy integers too). Bad arguments raise
:class:`~captum_global.errors.InvalidArgumentError` (a ``ValueError``) naming
the argument; a NaN or infinite model output raises
:class:`~captum_global.errors.NonFiniteOutputError` naming the example.
"""
from typing import Any, Callable, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_global._checks import check_bool, check_choice, check_int, check_number, check_tensor
from captum_global._maps import minmax_normalise
from captum_global._scoring import class_softmax, score_all
from captum_global._targets import parse_target
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError
from captum_global.metrics._checks import TensorOrTuple, evaluation_mode, heatmaps, single_tensor, without_noise

__all__ = ["drop_and_increase", "average_drop", "increase_in_confidence", "insertion_auc", "deletion_auc"]

BaselineArg = Union[int, float, Tensor, str]
SCORES = ("softmax", "raw")


def _inputs(inputs: TensorOrTuple) -> Tensor:
    x = check_tensor(single_tensor(inputs, "inputs"), "inputs", dims=(4,))
    if not x.is_floating_point():
        raise InvalidArgumentTypeError(f"inputs must be a floating point tensor [N, C, H, W], got dtype {x.dtype}")
    return x.detach()


def _blur(x: Tensor, size: int = 11, sigma: float = 5.0) -> Tensor:
    """Gaussian blur (RISE's insertion start: kernel 11, sigma 5), reflect padding
    (RISE pads with zeros, which darkens the border).

    The kernel shrinks (odd sizes) on images smaller than it, since reflect
    padding cannot reach further than the image's own side.
    """
    size = min(size, 2 * (min(x.shape[-2:]) - 1) + 1) | 1
    half = size // 2
    g = torch.exp(-((torch.arange(size, dtype=x.dtype, device=x.device) - half) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    c = x.shape[1]
    padded = F.pad(x, (half, half, half, half), mode="reflect") if half else x
    out = F.conv2d(padded, g.view(1, 1, 1, size).expand(c, 1, 1, size), groups=c)
    return F.conv2d(out, g.view(1, 1, size, 1).expand(c, 1, size, 1), groups=c)


def _baseline(baselines: BaselineArg, x: Tensor) -> Tensor:
    if isinstance(baselines, str):
        check_choice(baselines, "baselines", ("blur",))
        return _blur(x)
    if isinstance(baselines, Tensor):
        base = check_tensor(baselines, "baselines", nonempty=False)
        if base.dtype == torch.bool or base.is_complex():
            raise InvalidArgumentTypeError(f"baselines must hold real numbers, got dtype {base.dtype}")
        try:
            if torch.broadcast_shapes(base.shape, x.shape) != x.shape:
                raise RuntimeError
        except RuntimeError:
            raise InvalidArgumentError(
                f"baselines of shape {tuple(base.shape)} do not broadcast to inputs {tuple(x.shape)}"
            ) from None
        return base.detach().to(x.device, x.dtype).expand_as(x)
    value = check_number(baselines, "baselines")  # refuses bools, NaN, infinity, other types
    return torch.full_like(x, value)


def _transform(score: str):
    score = check_choice(score, "score", SCORES)
    if score == "raw":
        return None

    # the one softmax rule of SISE and RISE: over dimension 1, refused for [N] outputs or one class
    return lambda output: class_softmax(output, "score='softmax'", "score='raw'")


def _scores(forward_func, total, build, n, target, additional_forward_args, score, batch_size, what) -> Tensor:
    """``total`` target scores, the model in eval mode and left as found."""
    targets = parse_target(target, n)
    transform = _transform(score)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    with evaluation_mode(forward_func):
        scores = score_all(forward_func, total, build, targets, additional_forward_args, transform,
                           chunk_size=batch_size, chunk_argument="batch_size", what=what)
    return scores.to(torch.promote_types(scores.dtype, torch.float32))


def drop_and_increase(
    forward_func: Callable,
    inputs: TensorOrTuple,
    attributions: TensorOrTuple,
    target: Any = None,
    additional_forward_args: Any = None,
    baselines: BaselineArg = 0,
    score: str = "softmax",
    sign: str = "positive",
    batch_size: int = 64,
) -> Tuple[Tensor, Tensor]:
    r"""Average Drop % and Increase in Confidence % per example, in one pass.

    ``Y`` is the target score on the input, ``O`` the score on the input
    multiplied by its explanation map: the heat map (positive part by
    default) upsampled to the input size, min-max normalised per example and
    broadcast over channels; with a baseline ``b`` the explained input is
    ``b + map * (input - b)`` (``b = 0``: the plain product). Per example the
    drop is ``100 * max(0, Y - O) / Y`` (NaN where ``Y <= 0``: a raw score, or
    a softmax probability that underflows to 0) and the increase is 100
    where ``O > Y``, else 0; their means are the Grad-CAM++ "Average Drop %"
    (lower is better) and "Increase in Confidence %" (higher is better).

    Args:
        forward_func (Callable): the model; returns ``[N, classes]``. Run in
            eval mode, left as found.
        inputs (Tensor or 1-tuple): ``[N, C, H, W]`` float inputs, finite.
        attributions (Tensor or 1-tuple): ``[N, C, H, W]``, ``[N, 1, h, w]`` or
            ``[N, H, W]`` attributions for ``target``, finite.
        target (int, tuple, list, Tensor): Captum's target formats; one class
            for all examples or one per example.
        additional_forward_args (Any, optional): extra model arguments;
            tensors with N rows are taken per example.
        baselines (number or Tensor, optional): what a 0 in the map reveals: a
            finite number, or a tensor broadcastable to ``inputs``. Default: 0.
        score (str, optional): ``"softmax"`` (default) or ``"raw"``.
        sign (str, optional): how the channel sum becomes a map:
            ``"positive"`` (default) its positive part, ``"absolute"`` its
            magnitude, ``"all"`` the signed sum (then min-max normalised).
        batch_size (int, optional): examples per model call; never changes
            the result. Default: 64.

    Returns:
        (Tensor, Tensor): per-example drop in ``[0, 100]`` and increase in
        ``{0, 100}``, each ``[N]``. Costs ``2 N`` model evaluations.

    Examples::

        >>> import torch
        >>> from captum_global.metrics import drop_and_increase
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
        >>> x = torch.rand(3, 3, 2, 2)
        >>> drop, inc = drop_and_increase(model, x, x, target=0)
        >>> drop.shape, inc.shape
        (torch.Size([3]), torch.Size([3]))
    """
    x = _inputs(inputs)
    n = x.shape[0]
    maps = minmax_normalise(heatmaps(attributions, tuple(x.shape[-2:]), n, sign)).unsqueeze(1)
    base = _baseline(baselines, x)
    explained = base + maps.to(x.dtype) * (x - base)

    def build(flat: Tensor) -> Tuple[Tensor, Tensor]:
        flat = flat.to(x.device)
        example = flat % n
        return torch.where((flat < n).view(-1, 1, 1, 1), x[example], explained[example]), example

    scores = _scores(forward_func, 2 * n, build, n, target, additional_forward_args, score, batch_size,
                     "drop_and_increase")
    y, o = scores[:n], scores[n:]
    drop = torch.where(y > 0, 100.0 * (y - o).clamp(min=0) / y.clamp(min=1e-30), torch.full_like(y, float("nan")))
    increase = 100.0 * (o > y).to(y.dtype)
    return drop, increase


def average_drop(forward_func: Callable, inputs: TensorOrTuple, attributions: TensorOrTuple, target: Any = None,
                 **kwargs: Any) -> Tensor:
    r"""Average Drop % per example (lower is better); see :func:`drop_and_increase`.

    Keyword arguments are those of :func:`drop_and_increase`.

    Examples::

        >>> import torch
        >>> from captum_global.metrics import average_drop
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
        >>> x = torch.rand(4, 3, 2, 2)
        >>> average_drop(model, x, x.sum(1), target=1).shape
        torch.Size([4])
    """
    return drop_and_increase(forward_func, inputs, attributions, target, **kwargs)[0]


def increase_in_confidence(forward_func: Callable, inputs: TensorOrTuple, attributions: TensorOrTuple,
                           target: Any = None, **kwargs: Any) -> Tensor:
    r"""Increase in Confidence per example: 100 where the explained input scores
    higher than the input, else 0 (mean = Increase %); see :func:`drop_and_increase`.

    Examples::

        >>> import torch
        >>> from captum_global.metrics import increase_in_confidence
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
        >>> x = torch.rand(4, 3, 2, 2)
        >>> set(increase_in_confidence(model, x, x, target=0).tolist()) <= {0.0, 100.0}
        True
    """
    return drop_and_increase(forward_func, inputs, attributions, target, **kwargs)[1]


def _ranked_curve(forward_func, inputs, attributions, target, additional_forward_args, baselines, n_steps,
                  score, sign, batch_size, return_curve, insert: bool) -> Tuple[Tensor, bool]:
    x = _inputs(inputs)
    n, _, h, w = x.shape
    n_steps = check_int(n_steps, "n_steps", minimum=1)
    return_curve = check_bool(return_curve, "return_curve")
    # a map without signal (round-off only) ranks as a constant one: raster order, not noise
    maps = without_noise(heatmaps(attributions, (h, w), n, sign).flatten(1))
    # Stable sort: equal values keep raster order, so ties never depend on the
    # batch or the machine.
    order = torch.sort(maps, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=x.device).expand(n, -1))
    counts = torch.round(torch.arange(n_steps + 1, dtype=torch.float64) * (h * w) / n_steps).long().to(x.device)
    base = _baseline(baselines, x)
    start, end = (base, x) if insert else (x, base)
    steps = n_steps + 1

    def build(flat: Tensor) -> Tuple[Tensor, Tensor]:
        flat = flat.to(x.device)
        example, step = flat // steps, flat % steps
        changed = (rank[example] < counts[step].unsqueeze(1)).view(-1, 1, h, w)
        return torch.where(changed, end[example], start[example]), example

    what = "insertion_auc" if insert else "deletion_auc"
    curve = _scores(forward_func, n * steps, build, n, target, additional_forward_args, score, batch_size, what)
    return curve.view(n, steps), return_curve


def _trapezoid(curve: Tensor) -> Tensor:
    return (curve.sum(1) - (curve[:, 0] + curve[:, -1]) / 2) / (curve.shape[1] - 1)


_CURVE_DOC = r"""

    Pixels are ranked by the heat map (positive part by default, upsampled to
    the input size; ties keep raster order). Step ``k`` of ``n_steps`` has
    the ``round(k * H * W / n_steps)`` top-ranked pixels (all channels)
    {action}. The target-class score (softmax probability by default) is
    recorded at steps ``0 .. n_steps`` and integrated with the trapezoid
    rule over an x axis scaled to ``[0, 1]`` (as RISE), so the AUC lies in
    ``[0, 1]`` for probabilities.

    Args:
        forward_func (Callable): the model; returns ``[N, classes]``. Run in
            eval mode, left as found.
        inputs (Tensor or 1-tuple): ``[N, C, H, W]`` float inputs, finite.
        attributions (Tensor or 1-tuple): ``[N, C, H, W]``, ``[N, 1, h, w]`` or
            ``[N, H, W]`` attributions, finite.
        target (int, tuple, list, Tensor): Captum's target formats; one class
            for all examples or one per example.
        additional_forward_args (Any, optional): extra model arguments.
        baselines (number, Tensor or "blur", optional): the image with no
            information: a finite number, a tensor broadcastable to ``inputs``, or
            ``"blur"`` (Gaussian blur, kernel 11, sigma 5). Default: {default}.
        n_steps (int, optional): number of steps. Default: 100.
        score (str, optional): ``"softmax"`` (default) or ``"raw"``.
        sign (str, optional): ``"positive"`` (default) ranks the positive part
            of the channel sum (pixels with no positive evidence tie and keep
            raster order), ``"absolute"`` its magnitude, ``"all"`` the signed sum.
            A map without signal (constant, or varying only by float
            round-off) ranks in raster order.
        batch_size (int, optional): perturbed inputs per model call; never
            changes the result. Default: 64.
        return_curve (bool, optional): also return the ``[N, n_steps + 1]``
            curve. Default: False.

    Returns:
        Tensor: ``[N]`` AUC ({better}); or ``(auc, curve)``. Costs
        ``N * (n_steps + 1)`` model evaluations.
"""


def insertion_auc(forward_func: Callable, inputs: TensorOrTuple, attributions: TensorOrTuple, target: Any = None,
                  additional_forward_args: Any = None, baselines: BaselineArg = "blur", n_steps: int = 100,
                  score: str = "softmax", sign: str = "positive", batch_size: int = 64,
                  return_curve: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    curve, return_curve = _ranked_curve(forward_func, inputs, attributions, target, additional_forward_args,
                                        baselines, n_steps, score, sign, batch_size, return_curve, insert=True)
    auc = _trapezoid(curve)
    return (auc, curve) if return_curve else auc


def deletion_auc(forward_func: Callable, inputs: TensorOrTuple, attributions: TensorOrTuple, target: Any = None,
                 additional_forward_args: Any = None, baselines: BaselineArg = 0, n_steps: int = 100,
                 score: str = "softmax", sign: str = "positive", batch_size: int = 64,
                 return_curve: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    curve, return_curve = _ranked_curve(forward_func, inputs, attributions, target, additional_forward_args,
                                        baselines, n_steps, score, sign, batch_size, return_curve, insert=False)
    auc = _trapezoid(curve)
    return (auc, curve) if return_curve else auc


insertion_auc.__doc__ = (
    "Insertion AUC (RISE): start from the baseline and insert input pixels, most salient first."
    + _CURVE_DOC.format(action="copied from the input into the baseline", default='"blur" (as RISE)',
                        better="higher is better")
    + r"""
    Examples::

        >>> import torch
        >>> from captum_global.metrics import insertion_auc
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
        >>> x = torch.rand(2, 1, 4, 4)
        >>> insertion_auc(model, x, x, target=0, n_steps=4).shape
        torch.Size([2])
"""
)
deletion_auc.__doc__ = (
    "Deletion AUC (RISE): start from the input and remove pixels, most salient first."
    + _CURVE_DOC.format(action="replaced by the baseline", default="0 (as RISE)", better="lower is better")
    + r"""
    Examples::

        >>> import torch
        >>> from captum_global.metrics import deletion_auc
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
        >>> x = torch.rand(2, 1, 4, 4)
        >>> auc, curve = deletion_auc(model, x, x, target=1, n_steps=4, return_curve=True)
        >>> curve.shape
        torch.Size([2, 5])
"""
)
