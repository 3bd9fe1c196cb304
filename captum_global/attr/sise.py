"""SISE: Semantic Input Sampling for Explanation (Sattarzadeh et al., AAAI 2021).

The algorithm, top to bottom (see ``docs/sise.md``):

1. one layer per convolutional block (``_layers.find_block_outputs``) unless
   the caller names them;
2. ONE forward and ONE backward pass give every selected layer's activations
   ``A`` and gradients; ``alpha_k`` is the spatial sum of the gradient of
   channel ``k``;
3. keep channel ``k`` when ``alpha_k > mu * max_k alpha_k`` and its map is not
   constant (optionally only the top maps by ``alpha``: the budget option);
4. each kept map, upsampled bilinearly and min-max normalised, is a mask ``m``;
   ``V = sum_m psi(baseline + m (I - baseline)) * m / sum(m)``, min-max
   normalised (scored in chunks of ``perturbations_per_eval`` masks; only the
   chunk being scored exists at full resolution);
5. the per-layer maps are fused from coarse to fine with Otsu gates
   (``_fusion.fuse_layer_maps``).
"""
import logging
import math
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from captum._utils.typing import BaselineType, TargetType
from captum.attr import PerturbationAttribution
from captum.log import log_usage

from captum_global._compat import (
    format_additional_forward_args,
    format_baselines,
    format_inputs,
    format_output,
    is_tuple,
)
from captum_global._maps import minmax_normalise, resize_maps
from captum_global._model_state import HookBag, find_module, preserved_model_state
from captum_global.attr._fusion import FUSIONS, fuse_layer_maps
from captum_global.attr._layers import find_block_outputs

__all__ = ["SISE"]

logger = logging.getLogger(__name__)
_EPS = 1e-12
_SCORES = ("logit", "softmax")


