"""SISE: Semantic Input Sampling for Explanation (Sattarzadeh et al., AAAI 2021).

The algorithm, top to bottom (see ``docs/use/sise.md``):

1. one layer per convolutional block (``_layers.find_block_outputs``) unless
   the caller names them;
2. ONE forward and ONE backward pass give every selected layer's activations
   ``A`` and gradients; ``alpha_k`` is the spatial sum of the gradient of
   channel ``k`` (``_sise_scoring.gradient_pass``);
3. keep channel ``k`` when ``alpha_k > mu * max_k alpha_k`` and its map is not
   constant (optionally only the top maps by ``alpha``: the budget option);
4. near-duplicate maps are grouped and only one representative per group is
   scored (``_mask_groups``; off with ``similarity_threshold=None``);
5. each kept map, upsampled bilinearly and min-max normalised, is a mask ``m``;
   ``V = sum_m psi(baseline + m (I - baseline)) * m / sum(m)`` (a grouped map
   uses its representative's score), min-max normalised, scored in chunks of
   ``perturbations_per_eval`` masks by the shared scorer;
6. the per-layer maps are fused from coarse to fine (``_fusion``).
"""
import logging
import numbers
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from captum.attr import PerturbationAttribution
from captum.log import log_usage

from captum_global._checks import (
    check_bool,
    check_choice,
    check_inputs,
    check_int,
    check_model_weights,
    check_module,
    check_number,
    check_tensor,
)
from captum_global._compat import BaselineType, TargetType, format_additional_forward_args, format_output, is_tuple
from captum_global._model_state import find_module, preserved_model_state
from captum_global._scoring import class_softmax, index_additional_args
from captum_global._seeding import cuda_devices, preserved_global_rng
from captum_global._targets import parse_target
from captum_global.attr._fusion import DEFAULT_FUSION, FUSIONS, fuse_layer_maps, hard_gate, soft_gate
from captum_global.attr._layers import (
    BlockOutput,
    eager_module,
    find_block_outputs,
    select_sise_layers,
)
from captum_global.attr._mask_groups import group_kept_maps
from captum_global.attr._sise_scoring import gradient_pass, score_layer_maps
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError

# The steps of SISE a user can run on their own layers and maps: block
# discovery (which layers SISE would explain) and the cascaded fusion.
__all__ = [
    "SISE",
    "DEFAULT_SIMILARITY_THRESHOLD",
    "select_sise_layers",
    "find_block_outputs",
    "BlockOutput",
    "fuse_layer_maps",
    "hard_gate",
    "soft_gate",
    "FUSIONS",
    "DEFAULT_FUSION",
]

logger = logging.getLogger(__name__)
_SCORES = ("logit", "softmax")

#: Default ``similarity_threshold``: maps correlating at least this much with
#: a scored map share its score (see ``docs/measurements/sise.md`` for the choice).
DEFAULT_SIMILARITY_THRESHOLD = 0.2


