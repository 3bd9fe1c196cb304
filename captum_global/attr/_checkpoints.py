"""Training checkpoints as weight points (private helper of class-wise synthesis).

A trajectory is a sequence of checkpoints in training order. Users hold
them in different forms; :func:`resolve_checkpoints` accepts

- one state dict (taken as a one-point trajectory),
- a path to a file (``.safetensors``, or anything ``torch.load`` reads with
  ``weights_only=True``) holding one state dict or a list of them,
- an ``nn.Module`` (its current weights),
- a list, tuple or iterator of any of the above,
- a callable taking no argument that returns or yields any of the above
  (e.g. a generator that loads one checkpoint at a time),

and checks every checkpoint against the model: the same names (an extra
``module.`` or ``_orig_mod.`` prefix, as left by DataParallel or
``torch.compile``, is recognised), the same shapes, finite values. Files
are never unpickled beyond plain tensors and containers.
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Dict, List, Tuple

import torch
from torch import Tensor, nn

from captum_global.attr.classwise_types import WeightPoint
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError

__all__ = ["own_weights", "resolve_checkpoints"]

_PREFIXES = ("module.", "_orig_mod.")


def own_weights(model: nn.Module) -> WeightPoint:
    """The model's parameters and buffers (non-persistent ones too), detached."""
    point = {n: t.detach() for n, t in model.named_parameters()}
    point.update({n: t.detach() for n, t in model.named_buffers()})
    return point


def _snapshot(point: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Detached copies of ``point``'s tensors."""
    return {n: t.detach().clone() for n, t in point.items()}


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def _load_file(path: str, argument: str) -> Any:
    if not os.path.isfile(path):
        raise InvalidArgumentError(f"{argument}: no such file {path!r}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the unpickler refuses anything but tensors and containers
        raise InvalidArgumentError(
            f"{argument}: {path!r} could not be loaded safely (torch.load(weights_only=True)): {err}. "
            "Save plain state dicts (model.state_dict()) or use safetensors"
        ) from None


def _flatten(item: Any, argument: str, out: List[Tuple[str, Dict[str, Tensor]]]) -> None:
    """Append ``(label, state dict)`` pairs found in ``item``."""
    if isinstance(item, nn.Module):  # its current weights, copied: the module may be trained further
        out.append((argument, _snapshot(item.state_dict())))
    elif _is_state_dict(item):
        out.append((argument, dict(item)))
    elif isinstance(item, Mapping):
        if "state_dict" in item or "model" in item:
            key = "state_dict" if "state_dict" in item else "model"
            raise InvalidArgumentError(
                f"{argument} is a training checkpoint with a {key!r} entry, not a state dict; "
                f"pass checkpoint[{key!r}]"
            )
        raise InvalidArgumentError(
            f"{argument} must be a state dict (names -> tensors); got a dict with "
            f"{'no entries' if not item else 'non-tensor values'}"
        )
    elif isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        loaded = _load_file(path, argument)
        if isinstance(loaded, (list, tuple)):
            for j, sd in enumerate(loaded):
                _flatten(sd, f"{argument}[{j}] ({os.path.basename(path)})", out)
        else:
            _flatten(loaded, f"{argument} ({os.path.basename(path)})", out)
    elif isinstance(item, (Tensor, bytes)) or not isinstance(item, Iterable):
        raise InvalidArgumentTypeError(
            f"{argument} must be a state dict, a file path, a model, a list of these or a callable "
            f"yielding them; got {type(item).__name__}"
        )
    else:
        for j, sub in enumerate(item):
            _flatten(sub, f"{argument}[{j}]", out)


def _align(state: Dict[str, Tensor], own: WeightPoint, persistent: List[str], label: str) -> Dict[str, Tensor]:
    """``state`` with the model's names, or a clear error."""
    keys = set(state)
    want = set(persistent)
    if keys != want:
        for prefix in _PREFIXES:  # saved from a wrapped model, or the model is wrapped
            stripped = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
            if set(stripped) == want:
                return stripped
            added = {prefix + k: v for k, v in state.items()}
            if set(added) == want:
                return added
        missing, extra = sorted(want - keys), sorted(keys - want)
        parts = []
        if missing:
            parts.append(f"lacks {len(missing)} entr{'y' if len(missing) == 1 else 'ies'} of the model's "
                         f"state dict, e.g. {missing[:3]}")
        if extra:
            parts.append(f"has {len(extra)} entr{'y' if len(extra) == 1 else 'ies'} the model does not, "
                         f"e.g. {extra[:3]}")
        raise InvalidArgumentError(f"{label} does not match the model: it {' and '.join(parts)}")
    return state


def resolve_checkpoints(model: nn.Module, checkpoints: Any,
                        argument: str = "checkpoints") -> Tuple[List[WeightPoint], Tuple[str, ...], bool]:
    """``(points, labels, given)``: the weight points to match along.

    ``checkpoints=None`` gives the model's own weights as the only point
    (``given`` False). Otherwise every checkpoint becomes a full weight point
    (parameters and buffers, on the model's device and dtypes; buffers the
    state dict does not save come from the model).
    """
    own = own_weights(model)
    if checkpoints is None:
        # a snapshot: the result keeps its weight points, which must not follow later changes of the model
        return [_snapshot(own)], ("model",), False
    if callable(checkpoints) and not isinstance(checkpoints, nn.Module):
        try:
            inspect.signature(checkpoints).bind()
        except TypeError as err:
            raise InvalidArgumentTypeError(
                f"{argument} is a callable; it must take no argument and return or yield checkpoints ({err})"
            ) from None
        except ValueError:  # no signature to inspect (some builtins): just call it
            pass
        produced = checkpoints()  # an error raised inside the caller's function is theirs: not relabelled
        found: List[Tuple[str, Dict[str, Tensor]]] = []
        _flatten(produced, argument + "()", found)
    else:
        found = []
        _flatten(checkpoints, argument, found)
    if not found:
        # a generator (or any iterator) is read once: passed again, it is empty
        raise InvalidArgumentError(
            f"{argument} holds no checkpoint"
            + (" (a generator or iterator is read only once: was it used by an earlier run? Pass a list, "
               "or a callable that returns a fresh generator)" if isinstance(checkpoints, Iterator) else ""))
    persistent = list(model.state_dict().keys())
    live = {t.untyped_storage().data_ptr() for t in own.values() if t.numel()}
    points, labels = [], []
    for label, state in found:
        state = _align(state, own, persistent, label)
        point = {}
        for name, mine in own.items():
            if name not in state:  # a non-persistent buffer: the model's own (copied, as above)
                point[name] = mine.clone()
                continue
            value = state[name]
            if tuple(value.shape) != tuple(mine.shape):
                raise InvalidArgumentError(
                    f"{label}[{name!r}] has shape {tuple(value.shape)}, the model's is {tuple(mine.shape)}"
                )
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise InvalidArgumentError(f"{label}[{name!r}] holds NaN or infinite values")
            value = value.detach().to(device=mine.device, dtype=mine.dtype)
            if value.untyped_storage().data_ptr() in live:  # model.state_dict() itself: copy, as above
                value = value.clone()
            point[name] = value
        points.append(point)
        labels.append(label)
    return points, tuple(labels), True
