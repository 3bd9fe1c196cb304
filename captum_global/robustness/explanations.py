"""Explanations that are differentiable with respect to the model's weights.

Fooling an explanation by fine-tuning (Heo, Joo and Moon, NeurIPS 2019)
needs the map as a differentiable function of the weights: the penalty on
the map is back-propagated into the weights ("double backpropagation").
Captum's attribution objects detach their results, and SISE's Otsu gate and
no-grad mask scoring are not differentiable at all, so the maps used *during*
fine-tuning are computed here with ``create_graph=True``:

- :class:`GradCAMExplanation`: Grad-CAM on one layer, ReLU, bilinear
  upsampling (the same map as Captum's ``LayerGradCam`` with
  ``relu_attributions=True`` followed by ``LayerAttribution.interpolate``
  with ``interpolate_mode="bilinear"``; Captum's default is ``"nearest"``).
- :class:`GradientExplanation`: the absolute input gradient summed over
  channels (Captum's ``Saliency(abs=True)`` as a heat map).
- :class:`SoftSISESurrogate`: SISE with a sampled subset of its masks
  scored with gradients kept, and the soft (sigmoid) Otsu gate: the
  adaptive attack on SISE.

Every explanation maps ``(model, inputs, target)`` to non-negative
``[N, H, W]`` heat maps. The model is passed at each call because the
explanation is evaluated on the original model and on its manipulated copy.
"""
import math
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from captum_global._checks import check_int, check_model_weights, check_tensor
from captum_global._maps import minmax_normalise, resize_maps
from captum_global._model_state import HookBag, autograd_on, find_module, preserved_model_state
from captum_global._seeding import check_seed, draw_uniform, make_generator
from captum_global._targets import parse_target
from captum_global.attr import select_sise_layers
from captum_global.attr._fusion import fuse_layer_maps
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError

__all__ = [
    "DifferentiableExplanation",
    "GradCAMExplanation",
    "GradientExplanation",
    "SoftSISESurrogate",
    "EXPLANATIONS",
    "differentiable_explanation",
]

Layer = Union[str, nn.Module, None]


class DifferentiableExplanation:
    """Base class: ``explanation(model, inputs, target) -> [N, H, W]`` maps.

    Subclasses implement :meth:`maps`; the result must be non-negative and
    keep its autograd graph back to the model's parameters, so that a loss
    on it can be back-propagated into the weights.
    """

    #: short name used in results and figures
    name: str = "explanation"

    def __call__(self, model: nn.Module, inputs: Tensor, target: Any,
                 generator: Optional[torch.Generator] = None) -> Tensor:
        r"""
        Args:
            model (nn.Module): the model to explain (the original or a copy).
            inputs (Tensor): ``[N, C, H, W]`` images.
            target (int, list, tuple or Tensor): the class per example, any
                form Captum accepts.
            generator (torch.Generator, optional): for explanations that draw
                random numbers (:class:`SoftSISESurrogate`); without one they
                draw fresh numbers, never from the global generator.

        Returns:
            Tensor: ``[N, H, W]`` non-negative maps that keep their graph to
            the weights. The model runs in eval mode (BatchNorm statistics
            stay, dropout is off) and gets its flags back.
        """
        check_model_weights(model, "model", autograd=True)  # not PyTorch's error deep in the backward pass
        inputs = check_tensor(inputs, "inputs", dims=(4,), floating=True)
        targets = parse_target(target, inputs.shape[0])
        # a graph also under the caller's inference_mode
        with preserved_model_state(model), autograd_on():
            return self.maps(model, inputs, targets, generator)

    def maps(self, model: nn.Module, inputs: Tensor, targets, generator: Optional[torch.Generator]) -> Tensor:
        raise NotImplementedError

    def bind(self, model: nn.Module, example_input: Tensor) -> "DifferentiableExplanation":
        """Fix what depends on the model (layer names), before the model is copied."""
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _graph_input(inputs: Tensor) -> Tensor:
    """A copy of ``inputs`` in the graph (a non-leaf): a model that works on its input in place
    (``x.sub_(mean)``) neither fails on a leaf that requires grad nor changes the caller's tensor."""
    return inputs.detach().requires_grad_(True).clone()


def _captured(keep: Callable[[Tensor], Any], out: Any) -> Any:
    """Forward-hook body: ``keep(out)`` and let the model go on with a copy, so that an in-place op
    after the layer (a ReLU(inplace=True) after a hooked convolution) cannot overwrite the activations
    that are differentiated and weighed (as SISE's own hooks do)."""
    keep(out)
    return out.clone() if isinstance(out, Tensor) else None