class SISE(PerturbationAttribution):
    r"""Semantic Input Sampling for Explanation (SISE).

    SISE explains a CNN's decision for a class with masks taken from the
    model's own feature maps at the end of every convolutional block. Maps
    whose average gradient supports the class are upsampled into smooth masks,
    each mask is scored by the model's confidence on the masked input (RISE
    with area-normalised weights), and the per-block maps are fused from coarse
    to fine so that deep blocks decide *where* and shallow blocks add detail.
    Near-duplicate masks share one forward pass (``similarity_threshold``).

    It is a :class:`~captum.attr.PerturbationAttribution`: the attribution
    values come only from forward passes on perturbed (masked) inputs;
    gradients are used once, to choose which masks to score. Use it where you
    use ``LayerGradCam``, ``Occlusion`` or a Score-CAM; it returns input-shaped
    attributions in [0, 1] (the map, broadcast over channels).

    Args:
        forward_func (nn.Module): the model; it must be an ``nn.Module`` since
            SISE hooks its layers. A model made by ``torch.compile`` works (its
            layers are hooked on the original module for the one gradient
            pass; the masked inputs go through the compiled model). TorchScript
            modules are refused: their layers cannot be hooked.
        layers (list of nn.Module or str, optional): layers to read, as modules
            or dotted names, in any order (they are used in execution order).
            ``None`` picks one layer per convolutional block at every call
            (see :func:`captum_global.attr.select_sise_layers` and
            :meth:`selected_layers`).
    """

    def __init__(self, forward_func: nn.Module, layers: Optional[List[Union[nn.Module, str]]] = None) -> None:
        check_module(forward_func, "forward_func", "SISE hooks its layers")
        eager = eager_module(forward_func, "forward_func", "SISE")
        PerturbationAttribution.__init__(self, forward_func)
        self.layer_names: Optional[List[str]] = None
        if layers is not None:
            if isinstance(layers, (nn.Module, str)):
                layers = [layers]
            if len(layers) == 0:
                raise InvalidArgumentError("layers must name at least one layer, or be None for automatic selection")
            names_of = {id(m): n for n, m in eager.named_modules()}
            self.layer_names = [names_of[id(_resolve_layer(forward_func, eager, layer))] for layer in layers]

    @classmethod
    def get_name(cls) -> str:
        return "SISE"

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    def __repr__(self) -> str:
        if self.layer_names is not None:
            return f"SISE(layers={self.layer_names})"
        return "SISE(layers=auto)"

    def selected_layers(self, inputs: Union[Tensor, Tuple[Tensor, ...]], additional_forward_args: Any = None) -> List[str]:
        """The dotted names of the layers :meth:`attribute` reads for ``inputs``.

        The layers given to the constructor, or the automatic choice for
        inputs of this size (one forward pass of the first example).

        Examples::

            >>> import torch, torchvision
            >>> from captum_global.attr import SISE
            >>> SISE(torchvision.models.resnet18()).selected_layers(torch.zeros(1, 3, 64, 64))
            ['relu', 'layer1', 'layer2', 'layer3', 'layer4']
        """
        if self.layer_names is not None:
            return list(self.layer_names)
        xs = check_inputs(inputs, finite=False)
        n = xs[0].shape[0]
        probe = tuple(x[:1] for x in xs)
        probe_args = index_additional_args(format_additional_forward_args(additional_forward_args),
                                           torch.zeros(1, dtype=torch.long), n)
        names = select_sise_layers(eager_module(self.forward_func), probe, probe_args)
        logger.info("SISE picked layers %s for %s inputs", names, tuple(xs[0].shape[-2:]))
        return names

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        baselines: BaselineType = None,
        mu: float = 0.0,
        score: Union[str, Callable[[Tensor], Tensor]] = "logit",
        fusion: str = DEFAULT_FUSION,
        similarity_threshold: Optional[float] = DEFAULT_SIMILARITY_THRESHOLD,
        max_maps_per_layer: Union[None, int, float] = None,
        perturbations_per_eval: int = 32,
        show_progress: bool = False,
        return_layer_maps: bool = False,
    ) -> Union[Tensor, Tuple[Tensor, ...], Tuple[Any, Dict[str, Tensor]]]:
        r"""
        Args:
            inputs (Tensor or tuple of Tensor): image batch ``[N, C, H, W]``.
                A tuple may hold several image tensors with the same ``N, H, W``
                (e.g. two modalities): every mask multiplies all of them, and
                each gets the same map. Non-image inputs belong in
                ``additional_forward_args``.
            target (int, tuple, list, Tensor): the output to explain, in every
                format Captum accepts (``2``, ``-1``, ``(2,)``, one per
                example as a list or tensor). Required when the model has
                several outputs.
            additional_forward_args (Any, optional): extra forward arguments;
                tensors whose first dimension is ``N`` follow their example.
            baselines (scalar, Tensor or tuple, optional): the "removed" value
                that masks blend towards: ``baseline + m * (x - baseline)``.
                Default 0 in the model's input space (for normalised inputs,
                pass the normalised black, or whatever "absent" means). A
                tensor has the input's shape or broadcasts to it; a tuple
                gives one per input.
            mu (float): keep maps with ``alpha_k > mu * max_k alpha_k``. 0 (the
                paper's default) keeps the maps whose gradient supports the
                class. ``float('-inf')`` keeps every non-constant map.
            score (str or callable): ``psi``; ``"logit"`` (default: the
                model's output, as the paper), ``"softmax"`` (the class
                probability: softmax over dimension 1, which needs at least
                two classes), or a differentiable callable mapping the model
                output to scores of the same shape. The same ``psi`` filters
                the maps (its gradient) and scores the masks.
            fusion (str): how block maps are fused, coarse deciding where:
                ``"otsu-normalised"`` (default: hard Otsu gates, each block
                weighing as much as all finer blocks together), ``"otsu"``
                (hard Otsu gates, every block weighing the same: the paper),
                ``"soft-otsu"`` (sigmoid gates of the authors' code),
                ``"mean"`` or ``"none"`` (highest block only).
            similarity_threshold (float or None): maps whose low-resolution
                maps correlate at least this much with a scored map of the
                same layer share its score (one forward pass per group).
                ``None`` scores every kept map (the paper). Default 0.2.
            max_maps_per_layer (int or float, optional): budget. An int keeps at
                most that many surviving maps per layer and example, a float in
                (0, 1] that fraction (rounded up), choosing the largest
                ``alpha``; the others are dropped. ``None``: no budget.
            perturbations_per_eval (int): masks scored per forward pass. Never
                changes the result (up to float rounding), only speed/memory.
            show_progress (bool): tqdm bar over the scoring chunks.
            return_layer_maps (bool): also return ``{layer name: [N, 1, H, W]}``,
                each block's normalised map ``V``, before fusion.

        Returns:
            attributions: input-shaped tensor (tuple if a tuple came in) in
            [0, 1]; with ``return_layer_maps`` a pair ``(attributions, maps)``.

        Every map is normalised per example; when no map of a layer survives
        the gradient filter, the map with the largest ``alpha`` is used alone.
        A layer whose masks all score what the unmasked input scores carries
        no signal: its map is zero (and leaves the fusion gate open), so a
        model that ignores its input gets an all-zero explanation.

        Examples::

            >>> import torch
            >>> from torch import nn
            >>> from captum_global.attr import SISE
            >>> net = nn.Sequential(
            ...     nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            ...     nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
            ...     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
            >>> sise = SISE(net)
            >>> attr = sise.attribute(torch.rand(2, 3, 32, 32), target=[0, 2])
            >>> attr.shape
            torch.Size([2, 3, 32, 32])
            >>> sise.selected_layers(torch.rand(1, 3, 32, 32))
            ['1', '4']
            >>> attr, maps = sise.attribute(torch.rand(1, 3, 32, 32), target=1,
            ...                             return_layer_maps=True)
            >>> {name: tuple(v.shape) for name, v in maps.items()}
            {'1': (1, 1, 32, 32), '4': (1, 1, 32, 32)}
        """
        was_tuple = is_tuple(inputs)
        xs = _check_inputs(inputs)
        n = xs[0].shape[0]
        bases = _check_baselines(baselines, xs)
        args = format_additional_forward_args(additional_forward_args)
        targets = parse_target(target, n)
        psi = _score_function(score)
        fusion = check_choice(fusion, "fusion", FUSIONS)
        mu = check_number(mu, "mu", allow_infinite=True)
        threshold = None if similarity_threshold is None else check_number(
            similarity_threshold, "similarity_threshold", -1.0, 1.0)
        budget = _check_budget(max_maps_per_layer)
        chunk = check_int(perturbations_per_eval, "perturbations_per_eval", minimum=1)
        check_bool(show_progress, "show_progress")
        check_bool(return_layer_maps, "return_layer_maps")

        model = self.forward_func
        eager = eager_module(model, "forward_func", "SISE")
        check_model_weights(model, autograd=True)
        # SISE draws nothing; a model that draws from the global RNG (MC dropout) leaves the caller's state as it was
        with preserved_model_state(model), preserved_global_rng(cuda_devices(model, *xs)):
            names = self.selected_layers(xs, args)
            acts, alphas, targets, unmasked = gradient_pass(eager, names, xs, args, targets, psi)
            layer_acts = list(acts.values())
            reps = [
                group_kept_maps(a, _keep(a, g, mu, budget), g, threshold) for a, g in zip(layer_acts, alphas)
            ]
            maps = score_layer_maps(model, xs, bases, args, targets, psi, layer_acts, reps, unmasked,
                                    chunk, show_progress)
        fused = fuse_layer_maps(maps, fusion)
        out = tuple(fused.unsqueeze(1).to(x.dtype).expand_as(x).clone() for x in xs)
        attributions = format_output(was_tuple, out)
        if return_layer_maps:
            return attributions, {name: v.unsqueeze(1) for name, v in zip(acts, maps)}
        return attributions


