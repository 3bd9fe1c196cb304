"""Input-agnostic saliency: what a classifier attributes to a class, with no input image.

Reconstruction of Akhtar & Jalwana, "Rethinking Interpretation: Input-Agnostic
Saliency Mapping of Deep Visual Classifiers", AAAI 2023 (the paper's full text
was not available; the documentation's "Input-agnostic saliency" page says what
is taken from the paper and what is ours).
"""
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import Tensor

from captum_global._checks import (
    check_bool,
    check_choice,
    check_inputs,
    check_int,
    check_model_output,
    check_model_weights,
    check_number,
    check_tensor,
    check_value_range,
)
from captum_global._compat import (
    TargetType,
    TensorOrTupleOfTensorsGeneric,
    format_additional_forward_args,
    format_output,
    is_tuple,
)
from captum_global._model_state import autograd_on, preserved_model_state
from captum_global._scoring import check_class_scores, index_additional_args
from captum_global._seeding import check_seed, cuda_devices, make_generator, seeded_global_rng
from captum_global._targets import parse_target
from captum_global.attr._agnostic import apply_refine, make_samplers, map_of, optimise_perturbations, scale_maps
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError

__all__ = ["InputAgnosticSaliency"]

_NORMS = ("l2", "linf")
_SCALES = ("minmax", "max", "none")
_REFINES = ("smooth", "blur", "none")


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

    The map is the per-pixel magnitude of the refined ``rho`` (channel
    absolute sum) broadcast to every channel: non-negative, ready for
    ``visualize_image_attr``. The signed ``rho`` comes back with
    ``return_perturbation=True``.

    A model whose output does not depend on its input (over ``D``) has no
    gradient to follow: its maps are all zero (no signal), never noise
    stretched to full range. A model that returns NaN or infinity during the
    optimisation raises :class:`~captum_global.errors.NonFiniteOutputError`.
    """

    def __init__(self, forward_func: Callable[..., Tensor]) -> None:
        r"""
        Args:
            forward_func (Callable): the model, returning ``[batch, classes]``
                        scores (logits).
        """
        if not callable(forward_func):
            raise InvalidArgumentTypeError(f"forward_func must be callable, got {type(forward_func).__name__}")
        GradientAttribution.__init__(self, forward_func)

    @classmethod
    def get_name(cls) -> str:
        return "Input-Agnostic Saliency"

    def has_convergence_delta(self) -> bool:
        return False

    def compute_convergence_delta(self, *args, **kwargs):  # type: ignore[override]
        r"""Not defined for this method: there is no completeness axiom to check.

        Raises:
            NotImplementedError: always (``has_convergence_delta()`` is False).
        """
        raise NotImplementedError(
            "InputAgnosticSaliency has no convergence delta (has_convergence_delta() is False): "
            "its maps are not a decomposition of the model's output"
        )

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: TargetType = None,
        additional_forward_args: Optional[object] = None,
        distribution: Union[str, Callable, Tensor, Tuple[Tensor, ...]] = "smooth",
        samples_per_step: int = 16,
        n_steps: int = 100,
        step_size: float = 0.1,
        norm: str = "l2",
        radius: float = 8.0,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        value_range: Optional[Tuple[float, float]] = (0.0, 1.0),
        refine: Union[str, Callable[[Tensor], Tensor]] = "smooth",
        smooth_sigma: float = 2.0,
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
            target (int, tuple, list, or Tensor): the class of each example,
                        in any form Captum accepts (an int or a negative int
                        for all, a 1-tuple, a list of ints or of 1-tuples
                        with one entry per example, an integer tensor).
                        Required. Each distinct class is optimised once.
            additional_forward_args (Any, optional): passed after the
                        inputs to every forward. As in Captum, a tensor
                        whose first dimension is the number of examples is
                        per-example: the synthetic points of a class get the
                        row of the examples with that target (which must
                        then agree); anything else is passed unchanged.
            distribution (str, Callable, Tensor or tuple): the samples ``D``.
                        ``"smooth"``: smooth random images in
                        ``value_range`` (uniform noise on a grid 8 times
                        coarser than the image, bilinearly upsampled);
                        ``"uniform"``: i.i.d. uniform noise in
                        ``value_range``; ``"gaussian"``: i.i.d. Gaussian
                        noise, mean the middle of ``value_range``, std a
                        quarter of its span; a callable
                        ``(n, shape, generator) -> Tensor [n, *shape]`` that
                        draws ``n`` samples of one input's per-example shape
                        from the given ``torch.Generator``; or a Tensor
                        ``[M, *shape]`` of samples (e.g. real images; one per
                        input for tuples) drawn with replacement.
                        Default: ``"smooth"``
            samples_per_step (int): samples ``b`` per step. Default: 16
            n_steps (int): optimisation steps ``T``. Default: 100
            step_size (float): step relative to ``radius``: a step moves
                        ``rho`` by at most about ``step_size * radius``
                        (per element for linf, in l2 norm for l2).
                        Default: 0.1
            norm (str): ``"l2"`` (rescale onto the ball) or ``"linf"``
                        (clip every element). Default: ``"l2"``
            radius (float): ``eta``, the ball's radius, per class and per
                        input tensor. Default: 8.0
            betas (tuple[float, float]): Adam moment decays, each in [0, 1).
                        Default: (0.9, 0.999)
            eps (float): Adam's denominator guard (> 0). Default: 1e-8
            value_range (tuple or None): the clip applied to ``x + rho``
                        before the model, and the range of the noise
                        distributions; ``None`` disables the clip (the
                        noise is then drawn in [0, 1]). Default: (0, 1)
            refine (str or Callable): ``"smooth"``: the per-pixel
                        magnitude of ``rho`` is blurred (Gaussian,
                        ``smooth_sigma`` px, kernel radius ``ceil(3 sigma)``,
                        reflect padding), the pixels below its ``suppress``
                        quantile are zeroed in ``rho`` (kept pixels keep their
                        raw values) and the map is the blurred magnitude on
                        the kept pixels. ``"blur"``: Gaussian blur of the
                        signed ``rho`` (it loses most of the targeted
                        success); ``"none"``; or a callable on the
                        ``[K, *shape]`` perturbations. Default: ``"smooth"``
            smooth_sigma (float): blur std in pixels (>= 0; 0: no blur).
                        Default: 2.0
            suppress (float): quantile in [0, 1) of the weakest (blurred)
                        pixels zeroed by ``"smooth"``. Default: 0.5
            scale (str): ``"minmax"`` (each map to [0, 1]), ``"max"``
                        (divide by the maximum) or ``"none"``. Default: ``"minmax"``
            seed (int, optional): seed of the private ``torch.Generator``
                        driving the samples. A model that draws from the
                        global RNG (MC dropout) draws from a state seeded by
                        it; the caller's state is restored afterwards.
                        ``None`` draws a fresh seed.
            return_perturbation (bool): also return the raw per-example
                        ``rho`` (the row of each example's target), before
                        refinement and scaling.
            show_progress (bool): tqdm progress bar over the steps.

        Returns:
            *Tensor* or *tuple[Tensor, ...]* of **attributions**, input
            shaped and non-negative; with ``return_perturbation=True`` the
            pair ``(attributions, perturbations)``.

        Examples::

            >>> import torch
            >>> from torch import nn
            >>> from captum_global.attr import InputAgnosticSaliency
            >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(),
            ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
            >>> ias = InputAgnosticSaliency(net)
            >>> images = torch.zeros(2, 3, 16, 16)
            >>> maps, rho = ias.attribute(images, target=[0, 2], n_steps=5, seed=0,
            ...                           return_perturbation=True)
            >>> maps.shape, bool(rho[0].norm() <= 8.0)
            (torch.Size([2, 3, 16, 16]), True)
        """
        was_tuple = is_tuple(inputs)
        inputs_t = check_inputs(inputs, floating=True, finite=False)
        settings = _check_settings(inputs_t, samples_per_step, n_steps, step_size, norm, radius, betas, eps,
                                   value_range, refine, smooth_sigma, suppress, scale)
        if isinstance(settings["refine"], str) and settings["refine"] == "smooth":
            for i, x in enumerate(inputs_t):
                if x.dim() != 4:
                    name = "inputs" if len(inputs_t) == 1 else f"inputs[{i}]"
                    raise InvalidArgumentError(
                        f"{name} must be an image batch [N, C, H, W] for refine='smooth' (the default), got shape "
                        f"{tuple(x.shape)}; pass refine='none' or a callable for other inputs")
        check_bool(return_perturbation, "return_perturbation")
        check_bool(show_progress, "show_progress")
        seed = check_seed(seed)
        n = inputs_t[0].shape[0]
        shapes = [tuple(x.shape[1:]) for x in inputs_t]
        samplers = make_samplers(distribution, shapes, settings["value_range"], inputs_t)
        afa = format_additional_forward_args(additional_forward_args)
        parsed = parse_target(target, n)

        check_model_weights(self.forward_func, autograd=True)
        # gradients also under the caller's inference_mode; a model that draws from the global RNG
        # (MC dropout) draws from a state seeded by ``seed``, and the caller's state comes back afterwards
        with preserved_model_state(self.forward_func, freeze_parameters=True), autograd_on(), \
                seeded_global_rng(seed, cuda_devices(self.forward_func, *inputs_t)):
            output_shape = self._probe(inputs_t, settings["value_range"], index_additional_args(
                afa, torch.zeros(1, dtype=torch.long), n))
            rows = parsed.checked(output_shape).classes()
            classes = sorted(set(rows))
            rho = optimise_perturbations(
                self.forward_func, samplers, classes, shapes, inputs_t,
                _class_forward_args(afa, rows, classes, n, settings["samples_per_step"]), make_generator(seed),
                settings, show_progress=show_progress, what=self.get_name(),
            )

        maps = tuple(scale_maps(map_of(r, settings["refine"], settings["smooth_sigma"], settings["suppress"]),
                                settings["scale"]) for r in rho)
        index = torch.tensor([classes.index(c) for c in rows], device=inputs_t[0].device)
        attributions = format_output(was_tuple, tuple(m[index] for m in maps))
        if return_perturbation:
            return attributions, format_output(was_tuple, tuple(r[index] for r in rho))
        return attributions

    @staticmethod
    def refine_perturbation(
        rho: Tensor,
        refine: Union[str, Callable[[Tensor], Tensor]] = "smooth",
        smooth_sigma: float = 2.0,
        suppress: float = 0.5,
    ) -> Tensor:
        r"""The refinement ``attribute`` applies to ``[K, *shape]`` perturbations,
        exposed so its effect on the model can be measured (signed output).

        Args:
            rho (Tensor): ``[K, *shape]`` signed perturbations (e.g. the second
                        element returned with ``return_perturbation=True``).
            refine, smooth_sigma, suppress: as in :meth:`attribute`.

        Returns:
            *Tensor*: the refined perturbations, same shape as ``rho``.
        """
        rho = check_tensor(rho, "rho", floating=True)
        check_number(smooth_sigma, "smooth_sigma", minimum=0.0)
        check_number(suppress, "suppress", minimum=0.0, maximum=1.0, max_inclusive=False)
        _check_refine(refine)
        return apply_refine(rho, refine, smooth_sigma, suppress)

    def _probe(self, inputs: Tuple[Tensor, ...], value_range, afa) -> Tuple[int, ...]:
        # One example at mid-range tells us how many classes the model has.
        mid = 0.5 if value_range is None else (value_range[0] + value_range[1]) / 2
        probe = tuple(torch.full_like(x[:1], mid).detach() for x in inputs)
        with torch.no_grad():
            out = check_model_output(self.forward_func(*(probe + (afa or ()))))
        if out.dim() != 2:
            raise InvalidArgumentError(
                f"forward_func must return [batch, classes] scores for InputAgnosticSaliency, "
                f"got shape {tuple(out.shape)}"
            )
        check_class_scores(out, "forward_func (InputAgnosticSaliency descends a cross-entropy over its classes)")
        return tuple(out.shape)