def _layer_name(model: nn.Module, layer: Layer, argument: str) -> str:
    module = find_module(model, layer, argument)
    return next(name for name, m in model.named_modules() if m is module)


class GradCAMExplanation(DifferentiableExplanation):
    r"""Grad-CAM, differentiable in the weights.

    ``relu(sum_k mean(dy_c / dA_k) A_k)`` on ``layer``, upsampled bilinearly
    to the input size (``align_corners=False``: Captum's
    ``LayerAttribution.interpolate(..., interpolate_mode="bilinear")``; its
    default mode, ``"nearest"``, gives a different, blocky map).

    Args:
        layer (str or nn.Module, optional): the layer (or its dotted name)
            whose output is ``A``. ``None``: the package's Grad-CAM layer,
            the deepest block output with a spatial map (as in the line-up).

    Examples::

        >>> import torch
        >>> from torch import nn
        >>> from captum_global.robustness import GradCAMExplanation
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> maps = GradCAMExplanation("1")(net, torch.rand(2, 3, 8, 8), target=[0, 1])
        >>> maps.shape, bool(maps.requires_grad)
        (torch.Size([2, 8, 8]), True)
    """

    name = "grad_cam"

    def __init__(self, layer: Layer = None) -> None:
        if layer is not None and not isinstance(layer, (str, nn.Module)):
            raise InvalidArgumentTypeError(f"layer must be None, a module or a dotted name, got {type(layer).__name__}")
        self.layer = layer

    def bind(self, model: nn.Module, example_input: Tensor) -> "GradCAMExplanation":
        if self.layer is None:
            from captum_global.lineup import last_spatial_layer

            return GradCAMExplanation(_layer_name(model, last_spatial_layer(model, example_input), "layer"))
        return GradCAMExplanation(_layer_name(model, self.layer, "layer"))

    def maps(self, model, inputs, targets, generator):
        bound = self if isinstance(self.layer, str) else self.bind(model, inputs[:1])
        captured: List[Tensor] = []
        with HookBag() as bag:
            module = find_module(model, bound.layer, "layer")
            bag.add(module.register_forward_hook(lambda m, i, out: _captured(captured.append, out)))
            # the input needs a graph even when every weight is frozen (the original model)
            output = model(_graph_input(inputs))
        if len(captured) != 1 or not isinstance(captured[0], Tensor) or captured[0].dim() != 4:
            raise InvalidArgumentError(f"layer {bound.layer!r} must run once per forward pass and return [N, C, h, w]")
        act = captured[0]
        score = targets.select(output).sum()
        (grad,) = torch.autograd.grad(score, act, create_graph=True)
        cam = (grad.mean(dim=(2, 3), keepdim=True) * act).sum(dim=1, keepdim=True).clamp(min=0)
        return resize_maps(cam, tuple(inputs.shape[-2:]))[:, 0]

    def __repr__(self) -> str:
        return f"GradCAMExplanation(layer={self.layer!r})"


class GradientExplanation(DifferentiableExplanation):
    r"""Plain gradient ("SimpleGrad"): ``sum_channels |dy_c / dx|``, differentiable in the weights.

    The heat map of Captum's ``Saliency(abs=True)``.

    Examples::

        >>> import torch
        >>> from torch import nn
        >>> from captum_global.robustness import GradientExplanation
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
        >>> GradientExplanation()(net, torch.rand(1, 3, 4, 4), target=0).shape
        torch.Size([1, 4, 4])
    """

    name = "gradient"

    def maps(self, model, inputs, targets, generator):
        x = inputs.detach().requires_grad_(True)
        score = targets.select(model(x.clone())).sum()  # a copy: the model may work on its input in place
        (grad,) = torch.autograd.grad(score, x, create_graph=True)
        return grad.abs().sum(dim=1)


