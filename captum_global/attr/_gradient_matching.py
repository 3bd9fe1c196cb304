"""Gradient matching: the distance, and the per-class real-gradient targets.

Private helper of :mod:`captum_global.attr.classwise`. Two pieces live here
so they can be tested on their own:

- :func:`gradient_distance`, the layer-wise distance of dataset condensation
  by gradient matching (per output unit ``1 - cos`` of gradient rows,
  summed; 1-D parameters such as biases and BatchNorm affines are left out);
- :func:`stream_class_gradients`, one streaming pass over a dataset that
  returns, for every requested class and every weight point (each
  checkpoint of a trajectory, or the model's own weights), the gradient of
  the *mean* training loss over all examples of that class, all-reduced
  across processes.

Gradients are taken with :func:`torch.func.functional_call` on detached
copies of the weights, so the caller's parameters, their ``requires_grad``
flags and their ``.grad`` fields are never touched.
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader, Dataset, Subset

from captum_global._checks import check_finite_output, check_model_output
from captum_global._model_state import find_module
from captum_global._seeding import draw_uniform
from captum_global.attr.classwise_types import ClassGradients, WeightPoint
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError

__all__ = [
    "DISTANCES",
    "forward_on",
    "first_batch",
    "gradient_distance",
    "twice_differentiable",
    "validate_classes",
    "matched_parameter_names",
    "class_gradient",
    "used_weight_names",
    "make_loader",
    "split_batch",
    "stream_class_features",
    "stream_class_gradients",
]

DISTANCES = ("cosine", "mse")
# Keeps 0/0 rows finite. Far below the condensation paper's 1e-6: a trained,
# confident model has weight-gradient rows of norm ~1e-4, where a 1e-6 guard
# on the product of norms turns the cosine into a scaled dot product.
_EPS = 1e-20


def _rows(g: Tensor) -> Tensor:
    """A weight gradient as one row per output unit (conv: out x in*kh*kw)."""
    return g.reshape(g.shape[0], -1)


def gradient_distance(g_syn: Sequence[Tensor], g_real: Sequence[Tensor], distance: str = "cosine") -> Tensor:
    """Distance between two lists of weight gradients (same order and shapes).

    ``"cosine"``: for every tensor and every output unit (row), ``1 - cos``
    between the synthetic and real gradient rows, summed over rows and
    tensors. ``"mse"``: sum of squared differences over all entries (the
    condensation paper's "mse"). 1-D tensors contribute nothing to either.
    """
    if distance not in DISTANCES:
        raise InvalidArgumentError(f"distance must be one of {DISTANCES}, got {distance!r}")
    if len(g_syn) != len(g_real):
        raise InvalidArgumentError(f"got {len(g_syn)} synthetic and {len(g_real)} real gradients")
    total = g_syn[0].new_zeros(())
    for a, b in zip(g_syn, g_real):
        if a.shape != b.shape:
            raise InvalidArgumentError(f"gradient shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
        if a.dim() < 2:
            continue
        a, b = _rows(a), _rows(b)
        if distance == "cosine":
            cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(_EPS)
            total = total + (1 - cos).sum()
        else:
            total = total + ((a - b) ** 2).sum()
    return total


class _HardsigmoidTwice(TorchFunctionMode):
    """``F.hardsigmoid(x)`` as ``relu6(x + 3) / 6``: the same values, but PyTorch
    implements no second derivative of ``hardsigmoid_backward`` (MobileNetV3's
    squeeze-excitation gates), and gradient matching differentiates the
    training gradient once more."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.hardsigmoid:
            return F.relu6(args[0] + 3) / 6
        return func(*args, **(kwargs or {}))


def forward_on(model: nn.Module, state: WeightPoint, inputs: Tensor) -> Any:
    """``functional_call(model, state, (inputs,))``, safe from a model whose first
    operation works in place (``nn.ReLU(inplace=True)`` first, ``x.sub_(mean)``).

    Inputs without a graph, and (views of) the optimised leaves, are passed as
    a copy (the same values and kernels: results are unchanged). A tensor
    computed from the leaves (the spectrum's pixels, an augmentation) is
    passed as is, to keep the graph exactly as it is; a model that changes
    it in place would corrupt the synthetic inputs, and is refused.
    """
    base = inputs if inputs._base is None else inputs._base
    if not inputs.requires_grad or (base.is_leaf and base.requires_grad):
        return functional_call(model, state, (inputs.clone(),))
    version = inputs._version
    out = functional_call(model, state, (inputs,))
    if inputs._version != version:
        raise InvalidArgumentError(
            "model changed its input in place (e.g. nn.ReLU(inplace=True) or x.sub_() as its first operation); "
            "with parametrization='spectrum' or an augment this would corrupt the synthetic inputs: make the "
            "model's first operation out of place (x = x - mean, nn.ReLU(inplace=False))")
    return out


def twice_differentiable(model: nn.Module):
    """A context in which ``model``'s forward pass can be differentiated twice
    (a no-op unless it holds ``nn.Hardsigmoid`` modules)."""
    if any(isinstance(m, nn.Hardsigmoid) for m in model.modules()):
        return _HardsigmoidTwice()
    return contextlib.nullcontext()


def matched_parameter_names(model: nn.Module, parameters) -> List[str]:
    """Names of the weights (>= 2-D parameters) whose gradients are matched.

    ``parameters`` is None (every weight of the model) or a list of
    submodules / dotted submodule names, whose weights (recursively) are used.
    """
    if parameters is None:
        names = [n for n, p in model.named_parameters() if p.dim() >= 2]
    else:
        if isinstance(parameters, (str, nn.Module)):
            parameters = [parameters]
        prefix = {id(m): n for n, m in model.named_modules()}
        names = []
        for item in parameters:
            try:
                module = find_module(model, item, argument="parameters")
            except ValueError as err:
                raise InvalidArgumentError(str(err)) from None
            base = prefix[id(module)]
            for n, p in module.named_parameters():
                full = f"{base}.{n}" if base else n
                if p.dim() >= 2 and full not in names:
                    names.append(full)
    if not names:
        raise InvalidArgumentError(
            "parameters selects no weight with two or more dimensions (biases and "
            "BatchNorm affines are not matched); name modules with conv/linear weights"
        )
    return names


def class_gradient(
    model: nn.Module,
    point: WeightPoint,
    names: Sequence[str],
    inputs: Tensor,
    label: int,
    create_graph: bool = False,
    reduction: str = "mean",
    where: str = "",
) -> List[Tensor]:
    """Gradient of the cross-entropy of ``inputs`` all labelled ``label``,
    wrt the weights ``names`` at ``point`` (model assumed in eval mode).

    Raises :class:`~captum_global.errors.NonFiniteOutputError` (saying
    ``where``) when the model returns NaN or infinity."""
    weights = {n: point[n].detach().requires_grad_(True) for n in names}
    state = dict(point)
    state.update(weights)
    with twice_differentiable(model):
        logits = check_model_output(forward_on(model, state, inputs), "model")
        check_finite_output(logits.detach(), "ClassWiseSynthesis", where or f"class {label}")
        target = torch.full((inputs.shape[0],), label, dtype=torch.long, device=logits.device)
        loss = F.cross_entropy(logits, target, reduction=reduction)
    wrt = [weights[n] for n in names]
    if not loss.requires_grad:  # no matched weight reaches the output for these inputs
        return [torch.zeros_like(w) for w in wrt]
    grads = torch.autograd.grad(loss, wrt, create_graph=create_graph, allow_unused=True)
    # a weight these inputs do not reach (data-dependent control flow) has a zero gradient
    return [torch.zeros_like(w) if g is None else g for w, g in zip(wrt, grads)]


def used_weight_names(model: nn.Module, point: WeightPoint, names: Sequence[str], inputs: Tensor) -> List[str]:
    """The weights of ``names`` the model's output depends on (at ``point``, for ``inputs``).

    A weight the forward pass never reaches (an auxiliary head that only runs in training mode, as
    Inception's and GoogLeNet's, or any unused submodule) has no gradient, real or synthetic: it is left
    out of the matching, as 1-D parameters are, instead of adding a constant to every distance. A model
    whose output depends on none of them (it ignores its weights) is refused: there is nothing to match.
    """
    weights = {n: point[n].detach().requires_grad_(True) for n in names}
    state = dict(point)
    state.update(weights)
    output = check_model_output(forward_on(model, state, inputs), "model")
    used: List[str] = []
    if output.requires_grad:
        grads = torch.autograd.grad(output.sum(), list(weights.values()), allow_unused=True)
        used = [n for n, g in zip(names, grads) if g is not None]
    if not used:
        raise InvalidArgumentError(
            f"model: its output depends on none of the matched weights ({list(names)[:4]}...): class-wise "
            "synthesis matches training gradients in the weights, and this model has none (it returns a "
            "value computed without them, e.g. a constant); pass the model whose output they compute")
    return used


def make_loader(data, batch_size: int) -> Tuple[DataLoader, Optional[Tensor]]:
    """A loader over ``data`` and, for a Dataset, the global index of each
    example it yields (under torch.distributed: this rank's shard, a strided
    slice that neither pads nor drops, unlike DistributedSampler)."""
    if isinstance(data, DataLoader):
        return data, None
    if not isinstance(data, Dataset):
        raise InvalidArgumentTypeError(
            f"data must be a torch Dataset yielding (input, label) or a DataLoader, "
            f"got {type(data).__name__}"
        )
    n = len(data)
    if n == 0:
        raise InvalidArgumentError("data is empty: the dataset has no examples")
    rank, world = _rank_world()
    index = torch.arange(rank, n, world)
    return DataLoader(Subset(data, index.tolist()), batch_size=batch_size, shuffle=False), index


def first_batch(loader) -> Tensor:
    """The inputs of the first batch ``loader`` yields; a clear error when it yields none."""
    for batch in loader:
        return split_batch(batch)[0]
    raise InvalidArgumentError("data is empty: the loader yielded no batches")


def split_batch(batch, seen: int = 0) -> Tuple[Tensor, Tensor]:
    """``(inputs, labels)`` of one batch, checked: labelled, floating point,
    finite (``seen``: examples read before this batch, to name a bad one)."""
    if not isinstance(batch, (list, tuple)) or len(batch) != 2:
        what = f"a {len(batch)}-sequence" if isinstance(batch, (list, tuple)) else type(batch).__name__
        raise InvalidArgumentError(f"data must yield (input, label) pairs; its batches are {what}")
    x, y = batch
    if not isinstance(x, Tensor):
        raise InvalidArgumentTypeError(f"data must yield tensor inputs, got {type(x).__name__}")
    y = torch.as_tensor(y)
    if y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise InvalidArgumentError(
            "data must yield integer class labels (one per input); got labels of "
            f"shape {tuple(y.shape)} and dtype {y.dtype}"
        )
    if not x.is_floating_point():
        raise InvalidArgumentTypeError(
            f"data must yield floating point inputs (the synthetic inputs are optimised), got dtype {x.dtype}; "
            "convert them, e.g. images.float() / 255"
        )
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
    if bool(bad.any()):
        rows = (bad.nonzero().flatten() + seen).tolist()
        raise InvalidArgumentError(
            f"data must be finite: example(s) {rows[:8]} (in reading order) hold NaN or infinite values"
        )
    if x.is_inference():
        with torch.inference_mode(False):
            x = x.clone()
    return x, y.long()


def content_keys(x: Tensor, seed: int) -> Tensor:
    """A pseudo-random key in ``[0, 1)`` per example (float64), a hash of its values and ``seed`` alone:
    examples chosen or ordered by these keys do not depend on the order, batching or sharding of the
    DataLoader that yields them (identical examples get equal keys)."""
    rows = x.detach().cpu().contiguous().reshape(x.shape[0], -1).view(torch.uint8).numpy()
    salt = int(seed).to_bytes(8, "little")
    return torch.tensor([int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=7, key=salt).digest(), "little")
                         / 2.0**56 for row in rows], dtype=torch.float64)