def _class_forward_args(afa: Optional[Tuple], rows: List[int], classes: List[int], n: int,
                        samples_per_step: int) -> Optional[Tuple]:
    """The extra forward arguments of the synthetic batch (``[len(classes) * samples_per_step]``
    rows, class by class).

    As everywhere (:func:`~captum_global._scoring.index_additional_args`), a
    tensor whose first dimension is the number of examples is per-example: a
    synthetic point of class ``c`` gets the row of the examples with target
    ``c``, which must then all have the same row (the map is per class).
    """
    if afa is None:
        return None
    owner = torch.tensor([rows.index(c) for c in rows])  # the first example with the same target
    shared = index_additional_args(afa, owner, n)
    for i, (a, theirs) in enumerate(zip(afa, shared)):
        if theirs is not a and not torch.equal(a, theirs):  # per-example, and not shared within a class
            example = int(((a != theirs).reshape(n, -1).any(dim=1)).nonzero()[0])
            raise InvalidArgumentError(
                f"additional_forward_args[{i}] is per-example (its first dimension is the {n} examples) and "
                f"differs between examples {int(owner[example])} and {example}, which have the same target "
                f"{rows[example]}: InputAgnosticSaliency computes one map per class, so examples of one class "
                "must share their per-example arguments")
    first = torch.tensor([rows.index(c) for c in classes])
    return index_additional_args(afa, first.repeat_interleave(samples_per_step), n)


