"""Turn "a method" (a name, a class, an object, a line-up recipe) into one explain call (private).

Both adapters need the same thing: given a model and a batch, run the
attribution the user chose and get back one heat map per example. Users
name the method the way their tool does: quantus passes a model and
expects the method to follow it (its randomisation metrics hand over a
re-initialised *copy* of the model), pytorch-grad-cam builds one object
per model. This module owns those rules so that both adapters share them.
"""
import copy
import inspect
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

import captum.attr
import numpy as np
import torch
from captum.attr import Attribution, GradientAttribution, NoiseTunnel
from torch import Tensor, nn

import captum_global.attr
from captum_global._checks import check_choice, check_model_output
from captum_global._maps import resize_maps
from captum_global._model_state import preserved_model_state
from captum_global._seeding import check_seed, cuda_devices, seeded_global_rng
from captum_global._targets import parse_target
from captum_global.attr import InputAgnosticSaliency
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError
from captum_global.lineup import MethodSpec, last_spatial_layer

__all__ = ["MethodLike", "BoundMethod", "bind_method", "reduce_channels", "as_target_list", "num_classes_of",
           "CHANNEL_REDUCTIONS"]

MethodLike = Union[str, type, Attribution, MethodSpec]
CHANNEL_REDUCTIONS = ("mean", "sum", "none")


def _attribution_classes() -> Dict[str, type]:
    """Every public Attribution class by name: ours first, then Captum's."""
    found: Dict[str, type] = {}
    for module in (captum_global.attr, captum.attr):
        for name in getattr(module, "__all__", dir(module)):
            value = getattr(module, name, None)
            if inspect.isclass(value) and issubclass(value, Attribution) and name not in found:
                found[name] = value
    return found


def _model_of(attribution: Attribution) -> Any:
    return attribution.forward_func


def _same_model(forward_func: Any, model: nn.Module) -> bool:
    return forward_func is model or (inspect.ismethod(forward_func) and forward_func.__self__ is model)


def _rebound(attribution: Attribution, old: nn.Module, new: nn.Module) -> Attribution:
    """A shallow copy of ``attribution`` that explains ``new`` instead of ``old``.

    Every reference to ``old`` or one of its submodules (the model, a
    Captum ``layer``, a list of layers, a nested attribution such as
    NoiseTunnel's) is replaced by the module of the same name in ``new``;
    names and settings are kept as they are.
    """
    name_of = {id(m): n for n, m in old.named_modules()}
    new_modules = dict(new.named_modules())

    def convert(value: Any) -> Any:
        if value is old:
            return new
        if isinstance(value, nn.Module) and id(value) in name_of:
            name = name_of[id(value)]
            if name not in new_modules:
                raise InvalidArgumentError(
                    f"method: its layer {name!r} has no counterpart in the model being explained; pass the "
                    "method by name or class so that it is built on that model"
                )
            return new_modules[name]
        if inspect.ismethod(value) and value.__self__ is old:
            return getattr(new, value.__name__)
        if isinstance(value, Attribution):
            return _rebound(value, old, new)
        if isinstance(value, (list, tuple)) and not isinstance(value, Tensor):
            return type(value)(convert(v) for v in value)
        return value

    clone = copy.copy(attribution)
    for key, value in vars(attribution).items():
        setattr(clone, key, convert(value))
    return clone


def _instantiate(cls: type, model: nn.Module, layer: Any, init_kwargs: Dict[str, Any]) -> Any:
    params = inspect.signature(cls.__init__).parameters
    kwargs = dict(init_kwargs)
    if "layer" in params and "layer" not in kwargs:
        # Captum's layer methods (LayerGradCam, GuidedGradCam, ...): the
        # user's layer, or the deepest spatial block output as in the line-up
        if layer is None:
            return _DefaultLayer(cls, model, kwargs)
        kwargs["layer"] = _module(model, layer)
    elif "layers" in params and "layers" not in kwargs and layer is not None:
        kwargs["layers"] = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    elif layer is not None and "layer" not in params and "layers" not in params:
        raise InvalidArgumentError(f"layer: {cls.__name__} reads no layer; leave layer=None for it")
    return cls(model, **kwargs)


def _module(model: nn.Module, layer: Any) -> nn.Module:
    if isinstance(layer, (list, tuple)):
        if len(layer) != 1:
            raise InvalidArgumentError(f"layer: this method reads one layer, got {len(layer)}")
        layer = layer[0]
    if isinstance(layer, str):
        named = dict(model.named_modules())
        if layer not in named:
            raise InvalidArgumentError(f"layer {layer!r} is not a submodule name of the model")
        return named[layer]
    if not isinstance(layer, nn.Module):
        raise InvalidArgumentTypeError(f"layer must be an nn.Module or a dotted module name, got {type(layer).__name__}")
    return layer


