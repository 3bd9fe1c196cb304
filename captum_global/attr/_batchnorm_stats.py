"""BatchNorm statistics of a checkpoint that has none (private helper).

Class-wise synthesis runs the model in eval mode, so every BatchNorm layer
normalises with the running statistics stored in the checkpoint. A
checkpoint saved before the first training step (the initialisation, the
usual first point of a trajectory) has tracked no batch: its statistics are
the defaults (mean 0, variance 1), and in eval mode the network it describes
is not the one training saw (there, each layer normalised with its batch's
statistics). :func:`fill_population_statistics` replaces them by the real
data's population statistics at that checkpoint, computed exactly, layer
after layer in the order the model calls them (each layer's input is taken
with the earlier layers already normalised by theirs), one forward pass over
the data per layer, summed across processes under torch.distributed. The
result does not depend on the batch size (beyond float rounding).
"""
from __future__ import annotations

from typing import Callable, Iterable, List, Tuple

import torch
from torch import Tensor, nn
from torch.func import functional_call

from captum_global._model_state import HookBag
from captum_global.attr.classwise_types import WeightPoint
from captum_global.errors import InvalidArgumentError

__all__ = ["untracked_batchnorms", "fill_population_statistics"]


class _Stop(Exception):
    """Raised by the hook once the layer's input is read: the rest of the forward is not needed."""


def _batchnorms(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            and m.running_mean is not None]


def untracked_batchnorms(model: nn.Module, point: WeightPoint) -> bool:
    """True when ``point`` has BatchNorm layers that never tracked a batch."""
    return any(f"{n}.num_batches_tracked" in point and int(point[f"{n}.num_batches_tracked"]) == 0
               for n, _ in _batchnorms(model))


def _call_order(model: nn.Module, point: WeightPoint, example: Tensor) -> List[Tuple[str, nn.Module]]:
    order: List[Tuple[str, nn.Module]] = []
    with HookBag() as bag, torch.no_grad():
        for name, module in _batchnorms(model):
            bag.add(module.register_forward_pre_hook(
                lambda mod, args, name=name: order.append((name, mod)) if (name, mod) not in order else None))
        functional_call(model, point, (example.clone(),))
    return order


def fill_population_statistics(model: nn.Module, point: WeightPoint,
                               batches: Callable[[], Iterable[Tensor]]) -> WeightPoint:
    """``point`` with the running statistics of its BatchNorm layers set to
    the population statistics of the inputs ``batches()`` yields (called once
    per layer). The model is in eval mode; its hooks are removed on exit."""
    point = dict(point)
    first = next(iter(batches()), None)
    if first is None:
        raise InvalidArgumentError("data is empty: the loader yielded no batches")
    dist = torch.distributed
    world = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    for name, module in _call_order(model, point, first[:1]):
        sums: List[Tensor] = []

        def read(mod, args):
            x = args[0].detach().double()
            dims = [0] + list(range(2, x.dim()))
            count = torch.full((x.shape[1],), x.numel() / x.shape[1], dtype=x.dtype, device=x.device)
            sums.append(torch.stack([x.sum(dims), (x * x).sum(dims), count]))
            raise _Stop

        with HookBag() as bag, torch.no_grad():
            bag.add(module.register_forward_pre_hook(read))
            for x in batches():
                try:
                    functional_call(model, point, (x.clone(),))
                except _Stop:
                    pass
        total = torch.stack(sums).sum(0) if sums else torch.zeros(3, module.num_features, dtype=torch.float64)
        if world:
            dist.all_reduce(total)
        count = total[2].clamp_min(2)
        mean = total[0] / count
        var = (total[1] / count - mean ** 2).clamp_min(0) * count / (count - 1)  # unbiased, as BatchNorm keeps
        like = point[f"{name}.running_mean"]
        point[f"{name}.running_mean"] = mean.to(like.dtype)
        point[f"{name}.running_var"] = var.to(like.dtype)
    return point