class SISE(PerturbationAttribution):
    r"""Semantic Input Sampling for Explanation (SISE).

    SISE explains a CNN's decision for a class with masks taken from the
    model's own feature maps at the end of every convolutional block. Maps
    whose average gradient supports the class are upsampled into smooth masks,
    each mask is scored by the model's confidence on the masked input (RISE
    with area-normalised weights), and the per-block maps are fused from coarse
    to fine so that deep blocks decide *where* and shallow blocks add detail.

    It is a :class:`~captum.attr.PerturbationAttribution`: the attribution
    values come only from forward passes on perturbed (masked) inputs;
    gradients are used once, to choose which masks to score. Use it where you
    use ``LayerGradCam``, ``Occlusion`` or a Score-CAM; it returns input-shaped
    attributions in [0, 1] (the map, broadcast over channels).

    Args:
        forward_func (nn.Module): the model; it must be an ``nn.Module`` since
            SISE hooks its layers.
        layers (list of nn.Module or str, optional): layers to read, as modules
            or dotted names, in any order (they are used in execution order).
            ``None`` picks one layer per convolutional block at the first call
            (see :func:`captum_global.attr.select_sise_layers`); the names are
            in ``repr(sise)`` and logged.
    """

    def __init__(self, forward_func: nn.Module, layers: Optional[List[Union[nn.Module, str]]] = None) -> None:
        if not isinstance(forward_func, nn.Module):
            raise TypeError(
                f"forward_func must be an nn.Module (SISE hooks its layers), got {type(forward_func).__name__}"
            )
        PerturbationAttribution.__init__(self, forward_func)
        self._auto: Dict[Tuple[int, int], List[str]] = {}
        self.layer_names: Optional[List[str]] = None
        if layers is not None:
            if isinstance(layers, (nn.Module, str)):
                layers = [layers]
            if len(layers) == 0:
                raise ValueError("layers must name at least one layer, or be None for automatic selection")
            names_of = {id(m): n for n, m in forward_func.named_modules()}
            self.layer_names = [
                names_of[id(find_module(forward_func, layer, "layers"))] for layer in layers
            ]

    @classmethod
    def get_name(cls) -> str:
        return "SISE"

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    def __repr__(self) -> str:
        if self.layer_names is not None:
            return f"SISE(layers={self.layer_names})"
        if self._auto:
            return f"SISE(layers=auto: {next(iter(self._auto.values()))})"
        return "SISE(layers=auto, chosen at the first attribute call)"

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        baselines: BaselineType = None,
        mu: float = 0.0,
        score: Union[str, Callable[[Tensor], Tensor]] = "logit",
        fusion: str = "otsu",
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
            target (int, list, Tensor): class index, one for all examples or one
                per example. Required when the model has several outputs.
            additional_forward_args (Any, optional): extra forward arguments;
                tensors whose first dimension is ``N`` follow their example.
            baselines (scalar, Tensor or tuple, optional): the "removed" value
                that masks blend towards: ``baseline + m * (x - baseline)``.
                Default 0 in the model's input space (for normalised inputs,
                pass the normalised black, or whatever "absent" means).
            mu (float): keep maps with ``alpha_k > mu * max_k alpha_k``. 0 (the
                paper's default) keeps the maps whose gradient supports the
                class. ``float('-inf')`` keeps every non-constant map.
            score (str or callable): ``psi``; ``"logit"`` (default) or
                ``"softmax"``, or a callable mapping the model output
                ``[N, classes]`` to scores of the same shape. Logit and
                probability gradients can differ in sign (a logit can rise
                while its probability falls), so the choice changes which maps
                are kept; the same ``psi`` scores the masks.
            fusion (str): ``"otsu"`` (hard Otsu gate, the paper),
                ``"soft-otsu"`` (sigmoid gate of the authors' code), ``"mean"``
                or ``"none"`` (highest block only).
            max_maps_per_layer (int or float, optional): budget. An int keeps at
                most that many surviving maps per layer and example, a float in
                (0, 1] that fraction (rounded up), choosing the largest
                ``alpha``. ``None`` scores every surviving map.
            perturbations_per_eval (int): masks scored per forward pass. Never
                changes the result (up to float rounding), only speed/memory.
            show_progress (bool): tqdm bar over the scoring chunks.
            return_layer_maps (bool): also return ``{layer name: [N, 1, H, W]}``,
                each block's normalised map ``V``, before fusion.

        Returns:
            attributions: input-shaped tensor (tuple if a tuple came in) in
            [0, 1]; with ``return_layer_maps`` a pair ``(attributions, maps)``.

        Every map is normalised per example; when no map of a layer survives
        the gradient filter, the map with the largest ``alpha`` is used alone;
        a layer whose maps are all constant contributes nothing (its gate is
        open) rather than NaN.

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
            >>> sise
            SISE(layers=auto: ['1', '4'])
            >>> attr, maps = sise.attribute(torch.rand(1, 3, 32, 32), target=1,
            ...                             return_layer_maps=True)
            >>> {name: tuple(v.shape) for name, v in maps.items()}
            {'1': (1, 1, 32, 32), '4': (1, 1, 32, 32)}
        """
        was_tuple = is_tuple(inputs)
        xs = format_inputs(inputs)
        _check_inputs(xs)
        bases = format_baselines(baselines, xs)
        args = format_additional_forward_args(additional_forward_args)
        psi = _score_function(score)
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if not isinstance(perturbations_per_eval, int) or perturbations_per_eval < 1:
            raise ValueError(f"perturbations_per_eval must be a positive int, got {perturbations_per_eval!r}")
        if mu != mu:
            raise ValueError("mu must be a number, got NaN")
        _check_budget(max_maps_per_layer)

        model = self.forward_func
        with preserved_model_state(model):
            names = self._layers_for(xs, args)
            acts, grads, targets = _gradient_pass(model, names, xs, args, target, psi)
            kept = [_keep(a, g, mu, max_maps_per_layer) for a, g in zip(acts.values(), grads)]
            maps = _score_masks(
                model, xs, bases, args, targets, psi, list(acts.values()), kept,
                perturbations_per_eval, show_progress,
            )
        fused = fuse_layer_maps(maps, fusion)
        out = tuple(fused.unsqueeze(1).to(x.dtype).expand_as(x).clone() for x in xs)
        attributions = format_output(was_tuple, out)
        if return_layer_maps:
            return attributions, {n: v.unsqueeze(1) for n, v in zip(acts, maps)}
        return attributions

    def _layers_for(self, xs: Tuple[Tensor, ...], args: Optional[Tuple]) -> List[str]:
        if self.layer_names is not None:
            return self.layer_names
        key = tuple(xs[0].shape[-2:])
        if key not in self._auto:
            n = xs[0].shape[0]
            probe = tuple(x[:1] for x in xs)
            probe_args = _index_args(args, n, slice(0, 1))
            self._auto[key] = [b.name for b in find_block_outputs(self.forward_func, probe, probe_args)]
            logger.info("SISE picked layers %s for %s inputs", self._auto[key], key)
        return self._auto[key]


def _check_inputs(xs: Tuple[Tensor, ...]) -> None:
    first = xs[0]
    for i, x in enumerate(xs):
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"inputs must be image batches [N, C, H, W]; input {i} has shape {shape}")
        if x.shape[0] != first.shape[0] or x.shape[-2:] != first.shape[-2:]:
            raise ValueError(
                f"inputs in a tuple must share N, H and W (one mask covers all); input {i} has shape "
                f"{tuple(x.shape)} against {tuple(first.shape)}"
            )
        if not torch.isfinite(x).all():
            raise ValueError(f"inputs must be finite; input {i} holds NaN or inf")


def _check_budget(budget: Union[None, int, float]) -> None:
    if budget is None:
        return
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise TypeError(f"max_maps_per_layer must be None, an int or a float, got {type(budget).__name__}")
    if isinstance(budget, int) and budget < 1 or isinstance(budget, float) and not 0 < budget <= 1:
        raise ValueError(
            f"max_maps_per_layer must be an int >= 1 or a fraction in (0, 1], got {budget!r}"
        )


def _score_function(score: Union[str, Callable[[Tensor], Tensor]]) -> Callable[[Tensor], Tensor]:
    if callable(score):
        return score
    if score == "logit":
        return lambda out: out
    if score == "softmax":
        return lambda out: out.softmax(dim=-1)
    raise ValueError(f"score must be one of {_SCORES} or a callable, got {score!r}")


def _index_args(args: Optional[Tuple], n: int, idx: Any) -> Optional[Tuple]:
    """Pick per-example entries of extra forward args (tensors with first dim ``n``)."""
    if args is None:
        return None
    return tuple(a[idx] if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == n else a for a in args)


def _target_tensor(target: TargetType, output: Tensor) -> Tensor:
    """Per-example target indices, validated against the model output."""
    n = output.shape[0]
    if output.dim() != 2:
        raise ValueError(f"SISE needs model outputs [N, classes], got shape {tuple(output.shape)}")
    classes = output.shape[1]
    if target is None:
        if classes != 1:
            raise ValueError(f"target is required: the model has {classes} outputs per example")
        target = 0
    if isinstance(target, tuple):
        raise ValueError("target must be an int, a list of ints or a tensor; tuple targets are not supported")
    t = torch.as_tensor(target, device=output.device)
    if t.is_floating_point() or t.is_complex():
        raise ValueError(f"target must hold integer class indices, got dtype {t.dtype}")
    t = t.long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"target must have one entry per example ({n}), got {t.numel()}")
    if ((t < 0) | (t >= classes)).any():
        raise ValueError(f"target out of range: classes are 0..{classes - 1}, got {t.tolist()}")
    return t


def _gradient_pass(model, names, xs, args, target, psi):
    """One forward + one backward: activations and gradients of every layer."""
    acts: Dict[str, Tensor] = {}

    def hook_for(name):
        def hook(module, inp, out):
            if not isinstance(out, Tensor) or out.dim() != 4:
                shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"layers: {name!r} must return an [N, C, h, w] map, got {shape}")
            if name in acts:
                raise ValueError(f"layers: {name!r} runs more than once per forward pass; pick a module used once")
            # a clone, so that later in-place ops cannot change what we differentiate
            acts[name] = out.clone()
            return acts[name]

        return hook

    with HookBag() as bag, torch.enable_grad():
        for name in names:
            bag.add(find_module(model, name, "layers").register_forward_hook(hook_for(name)))
        output = model(*(x.detach().requires_grad_(True) for x in xs), *(args or ()))
        missing = [n for n in names if n not in acts]
        if missing:
            raise ValueError(f"layers: {missing} did not run in the forward pass")
        targets = _target_tensor(target, output)
        # wrappers such as NoiseTunnel may call us under no_grad: score inside enable_grad
        scores = psi(output).gather(1, targets.unsqueeze(1)).sum()
        grads = torch.autograd.grad(scores, list(acts.values()))
    return {n: a.detach() for n, a in acts.items()}, [g.sum(dim=(2, 3)) for g in grads], targets


def _keep(act: Tensor, alpha: Tensor, mu: float, budget: Union[None, int, float]) -> Tensor:
    """``[N, K]`` bool: the maps that become masks (filter, fallback, budget)."""
    flat = act.flatten(2)
    alive = (flat.amax(-1) - flat.amin(-1)) > _EPS
    if mu == float("-inf"):
        keep = alive.clone()
    else:
        keep = (alpha > mu * alpha.amax(dim=1, keepdim=True)) & alive
    # nothing survived: fall back on the best non-constant map
    ranked = torch.where(alive, alpha, torch.full_like(alpha, -math.inf))
    best = torch.zeros_like(keep).scatter_(1, ranked.argmax(dim=1, keepdim=True), True)
    keep = torch.where(keep.any(dim=1, keepdim=True), keep, best & alive)
    if budget is not None:
        count = keep.sum(dim=1, keepdim=True)
        k = count.clamp(max=budget) if isinstance(budget, int) else (count * budget).ceil().long()
        order = torch.where(keep, alpha, torch.full_like(alpha, -math.inf)).argsort(dim=1, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
        keep = keep & (rank < k)
    return keep


def _score_masks(model, xs, bases, args, targets, psi, acts, kept, chunk, show_progress) -> List[Tensor]:
    """Score every kept mask; returns one ``[N, H, W]`` map per layer.

    The masks of all layers form one stream cut into chunks of ``chunk``
    masks, so every forward pass is full (a chunk may span two layers); only
    the chunk being scored is upsampled to full resolution.
    """
    n, size = xs[0].shape[0], tuple(xs[0].shape[-2:])
    device, dtype = xs[0].device, xs[0].dtype
    jobs = [k.nonzero(as_tuple=True) for k in kept]  # one host sync per layer
    bounds = [0]
    for ex, _ in jobs:
        bounds.append(bounds[-1] + len(ex))
    v = torch.zeros((len(acts) * n,) + size, device=device, dtype=dtype)
    with torch.no_grad(), tqdm(
        total=math.ceil(bounds[-1] / chunk), disable=not show_progress, desc="SISE masks"
    ) as bar:
        for s in range(0, bounds[-1], chunk):
            masks, rows = [], []
            for layer, (act, (ex, ch)) in enumerate(zip(acts, jobs)):
                lo, hi = max(s, bounds[layer]) - bounds[layer], min(s + chunk, bounds[layer + 1]) - bounds[layer]
                if lo >= hi:
                    continue
                low = act[ex[lo:hi], ch[lo:hi]].unsqueeze(1).to(dtype)
                masks.append(minmax_normalise(resize_maps(low, size)))
                rows.append(layer * n + ex[lo:hi])
            masks, rows = torch.cat(masks), torch.cat(rows)
            e = rows % n
            masked = tuple(_blend(x, b, e, masks) for x, b in zip(xs, bases))
            out = model(*masked, *(_index_args(args, n, e) or ()))
            sc = psi(out).gather(1, targets[e].unsqueeze(1)).to(dtype)
            weights = sc / masks.sum(dim=(1, 2, 3)).unsqueeze(1).clamp(min=_EPS)
            v.index_add_(0, rows, masks[:, 0] * weights.unsqueeze(-1))
            bar.update(1)
    return [minmax_normalise(part) for part in v.split(n)]


def _blend(x: Tensor, base: Union[Tensor, int, float], e: Tensor, masks: Tensor) -> Tensor:
    """``baseline + m * (x - baseline)`` for the examples ``e`` of a chunk."""
    if isinstance(base, Tensor) and base.dim() == x.dim() and base.shape[0] == x.shape[0]:
        base = base[e]
    x = x[e]
    return base + masks * (x - base)