class _DefaultLayer:
    """A Captum layer method whose default layer needs an example input to be found."""

    def __init__(self, cls: type, model: nn.Module, kwargs: Dict[str, Any]) -> None:
        self.cls, self.model, self.kwargs = cls, model, kwargs

    def attribute(self, inputs: Tensor, **kwargs: Any) -> Tensor:
        layer = last_spatial_layer(self.model, inputs)
        return self.cls(self.model, **{**self.kwargs, "layer": layer}).attribute(inputs, **kwargs)


class BoundMethod:
    """A method bound to one model: ``bound(inputs, target, **attribute_kwargs) -> Tensor``.

    Attributes:
        input_agnostic: True when the method never reads the input values
            (InputAgnosticSaliency, also inside a NoiseTunnel).
        takes_seed: True when its ``attribute`` has a ``seed`` argument.
        takes_apply_softmax: True when its ``attribute`` has an
            ``apply_softmax`` argument (RISE): a softmax over the model's
            outputs on top of the explained score.
    """

    def __init__(self, run: Callable[..., Tensor], input_agnostic: bool, takes_seed: bool, kwargs_allowed: bool,
                 takes_apply_softmax: bool = False):
        self._run = run
        self.input_agnostic = input_agnostic
        self.takes_seed = takes_seed
        self.kwargs_allowed = kwargs_allowed
        self.takes_apply_softmax = takes_apply_softmax

    def __call__(self, inputs: Tensor, target: Any, **attribute_kwargs: Any) -> Tensor:
        if attribute_kwargs and not self.kwargs_allowed:
            raise InvalidArgumentError(
                f"attribute keywords {sorted(attribute_kwargs)} cannot be passed to a line-up recipe "
                "(its settings are fixed); pass the method's class or name instead"
            )
        return self._run(inputs, target, **attribute_kwargs)


def _is_input_agnostic(attribution: Any) -> bool:
    if isinstance(attribution, NoiseTunnel):
        return _is_input_agnostic(attribution.attribution_method)
    return isinstance(attribution, InputAgnosticSaliency)


def _takes_keyword(attribution: Any, name: str) -> bool:
    """Whether the method's ``attribute`` (a NoiseTunnel's inner method's) has the keyword ``name``."""
    target = attribution.attribution_method if isinstance(attribution, NoiseTunnel) else attribution
    if isinstance(target, _DefaultLayer):
        return False
    return name in inspect.signature(target.attribute).parameters


def _grad_ready(inputs: Tensor) -> Tensor:
    """``inputs`` as a leaf that requires grad, as quantus's and grad-cam's own explainers pass them.

    Captum's gradient methods (Saliency, InputXGradient, DeepLift...) otherwise warn at every call that
    the input "did not already require gradients", about a tensor the adapter made and the caller never
    sees. A detached alias: the caller's tensor and its flags are untouched.
    """
    if isinstance(inputs, Tensor) and inputs.is_floating_point() and not inputs.requires_grad:
        return inputs.detach().requires_grad_()
    return inputs


def bind_method(
    method: MethodLike,
    model: nn.Module,
    layer: Any = None,
    init_kwargs: Optional[Dict[str, Any]] = None,
) -> BoundMethod:
    """Bind ``method`` to ``model``.

    ``method`` is an Attribution class name (``captum_global.attr`` first,
    then ``captum.attr``), an Attribution class, an Attribution object (used
    as is when it explains ``model``, else a copy rebound to ``model`` by
    module names: quantus's randomisation metrics pass a re-initialised
    copy of the model), or a :class:`~captum_global.lineup.MethodSpec`.
    """
    init_kwargs = dict(init_kwargs or {})
    if isinstance(method, MethodSpec):
        if init_kwargs or layer is not None:
            raise InvalidArgumentError("layer and init_kwargs do not apply to a line-up recipe (its settings are fixed)")
        return BoundMethod(lambda x, t: method.build(model, x)(x, t), False, False, kwargs_allowed=False)
    if isinstance(method, str):
        classes = _attribution_classes()
        if method not in classes:
            raise InvalidArgumentError(
                f"method {method!r} is not an attribution class of captum_global.attr or captum.attr; "
                f"for example {sorted(classes)[:8]}"
            )
        method = classes[method]
    if inspect.isclass(method) and issubclass(method, Attribution):
        attribution: Any = _instantiate(method, model, layer, init_kwargs)
    elif isinstance(method, Attribution):
        if init_kwargs or layer is not None:
            raise InvalidArgumentError("layer and init_kwargs apply when method is a name or a class, not an object")
        attribution = method
        old = _model_of(method)
        if not _same_model(old, model):
            if inspect.ismethod(old):
                old = old.__self__
            if not isinstance(old, nn.Module):
                raise InvalidArgumentError(
                    "method: this attribution object explains a function, not the model passed in; pass the "
                    "method by name or class so that it is built on that model"
                )
            attribution = _rebound(method, old, model)
    else:
        raise InvalidArgumentTypeError(
            "method must be an attribution class name, an Attribution class or object, or a line-up MethodSpec; "
            f"got {type(method).__name__}"
        )
    # gradient methods get a grad-ready input (no Captum warning); perturbation methods the input as it is
    prepare = _grad_ready if isinstance(attribution, GradientAttribution) else (lambda x: x)
    return BoundMethod(
        lambda x, t, **kw: attribution.attribute(prepare(x), target=t, **kw),
        _is_input_agnostic(attribution),
        _takes_keyword(attribution, "seed"),
        kwargs_allowed=True,
        takes_apply_softmax=_takes_keyword(attribution, "apply_softmax"),
    )


