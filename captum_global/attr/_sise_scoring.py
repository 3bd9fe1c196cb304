"""SISE's passes over the model: the gradient pass and the scoring of masks (private).

- :func:`gradient_pass`: one forward and one backward pass with hooks on the
  selected layers: their activations, ``alpha`` (spatial sums of the
  gradient of the target score) and the target score of the unmasked input.
- :func:`score_layer_maps`: the masked inputs ``b + m (x - b)`` of the
  representative maps, scored in chunks through the shared scorer
  (:func:`captum_global._scoring.iter_scores`, the masks travel as its
  payload); every kept map then adds ``score(rep) * m / sum(m)`` to its layer
  map ``V`` (for a representative its own score). A layer whose scores all
  equal the unmasked input's carries no signal and gives a zero map.
"""
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from captum_global._checks import check_finite_output, check_model_output
from captum_global._maps import NO_SIGNAL_RTOL, minmax_normalise, resize_maps
from captum_global._model_state import HookBag, autograd_on, find_module
from captum_global._scoring import iter_scores
from captum_global._targets import TargetIndex
from captum_global.attr._layers import check_layer_map
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError

__all__ = ["gradient_pass", "score_layer_maps"]

_EPS = 1e-12


def gradient_pass(
    model: nn.Module,
    names: List[str],
    xs: Tuple[Tensor, ...],
    args: Optional[Tuple],
    targets: TargetIndex,
    psi: Callable[[Tensor], Tensor],
) -> Tuple[Dict[str, Tensor], List[Tensor], TargetIndex, Tensor]:
    """Activations ``{name: [N, K, h, w]}``, ``alpha`` per layer ``[N, K]``, the checked
    targets and the ``[N]`` target scores of the unmasked inputs."""
    acts: Dict[str, Tensor] = {}
    image_hw = (int(xs[0].shape[-2]), int(xs[0].shape[-1]))

    def hook_for(name):
        def hook(module, inp, out):
            check_layer_map(name, out, image_hw)
            if name in acts:
                raise InvalidArgumentError(
                    f"layers: {name!r} runs more than once per forward pass; pick a module used once"
                )
            # a clone, so that later in-place ops on ``out`` cannot change what we differentiate; the
            # model goes on with another clone, so that an in-place op right after the layer (a
            # ReLU(inplace=True) after a hooked convolution) does not overwrite the layer's own output
            acts[name] = out.clone()
            return acts[name].clone()

        return hook

    # wrappers such as NoiseTunnel may call us under no_grad, users under inference_mode
    with HookBag() as bag, autograd_on():
        for name in names:
            module = find_module(model, name, "layers")
            if isinstance(module, torch.jit.ScriptModule):
                raise InvalidArgumentTypeError(
                    f"layers: {name!r} is a TorchScript module, whose forward hooks are not supported; "
                    "pick an eager module"
                )
            bag.add(module.register_forward_hook(hook_for(name)))
        # a copy of each input (a non-leaf, in the graph): a model that normalises its input in place
        # (x.sub_(mean)) neither fails on a leaf that requires grad nor changes the caller's tensor
        output = model(*(x.detach().requires_grad_(True).clone() for x in xs), *(args or ()))
        output = check_model_output(output)
        check_finite_output(output, "SISE", "the gradient pass (the unmasked inputs)")
        missing = [n for n in names if n not in acts]
        if missing:
            raise InvalidArgumentError(f"layers: {missing} did not run in the forward pass")
        targets = targets.checked(tuple(output.shape))
        scores = targets.select(psi(output))
        frozen = [n for n, a in acts.items() if not a.requires_grad]
        if frozen:
            raise InvalidArgumentError(
                f"layers: {frozen} run without autograd inside forward_func (under torch.no_grad(), "
                "torch.inference_mode() or on detached tensors), so SISE cannot take the gradient it filters "
                "their maps by; pick layers that run with autograd (layers=[...]) or drop the no_grad block"
            )
        if not output.requires_grad:
            # no autograd path from any layer to the output (a constant model, or one ending in argmax or
            # detach): the gradient is zero, as for a layer the output does not use
            grads = [None] * len(acts)
        else:
            try:
                grads = torch.autograd.grad(scores.sum(), list(acts.values()), allow_unused=True)
            except RuntimeError as e:
                raise InvalidArgumentError(
                    f"score must be differentiable in the model output (SISE filters maps by its gradient): {e}"
                ) from None
    alphas = [
        torch.zeros(a.shape[:2], dtype=a.dtype, device=a.device) if g is None else g.sum(dim=(2, 3))
        for a, g in zip(acts.values(), grads)
    ]
    return {n: a.detach() for n, a in acts.items()}, alphas, targets, scores.detach()