def _check_refine(refine) -> None:
    if not (callable(refine) or (isinstance(refine, str) and refine in _REFINES)):
        raise InvalidArgumentError(f"refine must be one of {_REFINES} or a callable, got {refine!r}")


def _check_settings(inputs, samples_per_step, n_steps, step_size, norm, radius, betas, eps,
                    value_range, refine, smooth_sigma, suppress, scale) -> Dict:
    if any(x.shape[0] != inputs[0].shape[0] for x in inputs):
        raise InvalidArgumentError("inputs must all have the same batch size (dimension 0)")
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise InvalidArgumentError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    _check_refine(refine)
    return dict(
        samples_per_step=check_int(samples_per_step, "samples_per_step", minimum=1),
        n_steps=check_int(n_steps, "n_steps", minimum=1),
        step_size=check_number(step_size, "step_size", minimum=0.0, min_inclusive=False),
        norm=check_choice(norm, "norm", _NORMS),
        radius=check_number(radius, "radius", minimum=0.0, min_inclusive=False),
        betas=tuple(check_number(b, f"betas[{i}]", minimum=0.0, maximum=1.0, max_inclusive=False)
                    for i, b in enumerate(betas)),
        eps=check_number(eps, "eps", minimum=0.0, min_inclusive=False),
        value_range=check_value_range(value_range),
        refine=refine,
        smooth_sigma=check_number(smooth_sigma, "smooth_sigma", minimum=0.0),
        suppress=check_number(suppress, "suppress", minimum=0.0, maximum=1.0, max_inclusive=False),
        scale=check_choice(scale, "scale", _SCALES),
    )

