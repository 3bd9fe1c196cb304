"""Input-agnostic saliency: what a classifier attributes to a class, with no input image.

Reconstruction (the paper's full text was not available; see
``docs/input_agnostic.md``) of Akhtar & Jalwana, "Rethinking Interpretation:
Input-Agnostic Saliency Mapping of Deep Visual Classifiers", AAAI 2023.
"""
from typing import Callable, List, Optional, Tuple, Union

import torch
from captum._utils.typing import TargetType, TensorOrTupleOfTensorsGeneric
from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import Tensor

from captum_global._compat import format_additional_forward_args, format_inputs, format_output, is_tuple
from captum_global._model_state import preserved_model_state
from captum_global.attr._agnostic import (
    class_loss_gradient,
    magnitude_map,
    make_samplers,
    project,
    refine_blur,
    refine_smooth,
    scale_maps,
)

__all__ = ["InputAgnosticSaliency"]

_NORMS = ("linf", "l2")
_SCALES = ("minmax", "max", "none")


class InputAgnosticSaliency(GradientAttribution):
    r"""
    Input-agnostic saliency: a map of what the model associates with a class
    at all, computed without looking at any input image.

    For every distinct target class ``c`` a perturbation ``rho_c`` (one per
    input tensor, input-shaped) is optimised so that adding it to random
    samples ``x ~ D`` makes the model predict ``c``::

        rho <- 0
        for t in 1..n_steps:
            draw samples_per_step samples x_i ~ D (shared by all classes)
            g <- mean_i grad_rho CE(f(clip(x_i + rho)), c)
            m, v <- Adam moments of g (betas), bias corrected
            d <- m / (sqrt(v) + eps)            (l2: d / ||d||_2)
            rho <- Project_radius(rho - step_size * radius * d)
        attribution <- scale(magnitude(refine(rho)))

    All classes of a batch are optimised together: one forward/backward of
    ``n_classes * samples_per_step`` synthetic points per step. The inputs
    only give shape, dtype and device; their values are never read, so
    rows with the same target receive the same map.

    The map is the per-pixel magnitude ``sum_c |rho_c|`` (channel absolute
    sum) broadcast to every channel: non-negative, ready for
    ``visualize_image_attr``. The signed ``rho`` is available through
    ``return_perturbation=True`` and ``last_perturbation``.
    """

    def __init__(self, forward_func: Callable[..., Tensor]) -> None:
        r"""
        Args:
            forward_func (Callable): the model, returning ``[batch, classes]``
                        scores (logits).
        """
        GradientAttribution.__init__(self, forward_func)
        #: number of examples run through the model (forward + backward) by
        #: the last call, including the one-example probe.
        self.last_num_evaluations: int = 0
        #: the distinct classes of the last call, in the order of
        #: ``last_perturbation``'s rows.
        self.last_classes: Tuple[int, ...] = ()
        #: raw ``rho`` of the last call, ``[len(last_classes), *shape]``
        #: (a tuple of those for tuple inputs), before refinement/scaling.
        self.last_perturbation: Optional[Union[Tensor, Tuple[Tensor, ...]]] = None
        #: the seed the last call actually used (drawn when ``seed=None``).
        self.last_seed: Optional[int] = None

    @classmethod
    def get_name(cls) -> str:
        return "Input-Agnostic Saliency"

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: TargetType = None,
        additional_forward_args: Optional[object] = None,
        distribution: Union[str, Callable, Tensor, Tuple[Tensor, ...]] = "uniform",
        samples_per_step: int = 16,
        n_steps: int = 100,
        step_size: float = 0.1,
        norm: str = "l2",
        radius: float = 8.0,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        value_range: Optional[Tuple[float, float]] = (0.0, 1.0),
        refine: Union[str, Callable[[Tensor], Tensor]] = "smooth",
        smooth_sigma: float = 1.0,
        suppress: float = 0.5,
        scale: str = "minmax",
        seed: Optional[int] = None,
        return_perturbation: bool = False,
        show_progress: bool = False,
    ) -> Union[TensorOrTupleOfTensorsGeneric, Tuple[TensorOrTupleOfTensorsGeneric, TensorOrTupleOfTensorsGeneric]]:
        r"""
        Args:
            inputs (Tensor or tuple[Tensor, ...]): only their shape, dtype
                        and device are used (one perturbation per input
                        tensor for a tuple). Dimension 0 is the batch.
            target (int, list, or Tensor): the class of each example
                        (an int for all, or one per example). Required.
                        Each distinct class is optimised once.
            additional_forward_args (Any, optional): passed unchanged after
                        the inputs to every forward; they must not depend on
                        the batch size (the synthetic batch has
                        ``n_classes * samples_per_step`` rows).
            distribution (str, Callable, Tensor or tuple): the noise ``D``.
                        ``"uniform"``: uniform in ``value_range``;
                        ``"gaussian"``: mean the middle of ``value_range``,
                        std a quarter of its span; a callable
                        ``(n, shape, generator) -> Tensor [n, *shape]``
                        (see ``_agnostic.uniform``/``gaussian``); or a
                        Tensor ``[M, *shape]`` of samples (e.g. real images;
                        one per input for tuples) drawn with replacement.
                        Default: ``"uniform"``
            samples_per_step (int): samples ``b`` per step. Default: 16
            n_steps (int): optimisation steps ``T``. Default: 100
            step_size (float): step relative to ``radius``: a step moves
                        ``rho`` by at most about ``step_size * radius``
                        (per element for linf, in l2 norm for l2).
                        Default: 0.1
            norm (str): ``"l2"`` (rescale onto the ball) or ``"linf"``
                        (clip every element). Default: ``"l2"``
            radius (float): ``eta``, the ball's radius, per class and per
                        input tensor. Default: 8.0 (l2 over 3x64x64 is an
                        RMS of 0.072 per element)
            betas (tuple[float, float]): Adam moment decays. Default: (0.9, 0.999)
            eps (float): Adam's denominator guard. Default: 1e-8
            value_range (tuple or None): the clip applied to ``x + rho``
                        before the model, and the range of the default
                        distributions; ``None`` disables the clip (the
                        default noise is then drawn in [0, 1]). Default: (0, 1)
            refine (str or Callable): ``"smooth"``: the per-pixel
                        magnitude of ``rho`` is blurred (Gaussian,
                        ``smooth_sigma`` px, kernel radius ``ceil(3 sigma)``,
                        reflect padding) and the pixels below its
                        ``suppress`` quantile are zeroed; kept pixels keep
                        their raw values. ``"blur"``: Gaussian blur of the
                        signed ``rho`` (smoother to the eye, but it loses
                        most of the targeted success, see the docs);
                        ``"none"``; or a callable on the ``[K, *shape]``
                        perturbations. Default: ``"smooth"``
            smooth_sigma (float): blur std in pixels (0: no blur). Default: 1.0
            suppress (float): quantile in [0, 1) of the weakest (blurred)
                        pixels zeroed by ``"smooth"``. Default: 0.5
            scale (str): ``"minmax"`` (each map to [0, 1]), ``"max"``
                        (divide by the maximum) or ``"none"``. Default: ``"minmax"``
            seed (int, optional): seed of the private ``torch.Generator``
                        driving the noise; the global RNG is never used.
                        ``None`` draws a fresh one (see ``last_seed``).
            return_perturbation (bool): also return the raw per-example
                        ``rho`` (the row of each example's target).
            show_progress (bool): tqdm progress bar over the steps.

        Returns:
            *Tensor* or *tuple[Tensor, ...]* of **attributions**, input
            shaped and non-negative (with ``return_perturbation``: the pair
            ``(attributions, perturbations)``).

        Examples::

            >>> import torch
            >>> from torch import nn
            >>> from captum_global.attr import InputAgnosticSaliency
            >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(),
            ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
            >>> ias = InputAgnosticSaliency(net)
            >>> images = torch.zeros(2, 3, 16, 16)
            >>> maps = ias.attribute(images, target=[0, 2], n_steps=5, seed=0)
            >>> maps.shape, ias.last_classes, ias.last_num_evaluations
            (torch.Size([2, 3, 16, 16]), (0, 2), 161)
        """
        was_tuple = is_tuple(inputs)
        inputs_t = format_inputs(inputs)
        self._check_settings(inputs_t, samples_per_step, n_steps, step_size, norm, radius,
                             betas, value_range, refine, smooth_sigma, suppress, scale)
        n = inputs_t[0].shape[0]
        rows = _targets_per_row(target, n)
        classes = sorted(set(rows))
        shapes = [tuple(x.shape[1:]) for x in inputs_t]
        samplers = make_samplers(distribution, shapes, value_range, inputs_t)
        afa = format_additional_forward_args(additional_forward_args)
        if seed is None:
            seed = int(torch.Generator().seed() % (2 ** 63))
        self.last_seed = int(seed)
        generator = torch.Generator().manual_seed(int(seed))

        with preserved_model_state(self.forward_func):
            _freeze_parameters(self.forward_func)
            n_classes = self._probe(inputs_t, value_range, afa)
            bad = [c for c in classes if not 0 <= c < n_classes]
            if bad:
                raise ValueError(
                    f"target {bad} out of range: the model has {n_classes} classes, "
                    f"so targets must be in [0, {n_classes})"
                )
            rho = self._optimise(samplers, classes, shapes, inputs_t, afa, generator, n_steps,
                                 samples_per_step, step_size, norm, radius, betas, eps,
                                 value_range, show_progress)
        self.last_num_evaluations = 1 + n_steps * len(classes) * samples_per_step
        self.last_classes = tuple(classes)
        self.last_perturbation = format_output(was_tuple, tuple(r.clone() for r in rho))

        maps = tuple(scale_maps(magnitude_map(_apply_refine(r, refine, smooth_sigma, suppress)), scale)
                     for r in rho)
        index = torch.tensor([classes.index(c) for c in rows], device=inputs_t[0].device)
        attributions = format_output(was_tuple, tuple(m[index] for m in maps))
        if return_perturbation:
            return attributions, format_output(was_tuple, tuple(r[index] for r in rho))
        return attributions

    @staticmethod
    def refine_perturbation(
        rho: Tensor, refine: Union[str, Callable[[Tensor], Tensor]] = "smooth",
        smooth_sigma: float = 1.0, suppress: float = 0.5,
    ) -> Tensor:
        r"""The refinement ``attribute`` applies to ``[K, *shape]`` perturbations,
        exposed so its effect on the model can be measured (signed output)."""
        return _apply_refine(rho, refine, smooth_sigma, suppress)

    def _probe(self, inputs: Tuple[Tensor, ...], value_range, afa) -> int:
        # One example at mid-range tells us how many classes the model has.
        mid = 0.5 if value_range is None else (value_range[0] + value_range[1]) / 2
        probe = tuple(torch.full_like(x[:1], mid).detach() for x in inputs)
        with torch.no_grad():
            out = self.forward_func(*(probe + (afa or ())))
        if not isinstance(out, Tensor) or out.dim() != 2:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"InputAgnosticSaliency needs a classifier returning [batch, classes] scores, got {shape}"
            )
        return int(out.shape[1])

    def _optimise(self, samplers, classes: List[int], shapes, inputs, afa, generator, n_steps,
                  b, step_size, norm, radius, betas, eps, value_range, show_progress) -> Tuple[Tensor, ...]:
        k = len(classes)
        device = inputs[0].device
        rho = [torch.zeros((k,) + s, dtype=x.dtype, device=device) for s, x in zip(shapes, inputs)]
        m1 = [torch.zeros_like(r) for r in rho]
        m2 = [torch.zeros_like(r) for r in rho]
        targets = torch.tensor(classes, device=device).repeat_interleave(b)
        steps = range(1, n_steps + 1)
        if show_progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="Input-Agnostic Saliency", total=n_steps)
        for t in steps:
            # The same samples serve every class (common random numbers), so a
            # class's map does not depend on which other classes are present.
            xs = [draw(b, generator) for draw in samplers]
            raw = [x.unsqueeze(0) + r.unsqueeze(1) for x, r in zip(xs, rho)]  # [k, b, ...]
            if value_range is None:
                points = raw
                inside = [torch.ones_like(p) for p in raw]
            else:
                lo, hi = value_range
                points = [p.clamp(lo, hi) for p in raw]
                # d clip / d rho: 1 inside the range, 0 where clipped.
                inside = [((p >= lo) & (p <= hi)).to(p.dtype) for p in raw]
            grads = class_loss_gradient(
                self.forward_func, tuple(p.reshape((k * b,) + p.shape[2:]) for p in points), targets, afa
            )
            for j, (g, ins) in enumerate(zip(grads, inside)):
                g = (g.view_as(ins) * ins).mean(dim=1)
                m1[j].mul_(betas[0]).add_(g, alpha=1 - betas[0])
                m2[j].mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])
                d = (m1[j] / (1 - betas[0] ** t)) / ((m2[j] / (1 - betas[1] ** t)).sqrt() + eps)
                if norm == "l2":
                    flat = d.flatten(1)
                    d = (flat / flat.norm(dim=1, keepdim=True).clamp(min=1e-12)).view_as(d)
                rho[j] = project(rho[j] - step_size * radius * d, norm, radius)
        return tuple(rho)

    @staticmethod
    def _check_settings(inputs, samples_per_step, n_steps, step_size, norm, radius, betas,
                        value_range, refine, smooth_sigma, suppress, scale) -> None:
        if inputs[0].dim() == 0 or inputs[0].shape[0] == 0:
            raise ValueError("inputs must hold at least one example (dimension 0 is the batch)")
        if any(x.shape[0] != inputs[0].shape[0] for x in inputs):
            raise ValueError("all input tensors must have the same batch size (dimension 0)")
        if not all(x.is_floating_point() for x in inputs):
            raise ValueError("inputs must be floating point tensors")
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
        if not isinstance(radius, (int, float)) or not radius > 0 or radius != radius or radius == float("inf"):
            raise ValueError(f"radius must be a finite number > 0, got {radius!r}")
        if not isinstance(samples_per_step, int) or samples_per_step < 1:
            raise ValueError(f"samples_per_step must be an int >= 1, got {samples_per_step!r}")
        if not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"n_steps must be an int >= 1, got {n_steps!r}")
        if not step_size > 0:
            raise ValueError(f"step_size must be > 0, got {step_size!r}")
        if len(betas) != 2 or not all(0 <= b_ < 1 for b_ in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        if value_range is not None and not (len(value_range) == 2 and value_range[0] < value_range[1]):
            raise ValueError(f"value_range must be (low, high) with low < high, or None; got {value_range!r}")
        if not (callable(refine) or refine in ("smooth", "blur", "none")):
            raise ValueError(f"refine must be 'smooth', 'blur', 'none' or a callable, got {refine!r}")
        if not smooth_sigma >= 0:
            raise ValueError(f"smooth_sigma must be >= 0, got {smooth_sigma!r}")
        if not 0 <= suppress < 1:
            raise ValueError(f"suppress must be in [0, 1), got {suppress!r}")
        if scale not in _SCALES:
            raise ValueError(f"scale must be one of {_SCALES}, got {scale!r}")


def _targets_per_row(target: TargetType, n: int) -> List[int]:
    """One int class per example, from Captum's int / list / tensor forms."""
    if target is None:
        raise ValueError("target is required: the class (int) or one class per example")
    if isinstance(target, Tensor):
        if target.dim() > 1 or target.is_floating_point():
            raise ValueError(f"target must be an int tensor of shape [] or [N], got {tuple(target.shape)}")
        target = target.tolist()
    if isinstance(target, bool) or isinstance(target, tuple):
        raise ValueError(f"target must be an int class index or a list of them, got {target!r}")
    if isinstance(target, int):
        rows = [target] * n
    elif isinstance(target, list):
        if len(target) == 1:
            target = target * n
        if len(target) != n or not all(isinstance(t, int) and not isinstance(t, bool) for t in target):
            raise ValueError(f"target must be one int class per example ({n}), got {target!r}")
        rows = list(target)
    else:
        raise ValueError(f"target must be an int, a list of ints or an int Tensor, got {type(target).__name__}")
    if any(t < 0 for t in rows):
        raise ValueError(f"target must be non-negative class indices, got {sorted(set(rows))}")
    return rows


def _freeze_parameters(model: Callable) -> None:
    # Only gradients w.r.t. the synthetic points are needed; preserved_model_state
    # gives the flags back afterwards.
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            p.requires_grad_(False)


def _apply_refine(rho: Tensor, refine, smooth_sigma: float, suppress: float) -> Tensor:
    if callable(refine):
        out = refine(rho)
        if not isinstance(out, Tensor) or out.shape != rho.shape:
            raise ValueError(f"refine callable must return a Tensor of shape {tuple(rho.shape)}")
        return out
    if refine == "smooth":
        return refine_smooth(rho, smooth_sigma, suppress)
    if refine == "blur":
        return refine_blur(rho, smooth_sigma)
    return rho