def _blend(x: Tensor, base: Union[Tensor, float], e: Tensor, masks: Tensor) -> Tensor:
    """``baseline + m * (x - baseline)`` for the examples ``e`` of a chunk."""
    if isinstance(base, Tensor) and base.dim() == x.dim() and base.shape[0] == x.shape[0]:
        base = base[e]
    x = x[e]
    return base + masks * (x - base)


def _masks(act: Tensor, ex: Tensor, ch: Tensor, size: Tuple[int, int], dtype: torch.dtype) -> Tensor:
    """Upsampled, min-max normalised masks ``[B, 1, H, W]`` of maps ``(ex, ch)``."""
    return minmax_normalise(resize_maps(act[ex, ch].unsqueeze(1).to(dtype), size))


def score_layer_maps(
    model: Any,
    xs: Tuple[Tensor, ...],
    bases: Tuple[Union[Tensor, float], ...],
    args: Optional[Tuple],
    targets: TargetIndex,
    psi: Callable[[Tensor], Tensor],
    acts: List[Tensor],
    reps: List[Tensor],
    unmasked: Tensor,
    chunk: int,
    show_progress: bool,
) -> List[Tensor]:
    """One normalised ``[N, H, W]`` map ``V`` per layer.

    ``reps[l]`` is ``[N, K]``: for each kept map the channel of its
    representative (itself when scored), ``-1`` for maps not kept. The
    representatives of all layers form one stream cut into chunks of
    ``chunk`` masks, so every forward pass is full (a chunk may span two
    layers); only the chunk being scored exists at full resolution.
    """
    n, size = xs[0].shape[0], tuple(xs[0].shape[-2:])
    device, dtype = xs[0].device, xs[0].dtype
    channels = [torch.arange(r.shape[1], device=r.device).expand_as(r) for r in reps]
    jobs = [((r == c) & (r >= 0)).nonzero(as_tuple=True) for r, c in zip(reps, channels)]  # one sync per layer
    bounds = [0]
    for ex, _ in jobs:
        bounds.append(bounds[-1] + len(ex))
    v = torch.zeros((len(acts) * n,) + size, device=device, dtype=dtype)
    scores = [torch.zeros(r.shape, device=device, dtype=dtype) for r in reps]
    base_score = unmasked.to(device, dtype).repeat(len(acts))
    low, high = base_score.clone(), base_score.clone()

    def build(flat: Tensor):
        start, stop = int(flat[0]), int(flat[-1]) + 1
        masks, rows, where = [], [], []
        for layer, (act, (ex, ch)) in enumerate(zip(acts, jobs)):
            lo, hi = max(start, bounds[layer]) - bounds[layer], min(stop, bounds[layer + 1]) - bounds[layer]
            if lo >= hi:
                continue
            masks.append(_masks(act, ex[lo:hi], ch[lo:hi], size, dtype))
            rows.append(layer * n + ex[lo:hi])
            where.append((layer, ex[lo:hi], ch[lo:hi]))
        masks, rows = torch.cat(masks), torch.cat(rows)
        e = rows % n
        return tuple(_blend(x, b, e, masks) for x, b in zip(xs, bases)), e, (masks, rows, where)

    chunks = iter_scores(model, bounds[-1], build, targets, args, transform=psi, chunk_size=chunk,
                         chunk_argument="perturbations_per_eval", show_progress=show_progress, what="SISE masks")
    for scored in chunks:
        masks, rows, where = scored.payload
        sc = scored.scores.to(dtype)
        weights = sc / masks.sum(dim=(1, 2, 3)).clamp(min=_EPS)
        v.index_add_(0, rows, masks[:, 0] * weights.view(-1, 1, 1))
        low.scatter_reduce_(0, rows, sc, "amin")
        high.scatter_reduce_(0, rows, sc, "amax")
        offset = 0
        for layer, ex, ch in where:
            scores[layer][ex, ch] = sc[offset:offset + len(ex)]
            offset += len(ex)
    # maps that share a representative's score: their own mask, its score
    for layer, (act, r, c) in enumerate(zip(acts, reps, channels)):
        ex, ch = ((r != c) & (r >= 0)).nonzero(as_tuple=True)
        for s in range(0, len(ex), chunk):
            e, k = ex[s:s + chunk], ch[s:s + chunk]
            masks = _masks(act, e, k, size, dtype)
            weights = scores[layer][e, r[e, k]] / masks.sum(dim=(1, 2, 3)).clamp(min=_EPS)
            v.index_add_(0, layer * n + e, masks[:, 0] * weights.view(-1, 1, 1))
    # scores that never move from the unmasked input's carry no signal: a zero map, not mask coverage
    still = (high - low) <= NO_SIGNAL_RTOL * torch.maximum(high.abs(), low.abs())
    v = torch.where(still.view(-1, 1, 1), torch.zeros_like(v), v)
    return [minmax_normalise(part) for part in v.split(n)]