def _resolve_layer(model: nn.Module, eager: nn.Module, layer: Union[nn.Module, str]) -> nn.Module:
    """``layer`` as a module of the eager model; names copied from a compiled
    model's ``named_modules()`` carry an ``_orig_mod.`` prefix, which is dropped."""
    prefix = "_orig_mod."
    if isinstance(layer, str) and eager is not model and layer.startswith(prefix):
        layer = layer[len(prefix):]
    return find_module(eager, layer, "layers")


def _check_inputs(inputs: Any) -> Tuple[Tensor, ...]:
    xs = check_inputs(inputs, image_batch=True, floating=True)
    for i, x in enumerate(xs[1:], start=1):
        if x.shape[0] != xs[0].shape[0] or x.shape[-2:] != xs[0].shape[-2:]:
            raise InvalidArgumentError(
                f"inputs in a tuple must share N, H and W (one mask covers all); inputs[{i}] has shape "
                f"{tuple(x.shape)} against {tuple(xs[0].shape)}"
            )
    return xs


def _check_baselines(baselines: BaselineType, xs: Tuple[Tensor, ...]) -> Tuple[Union[Tensor, float], ...]:
    """One finite baseline per input: a number, or a tensor broadcasting to the input's shape."""
    if baselines is None:
        return tuple(0.0 for _ in xs)
    given = baselines if isinstance(baselines, tuple) else (baselines,)
    if len(given) != len(xs):
        raise InvalidArgumentError(
            f"baselines must give one baseline per input: {len(xs)} input(s), {len(given)} baseline(s)"
        )
    checked: List[Union[Tensor, float]] = []
    for i, (b, x) in enumerate(zip(given, xs)):
        name = "baselines" if len(xs) == 1 else f"baselines[{i}]"
        if isinstance(b, Tensor):
            b = check_tensor(b, name, nonempty=False)
            try:
                fits = torch.broadcast_shapes(b.shape, x.shape) == x.shape
            except RuntimeError:
                fits = False
            if not fits:
                raise InvalidArgumentError(
                    f"{name} of shape {tuple(b.shape)} does not fit inputs of shape {tuple(x.shape)}: give a "
                    "number, a tensor of the input's shape, or one that broadcasts to it (e.g. [1, C, H, W])"
                )
            checked.append(b.to(device=x.device, dtype=x.dtype))
        else:
            checked.append(check_number(b, name))
    return tuple(checked)


