"""Attribution methods by name for :func:`~captum_global.explain.explain_dataset` (private).

Ours (SISE, InputAgnosticSaliency) and every per-input class of
``captum.attr`` whose constructor takes only the model (and a layer):
layer methods read the layer Grad-CAM reads (the last block output,
:func:`captum_global.lineup.last_spatial_layer`) unless one is named, and
their maps are upsampled to the input's size.
"""
import inspect
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from captum_global._model_state import find_module
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError

__all__ = ["method_names", "resolve_method", "gradient_needs"]

Explain = Callable[[Tensor, Tensor], Tensor]


def _normalised(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _known_methods() -> Dict[str, type]:
    """Attribution classes by normalised name: ours, then every per-input class of ``captum.attr``."""
    import captum.attr as captum_attr

    from captum_global.attr import RISE, SISE, InputAgnosticSaliency

    abstract = {"Attribution", "GradientAttribution", "PerturbationAttribution", "LayerAttribution",
                "NeuronAttribution"}
    found = {}
    for name in captum_attr.__all__:
        cls = getattr(captum_attr, name)
        if (inspect.isclass(cls) and issubclass(cls, captum_attr.Attribution) and name not in abstract
                and not issubclass(cls, captum_attr.NeuronAttribution) and _constructor_needs(cls) is not None):
            found[_normalised(name)] = cls
    for cls in (SISE, RISE, InputAgnosticSaliency):
        found[_normalised(cls.__name__)] = cls
    return found


def method_names() -> List[str]:
    """The class names ``explain_dataset`` accepts as ``method`` (any spelling of case, ``-`` and ``_``)."""
    return sorted(cls.__name__ for cls in _known_methods().values())


def _constructor_needs(cls: type) -> Optional[List[str]]:
    """The required constructor arguments if they are only the model and a layer, else None."""
    required = [p.name for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return required if set(required) <= {"forward_func", "model", "layer"} and required else None


def _check_keywords(instance: Any, label: str, attribute_kwargs: Dict[str, Any]) -> None:
    """Refuse keywords ``instance.attribute`` does not take, and those ``explain_dataset`` sets itself."""
    reserved = sorted(set(attribute_kwargs) & {"inputs", "target"})
    if reserved:
        raise InvalidArgumentError(f"attribute_kwargs must not set {reserved}: explain_dataset passes the inputs "
                                   "and the targets (see target=, --target on the command line)")
    try:
        parameters = list(inspect.signature(instance.attribute).parameters.values())
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return
    accepted = [p.name for p in parameters[1:] if p.name != "target" and p.kind is not p.VAR_POSITIONAL]
    unknown = sorted(k for k in attribute_kwargs if k not in accepted)
    if unknown:
        raise InvalidArgumentTypeError(
            f"attribute_kwargs {unknown} (--method-args on the command line): {label}.attribute does not take "
            f"{'it' if len(unknown) == 1 else 'them'}; it takes {accepted}"
        )


def _target_and_seed(instance: Any, attribute_kwargs: Dict[str, Any]) -> Tuple[bool, bool]:
    """Whether ``instance.attribute`` takes a target, and whether it draws a fresh seed unless given one."""
    try:
        parameters = inspect.signature(instance.attribute).parameters
    except (TypeError, ValueError):
        return True, False
    takes_target = "target" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    seed = parameters.get("seed")
    return takes_target, seed is not None and seed.default is None and "seed" not in attribute_kwargs


def gradient_needs(model: nn.Module, method: Any, layer: Optional[str], example: Tensor) -> Tuple[bool, Optional[str]]:
    """Whether the method named ``method`` differentiates the model's scores, and with respect to what:
    ``(True, None)`` its input, ``(True, name)`` the output of the layer it reads (``layer`` or the
    default one), ``(False, None)`` neither (perturbation methods, LayerActivation). A name, layer or
    model that :func:`resolve_method` refuses gives ``(False, None)``: its refusal says why."""
    from captum.attr import GradientAttribution, LayerAttribution

    from captum_global.attr import SISE
    from captum_global.lineup import last_spatial_layer

    cls = _known_methods().get(_normalised(method)) if isinstance(method, str) else None
    if cls is None or not (issubclass(cls, GradientAttribution) or cls is SISE):
        return False, None
    if not (issubclass(cls, LayerAttribution) or cls is SISE):
        return True, None  # GuidedGradCam too: its guided backpropagation reaches the input
    if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        return False, None
    try:  # SISE reads several block outputs; the deepest is the default layer
        module = last_spatial_layer(model, example) if layer is None or cls is SISE else find_module(model, layer)
    except (ValueError, TypeError):
        return False, None
    return True, next(n for n, m in model.named_modules() if m is module)


def resolve_method(model: nn.Module, method: Any, layer: Any, example: Tensor,
                   attribute_kwargs: Dict[str, Any]) -> Tuple[Explain, Dict[str, Any]]:
    """``explain(inputs, targets)`` for ``method`` and the settings that describe it."""
    from captum.attr import Attribution, LayerAttribution

    from captum_global.lineup import last_spatial_layer

    if isinstance(method, str):
        known = _known_methods()
        cls = known.get(_normalised(method))
        if cls is None:
            raise InvalidArgumentError(f"method={method!r} is not a known attribution; expected one of "
                                       f"{method_names()} (case, '-' and '_' do not matter)")
        needs = _constructor_needs(cls)
        layer_name = None
        if ("layer" in needs or cls.__name__ == "SISE") and any(
                isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
            raise InvalidArgumentError(
                f"method {cls.__name__} reads a layer through hooks, which TorchScript models do not support; "
                "use a method that needs only the output (e.g. IntegratedGradients, Saliency, Occlusion) or "
                "load the model as a state dict with its architecture"
            )
        if "layer" in needs:
            if layer is None:
                layer_module = last_spatial_layer(model, example)
            else:
                try:
                    layer_module = find_module(model, layer)
                except (ValueError, TypeError) as error:
                    raise InvalidArgumentError(str(error)) from None
            layer_name = next(n for n, m in model.named_modules() if m is layer_module)
            instance = cls(model, layer_module)
        else:
            if layer is not None:
                raise InvalidArgumentError(f"layer={layer!r} given but method {cls.__name__} reads no layer")
            instance = cls(model)
        missing = [p.name for p in list(inspect.signature(instance.attribute).parameters.values())[1:]
                   if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                   and p.name not in ("target",) and p.name not in attribute_kwargs]
        if missing:
            raise InvalidArgumentError(
                f"method {cls.__name__} needs {missing}: pass them in attribute_kwargs "
                f"(on the command line: --method-args '{{\"{missing[0]}\": ...}}')"
            )
        label, source = cls.__name__, f"{cls.__module__}.{cls.__qualname__}"
    elif isinstance(method, Attribution):
        instance, layer_name = method, None
        label = method.get_name() if hasattr(method, "get_name") else type(method).__name__
        source = f"{type(method).__module__}.{type(method).__qualname__}"
    elif callable(method):
        if attribute_kwargs:
            raise InvalidArgumentError("attribute_kwargs only apply to an Attribution; a callable "
                                       "method(inputs, target) takes no keywords")
        name = getattr(method, "__qualname__", type(method).__name__)
        return method, {"method": name, "method_source": f"{getattr(method, '__module__', '')}.{name}",
                        "layer": None}
    else:
        raise InvalidArgumentTypeError(f"method must be a method name, a Captum Attribution or a callable "
                                       f"(inputs, target) -> attributions, got {type(method).__name__}")

    _check_keywords(instance, label, attribute_kwargs)
    takes_target, draws_own_seed = _target_and_seed(instance, attribute_kwargs)

    def explain(inputs: Tensor, targets: Tensor) -> Tensor:
        keywords = dict(attribute_kwargs)
        if takes_target:  # not LayerActivation: its maps are the layer's, for no class
            keywords["target"] = targets
        if draws_own_seed:
            # a seed=None default (InputAgnosticSaliency) draws a fresh seed per call: take it from the
            # global RNG, which explain_dataset seeds per shard, so reruns and resumed runs give the same maps
            keywords["seed"] = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
        try:
            result = instance.attribute(inputs, **keywords)
        except (TypeError, ValueError, AssertionError) as error:
            if not attribute_kwargs or isinstance(error, InvalidArgumentError):
                raise
            # Captum checks its settings with asserts and comparisons: a wrong value in
            # attribute_kwargs ({"n_steps": 0}, {"n_steps": "x"}) surfaces as one of these
            reason = (str(error).strip().splitlines() or [""])[0]
            kind = InvalidArgumentTypeError if isinstance(error, TypeError) else InvalidArgumentError
            raise kind(
                f"attribute_kwargs {attribute_kwargs} (--method-args on the command line): {label}.attribute "
                f"failed with them: {type(error).__name__}: {reason}"
            ) from error
        if isinstance(instance, LayerAttribution) and isinstance(result, Tensor) and result.dim() == 4 \
                and tuple(result.shape[-2:]) != tuple(inputs.shape[-2:]):
            # layer maps are stored at the input's resolution, as Grad-CAM is shown
            result = LayerAttribution.interpolate(result, tuple(inputs.shape[-2:]), interpolate_mode="bilinear")
        return result

    return explain, {"method": label, "method_source": source, "layer": layer_name}