class SoftSISESurrogate(DifferentiableExplanation):
    r"""A differentiable surrogate of SISE, for an adaptive attack on it.

    SISE itself cannot be back-propagated: its masks are scored without
    gradients and its block maps are fused through a hard Otsu gate. This
    surrogate keeps SISE's construction and makes each piece differentiable
    in the weights:

    1. the same layers (one per block) and the same mask choice: channels
       whose spatially summed gradient is positive (``mu = 0``), falling back
       on the best one; the choice itself is a discrete step and is not
       differentiated;
    2. ``masks_per_layer`` of the kept channels per example and layer, drawn
       at random at every call (an unbiased sample of SISE's mask sum; every
       kept channel when fewer survive), each upsampled and min-max
       normalised *with its graph*, so the masks themselves move with the
       weights;
    3. each mask scored by the model's logit on ``mask * input`` (SISE's
       default baseline 0), with gradients: ``V = sum_m s_m m / sum(m)``,
       min-max normalised per block;
    4. blocks fused from coarse to fine with the soft gate
       ``sigmoid(sharpness (V - t))`` (``fusion="soft-otsu"`` of SISE); the
       Otsu level ``t`` is a histogram statistic and is held constant.

    Args:
        layers (list, optional): layers (modules or dotted names); default
            SISE's automatic choice.
        masks_per_layer (int): masks sampled per example and layer and call.
            Default: 8.

    Examples::

        >>> import torch
        >>> from torch import nn
        >>> from captum_global.robustness import SoftSISESurrogate
        >>> net = nn.Sequential(
        ...     nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        ...     nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        ...     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> maps = SoftSISESurrogate(masks_per_layer=2)(net, torch.rand(2, 3, 16, 16), target=1)
        >>> maps.shape, bool(maps.requires_grad)
        (torch.Size([2, 16, 16]), True)
    """

    name = "soft_sise"

    def __init__(self, layers: Optional[Sequence[Layer]] = None, masks_per_layer: int = 8) -> None:
        if layers is not None and (isinstance(layers, (str, nn.Module)) or len(layers) == 0):
            raise InvalidArgumentError("layers must be None or a non-empty list of modules or dotted names")
        self.layers = None if layers is None else list(layers)
        self.masks_per_layer = check_int(masks_per_layer, "masks_per_layer", minimum=1)

    def bind(self, model: nn.Module, example_input: Tensor) -> "SoftSISESurrogate":
        names = (select_sise_layers(model, example_input[:1]) if self.layers is None
                 else [_layer_name(model, layer, "layers") for layer in self.layers])
        return SoftSISESurrogate(names, self.masks_per_layer)

    def maps(self, model, inputs, targets, generator):
        names = self.layers if self.layers and all(isinstance(n, str) for n in self.layers) else \
            self.bind(model, inputs[:1]).layers
        acts: Dict[str, Tensor] = {}
        with HookBag() as bag:
            for name in names:
                module = find_module(model, name, "layers")
                bag.add(module.register_forward_hook(
                    lambda m, i, out, name=name: _captured(lambda a: acts.setdefault(name, a), out)))
            output = model(_graph_input(inputs))
        score = targets.select(output).sum()
        alphas = torch.autograd.grad(score, [acts[n] for n in names], retain_graph=True)
        n, size = inputs.shape[0], tuple(inputs.shape[-2:])
        block_maps = []
        for name, alpha in zip(names, alphas):
            act = acts[name]
            examples, channels = _sample_kept(act.detach(), alpha.sum(dim=(2, 3)), self.masks_per_layer, generator)
            masks = minmax_normalise(resize_maps(act[examples, channels].unsqueeze(1), size))
            scores = targets.select(model(inputs[examples] * masks), examples)
            weights = scores / masks.sum(dim=(1, 2, 3)).clamp(min=1e-12)
            v = torch.zeros((n,) + size, dtype=inputs.dtype, device=inputs.device)
            block_maps.append(minmax_normalise(v.index_add(0, examples, masks[:, 0] * weights.view(-1, 1, 1))))
        return fuse_layer_maps(block_maps, "soft-otsu")

    def __repr__(self) -> str:
        return f"SoftSISESurrogate(layers={self.layers!r}, masks_per_layer={self.masks_per_layer})"


def _sample_kept(act: Tensor, alpha: Tensor, k: int, generator: Optional[torch.Generator]):
    """``(examples, channels)`` of up to ``k`` random kept maps per example (SISE's mu = 0 rule)."""
    flat = act.flatten(2)
    alive = (flat.amax(-1) - flat.amin(-1)) > 1e-12
    keep = (alpha > 0) & alive
    best = torch.where(alive, alpha, torch.full_like(alpha, -math.inf)).argmax(dim=1)
    keep[torch.arange(keep.shape[0]), best] |= ~keep.any(dim=1) & alive.any(dim=1)
    if generator is None:  # fresh masks at every call, never drawn from (or advancing) the caller's global RNG
        generator = make_generator(check_seed(None))
    noise = draw_uniform(keep.shape, generator).to(act.device)  # float32 whatever the default dtype
    rank = torch.where(keep, noise, torch.full_like(noise, 2.0)).argsort(dim=1).argsort(dim=1)
    chosen = keep & (rank < k)
    return chosen.nonzero(as_tuple=True)