def _rank_world() -> Tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _keep_smallest(pool: List[Tuple[float, Tensor]], keys: Tensor, xs: Tensor, m: int) -> List:
    """Reservoir by random keys: keep the ``m`` examples with the smallest keys."""
    pool = pool + [(float(k), x) for k, x in zip(keys, xs)]
    pool.sort(key=lambda kx: kx[0])
    return pool[:m]


def stream_class_gradients(
    model: nn.Module,
    data: Union[Dataset, DataLoader],
    classes: Optional[Sequence[int]],
    names: List[str],
    points: List[WeightPoint],
    batch_size: int = 256,
    keep_real: int = 0,
    seed: int = 0,
    progress=None,
    point_names: Tuple[str, ...] = ("model",),
    trajectory_given: bool = False,
    assign: Optional[Callable[[Tensor, int], Tensor]] = None,
    groups: int = 1,
) -> ClassGradients:
    """One pass over ``data``: class-mean real gradients at every point.

    With ``assign`` (examples of class c -> group ids in ``[0, groups)``),
    the mean gradient of every group of every class is kept too (the class
    mean is still exact: the count-weighted mean of its groups').

    The model is in eval mode (BatchNorm uses its running statistics), so the
    loss of a batch is a sum of per-example terms and the gradient of the mean
    loss over all class-c examples is exactly ``sum over batches of the
    gradient of the summed class-c loss in the batch / count_c``. Sums are
    accumulated in float64; under torch.distributed sums and counts are
    all-reduced, so any number of processes gives the one-process target.
    """
    loader, index = make_loader(data, batch_size)
    device = next(iter(points[0].values())).device
    rank, world = _rank_world()
    gen = torch.Generator().manual_seed(seed)
    # One random key per global index: the kept real examples do not depend
    # on the number of processes (a user DataLoader's examples get keys from
    # their values: neither its order, shuffled or not, nor its sharding matters).
    if index is not None:
        global_keys = draw_uniform((len(data),), gen)
    sums = counts = None
    pools: Dict[int, List] = {}
    num_outputs = input_shape = dtype = None
    seen = 0
    weight_dtype = points[0][names[0]].dtype
    for batch in loader:
        x, y = split_batch(batch, seen)
        x, y = x.to(device=device, dtype=weight_dtype), y.to(device)
        if sums is None:
            input_shape, dtype = tuple(x.shape[1:]), x.dtype
            with torch.no_grad():
                num_outputs = check_model_output(functional_call(model, points[0], (x[:1].clone(),)), "model").shape[-1]
            classes = tuple(range(num_outputs)) if classes is None else tuple(classes)
            validate_classes(classes, num_outputs)
            names = used_weight_names(model, points[0], names, x[:1])
            sums = [[[[torch.zeros(points[0][n].shape, dtype=torch.float64, device=device) for n in names]
                      for _ in range(groups)] for _ in classes] for _ in points]
            counts = torch.zeros(len(classes), groups, dtype=torch.float64, device=device)
        _check_labels(y, num_outputs)
        if keep_real:
            keys = global_keys[index[seen:seen + len(y)]] if index is not None else content_keys(x, seed)
        seen += len(y)
        for ci, c in enumerate(classes):
            sel = y == c
            if not bool(sel.any()):
                continue
            xc = x[sel]
            group = assign(xc, c) if assign is not None else torch.zeros(len(xc), dtype=torch.long)
            for j in range(groups):
                members = (group == j).to(xc.device)
                n_j = int(members.sum())
                if n_j == 0:
                    continue
                counts[ci, j] += n_j
                for k, point in enumerate(points):
                    g = class_gradient(model, point, names, xc[members], c, reduction="sum",
                                       where=f"{point_names[k]}, real examples of class {c}")
                    for acc, gi in zip(sums[k][ci][j], g):
                        acc += gi.double()
            if keep_real:
                pools[c] = _keep_smallest(pools.get(c, []), keys[sel.cpu()], x[sel].detach().cpu(), keep_real)
        if progress is not None:
            progress.update(1)
    if sums is None:
        raise InvalidArgumentError("data is empty: the loader yielded no batches")
    if world > 1:
        _all_reduce(sums, counts)
        if keep_real:
            pools = _gather_pools(pools, keep_real)
    per_class = counts.sum(1)
    empty = [c for ci, c in enumerate(classes) if per_class[ci] == 0]
    if empty:
        # a 1000-class model on a few classes' data: name a few, not all of them
        shown = str(empty) if len(empty) <= 10 else f"{str(empty[:10])[:-1]}, ...] ({len(empty)} of {len(classes)})"
        raise InvalidArgumentError(f"classes {shown} have no examples in data: nothing to match for them; "
                                   "pass classes= to name the classes the data holds")
    wdtype = [points[0][n].dtype for n in names]
    grads = [[[(sum(g[i] for g in per_group) / per_class[ci]).to(wdtype[i]) for i in range(len(names))]
              for ci, per_group in enumerate(per_point)] for per_point in sums]
    cluster_grads = None
    if assign is not None:  # an empty group (rare: k-means ties) imitates its whole class
        cluster_grads = [[[[(g / counts[ci, j]).to(wdtype[i]) if counts[ci, j] > 0 else grads[k][ci][i]
                            for i, g in enumerate(per_group[j])] for j in range(groups)]
                          for ci, per_group in enumerate(per_point)] for k, per_point in enumerate(sums)]
    real = {c: torch.stack([x for _, x in pool]) for c, pool in pools.items()}
    return ClassGradients(classes, list(names), points, grads, per_class.cpu().long(), num_outputs,
                          input_shape, dtype, real, tuple(point_names), trajectory_given,
                          cluster_grads, counts.cpu().long() if assign is not None else None)