def reduce_channels(attributions: Any, input_size: Sequence[int], channel_reduce: str) -> Tensor:
    """One ``[N, 1, H, W]`` map per example (``[N, C, H, W]`` with ``"none"``), at the input's size.

    ``"mean"`` keeps a channel-broadcast map (SISE, InputAgnosticSaliency)
    as it is instead of counting it once per channel; ``"sum"`` is quantus's
    own reduction of Captum attributions. Layer-resolution maps
    (``[N, 1, h, w]``, e.g. LayerGradCam) are upsampled bilinearly.
    """
    check_choice(channel_reduce, "channel_reduce", CHANNEL_REDUCTIONS)
    if isinstance(attributions, tuple):
        if len(attributions) != 1:
            raise InvalidArgumentError(f"the method returned {len(attributions)} attributions; expected one")
        attributions = attributions[0]
    if not isinstance(attributions, Tensor) or attributions.dim() != 4:
        shape = tuple(attributions.shape) if isinstance(attributions, Tensor) else type(attributions).__name__
        raise InvalidArgumentError(f"the method must return [N, C, H, W] attributions, got {shape}")
    maps = attributions.detach()
    if channel_reduce == "mean":
        maps = maps.mean(dim=1, keepdim=True)
    elif channel_reduce == "sum":
        maps = maps.sum(dim=1, keepdim=True)
    return resize_maps(maps.float(), tuple(input_size))


def as_target_list(targets: Any, n: int, num_classes: Optional[int] = None) -> List[int]:
    """Integer class targets (NumPy array, list, tensor or one int) as one int per example.

    With ``num_classes`` every target is checked against the model's classes
    (negative ones count from the end, as in Captum) by the package's one
    target rule, :func:`captum_global._targets.parse_target`.
    """
    if isinstance(targets, Tensor):
        values = targets
    else:
        array = np.asarray(targets) if targets is not None else None
        if array is None or array.dtype.kind not in "iubfc":
            kind = "None" if array is None else f"{type(targets).__name__} of dtype {array.dtype}"
            raise InvalidArgumentTypeError(f"targets must be integer class indices (an int, a list, a NumPy "
                                           f"array or a tensor), got {kind}")
        values = torch.as_tensor(array)
    values = values.reshape(-1)
    if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise InvalidArgumentTypeError(f"targets must be integer class indices, got dtype {values.dtype}")
    if values.numel() == 1:
        values = values.expand(n)
    if values.numel() != n:
        raise InvalidArgumentError(f"targets has {values.numel()} entries for {n} inputs: give one per input")
    if num_classes is not None:
        return parse_target(values.detach().cpu().long().contiguous(), n, "targets").checked((n, num_classes)).classes()
    return [int(v) for v in values]


@contextmanager
def isolated_run(model: nn.Module, method: "BoundMethod", attribute_kwargs: Dict[str, Any], inputs: Tensor) -> Iterator[None]:
    """The adapters' rule for running a method, as the line-up and ``explain_dataset`` do: the model in
    eval mode (no BatchNorm update, no dropout) with its flags restored, and the global RNG seeded from
    the method's ``seed`` (0 for methods without one, such as NoiseTunnel) and restored afterwards, so
    an explanation is a function of model, input and target."""
    seed = check_seed(attribute_kwargs.get("seed", 0)) if method.takes_seed else 0
    with preserved_model_state(model), seeded_global_rng(seed, cuda_devices(model, inputs)):
        yield


def num_classes_of(model: nn.Module, inputs: Tensor) -> int:
    """The model's number of classes, from one no-grad eval-mode pass on ``inputs[:1]`` (state restored)."""
    with preserved_model_state(model), torch.no_grad():
        try:
            output = model(inputs[:1].clone())  # a copy: a model working in place must not change the caller's input
        except Exception as error:  # e.g. channel-last arrays: the message names the input, not a layer
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise InvalidArgumentError(f"inputs: the model does not run on a batch of shape {tuple(inputs.shape)} "
                                       f"(channel-first [N, C, H, W] expected): {reason}") from None
        output = check_model_output(output, "model")
    if output.dim() != 2:
        raise InvalidArgumentError(f"model must return class scores [N, classes], got shape {tuple(output.shape)}")
    return int(output.shape[1])