#: ``name -> class`` of the explanations ``manipulate_model`` takes by name (read-only).
EXPLANATIONS: Mapping[str, Callable[[], DifferentiableExplanation]] = MappingProxyType({
    "grad_cam": GradCAMExplanation,
    "gradient": GradientExplanation,
    "soft_sise": SoftSISESurrogate,
})


def differentiable_explanation(explanation: Any, argument: str = "explanation") -> DifferentiableExplanation:
    """Resolve ``explanation`` (a name, a :class:`DifferentiableExplanation` or its class, or a callable).

    A class of ours stands for its default settings, as its name does. A
    Captum attribution object or class (``LayerGradCam``, ``Saliency``,
    ``SISE``, ...) is refused with a message saying why: it returns maps
    detached from the weights, so no fooling penalty can reach them.
    """
    from captum.attr import Attribution

    if isinstance(explanation, str):
        if explanation not in EXPLANATIONS:
            raise InvalidArgumentError(f"{argument} must be one of {tuple(EXPLANATIONS)} or a "
                                       f"DifferentiableExplanation, got {explanation!r}")
        return EXPLANATIONS[explanation]()
    if isinstance(explanation, DifferentiableExplanation):
        return explanation
    is_class = isinstance(explanation, type)
    if is_class and issubclass(explanation, DifferentiableExplanation):
        return explanation()
    if isinstance(explanation, Attribution) or (is_class and issubclass(explanation, Attribution)):
        why = ("SISE scores its masks without gradients and fuses them through a hard Otsu gate; "
               "use 'soft_sise' (SoftSISESurrogate) to attack it"
               if explanation.get_name() == "SISE" else
               "Captum attributions return maps detached from the model's weights")
        name = explanation.__name__ if is_class else type(explanation).__name__
        raise InvalidArgumentTypeError(
            f"{argument}: {name} is not differentiable with respect to the model's "
            f"weights ({why}); pass one of {tuple(EXPLANATIONS)} or a DifferentiableExplanation")
    if is_class:  # called as fn(model, inputs, target) it would build an object, never return maps
        raise InvalidArgumentTypeError(f"{argument}: the class {explanation.__name__} is neither a "
                                       "DifferentiableExplanation nor a function (model, inputs, target) -> maps")
    if callable(explanation):
        return _CallableExplanation(explanation)
    raise InvalidArgumentTypeError(f"{argument} must be a name, a DifferentiableExplanation or a callable "
                                   f"(model, inputs, target) -> maps, got {type(explanation).__name__}")


class _CallableExplanation(DifferentiableExplanation):
    """A user callable ``(model, inputs, target) -> [N, H, W]`` (or input-shaped, channels summed)."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.name = getattr(fn, "__name__", type(fn).__name__)

    def maps(self, model, inputs, targets, generator):
        out = self.fn(model, inputs, torch.tensor(targets.classes(), device=inputs.device))
        if not isinstance(out, Tensor) or out.dim() not in (3, 4):
            raise InvalidArgumentError(f"explanation {self.name!r} must return [N, H, W] or [N, C, H, W] maps")
        return out.sum(dim=1) if out.dim() == 4 else out

    def __repr__(self) -> str:
        return f"explanation({self.name})"


def check_differentiable(maps: Tensor, parameters: List[nn.Parameter], name: str) -> None:
    """Refuse a map that no loss can back-propagate into ``parameters``."""
    if not isinstance(maps, Tensor) or not maps.requires_grad:
        raise InvalidArgumentError(
            f"explanation {name!r} is not differentiable with respect to the model's weights: its maps carry "
            "no autograd graph (computed under no_grad, detached, or from a non-differentiable step)")
    grads = torch.autograd.grad(maps.sum(), parameters, retain_graph=True, allow_unused=True)
    if all(g is None or not bool(g.abs().sum() > 0) for g in grads):
        raise InvalidArgumentError(
            f"explanation {name!r} is not differentiable with respect to the model's weights: "
            "the gradient of its maps with respect to every weight is zero or absent")