def _check_labels(y: Tensor, num_outputs: int) -> None:
    bad = (y < 0) | (y >= num_outputs)
    if bool(bad.any()):
        raise InvalidArgumentError(f"data holds label {int(y[bad][0])}, outside the model's {num_outputs} outputs")


def validate_classes(classes: Sequence[int], num_outputs: int) -> None:
    if len(classes) == 0:
        raise InvalidArgumentError("classes must name at least one class")
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < num_outputs:
            raise InvalidArgumentError(
                f"classes must hold integer class ids in [0, {num_outputs}) (the model's "
                f"outputs), got {c!r}"
            )
    if len(set(classes)) != len(classes):
        raise InvalidArgumentError(f"classes must not repeat a class id, got {list(classes)}")


def _leaves(nested) -> List[Tensor]:
    if isinstance(nested, Tensor):
        return [nested]
    return [t for item in nested for t in _leaves(item)]


def _all_reduce(sums, counts: Tensor) -> None:
    """Sum every gradient sum and the counts over processes in one call."""
    tensors = [counts] + _leaves(sums)
    flat = torch.cat([t.flatten() for t in tensors])
    torch.distributed.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset: offset + t.numel()].view_as(t))
        offset += t.numel()


def stream_class_features(model: nn.Module, data, classes: Sequence[int], features: Callable[[Tensor], Tensor],
                          batch_size: int, dtype: torch.dtype, device,
                          num_outputs: Optional[int] = None) -> Dict[int, Tensor]:
    """``{class: [m, D]}`` features of every example of each class, in the
    order of the whole dataset (gathered across processes by global index).
    With ``num_outputs``, a label outside ``[0, num_outputs)`` is refused."""
    loader, index = make_loader(data, batch_size)
    found: Dict[int, List[Tensor]] = {c: [] for c in classes}
    where: Dict[int, List[Tensor]] = {c: [] for c in classes}
    seen = 0
    for batch in loader:
        x, y = split_batch(batch, seen)
        x, y = x.to(device=device, dtype=dtype), y.to(device)
        if num_outputs is not None:
            _check_labels(y, num_outputs)
        f = features(x).cpu()
        # a DataLoader's examples are put in the order of their content keys: the same whatever order it yields
        position = index[seen:seen + len(y)] if index is not None else content_keys(x, 0)
        for c in classes:
            sel = (y == c).cpu()
            found[c].append(f[sel])
            where[c].append(position[sel])
        seen += len(y)
    out = {c: (torch.cat(where[c]), torch.cat(found[c])) for c in classes}
    rank, world = _rank_world()
    if world > 1:
        gathered: List[Optional[Dict]] = [None] * world
        torch.distributed.all_gather_object(gathered, out)
        out = {c: (torch.cat([part[c][0] for part in gathered]),
                   torch.cat([part[c][1] for part in gathered])) for c in classes}
    return {c: f[torch.argsort(pos)] for c, (pos, f) in out.items()}


def _gather_pools(pools: Dict[int, List], m: int) -> Dict[int, List]:
    gathered: List[Optional[Dict[int, List]]] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, pools)
    merged: Dict[int, List] = {}
    for part in gathered:
        for c, pool in part.items():
            merged[c] = merged.get(c, []) + pool
    return {c: sorted(pool, key=lambda kx: kx[0])[:m] for c, pool in merged.items()}