def _check_budget(budget: Any) -> Union[None, int, float]:
    if budget is None:
        return None
    if isinstance(budget, (numbers.Integral, np.integer)) and not isinstance(budget, (bool, np.bool_)):
        return check_int(budget, "max_maps_per_layer", minimum=1)
    if isinstance(budget, (numbers.Real, np.floating)) and not isinstance(budget, (bool, np.bool_)):
        value = check_number(budget, "max_maps_per_layer")
        if not 0 < value <= 1:
            raise InvalidArgumentError(
                f"max_maps_per_layer must be an int >= 1 or a fraction in (0, 1], got {budget!r}"
            )
        return value
    raise InvalidArgumentTypeError(
        f"max_maps_per_layer must be None, an int or a float, got {type(budget).__name__} {budget!r}"
    )


def _score_function(score: Union[str, Callable[[Tensor], Tensor]]) -> Callable[[Tensor], Tensor]:
    if callable(score):
        return _checked_score(score)
    if score == "logit":
        return lambda out: out
    if score == "softmax":
        # over dimension 1, the classes: the one softmax rule of RISE and the metrics
        return lambda out: class_softmax(out, "score='softmax'", "score='logit'")
    raise InvalidArgumentError(f"score must be one of {_SCORES} or a callable, got {score!r}")



def _checked_score(psi: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """A user's ``score`` callable, held to its contract: same shape, finite on finite outputs."""

    def apply(output: Tensor) -> Tensor:
        scores = psi(output)
        if not isinstance(scores, Tensor) or scores.shape != output.shape:
            got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise InvalidArgumentError(
                f"score must return a tensor of the model output's shape {tuple(output.shape)}, got {got}"
            )
        finite_rows = torch.isfinite(output).reshape(output.shape[0], -1).all(dim=1)
        bad = finite_rows & ~torch.isfinite(scores).reshape(scores.shape[0], -1).all(dim=1)
        if bool(bad.any()):
            raise InvalidArgumentError(
                f"score returned NaN or infinity for finite model outputs (rows {bad.nonzero().flatten()[:8].tolist()})"
            )
        return scores

    return apply


def _keep(act: Tensor, alpha: Tensor, mu: float, budget: Union[None, int, float]) -> Tensor:
    """``[N, K]`` bool: the maps that become masks (filter, fallback, budget)."""
    flat = act.flatten(2)
    alive = (flat.amax(-1) - flat.amin(-1)) > 1e-12
    if mu == float("-inf"):
        keep = alive.clone()
    else:
        keep = (alpha > mu * alpha.amax(dim=1, keepdim=True)) & alive
    # nothing survived: fall back on the best non-constant map
    ranked = torch.where(alive, alpha, torch.full_like(alpha, -float("inf")))
    best = torch.zeros_like(keep).scatter_(1, ranked.argmax(dim=1, keepdim=True), True)
    keep = torch.where(keep.any(dim=1, keepdim=True), keep, best & alive)
    if budget is not None:
        count = keep.sum(dim=1, keepdim=True)
        k = count.clamp(max=budget) if isinstance(budget, int) else (count * budget).ceil().long()
        order = torch.where(keep, alpha, torch.full_like(alpha, -float("inf"))).argsort(
            dim=1, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
        keep = keep & (rank < k)
    return keep
